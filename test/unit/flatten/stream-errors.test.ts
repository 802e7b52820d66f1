import { Readable } from 'node:stream'
import { afterEach, describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { applyLayer, createTree } from '../../../src/pipeline/flatten/index.js'
import { buildTar, chunkedStream, tarStream } from '../../helpers/tar.js'
import { newStaging, removeStagings } from './harness.js'

afterEach(removeStagings)

const L = { index: 1, label: 'layer 2 (sha256:abcd…)' }

async function rejection(p: Promise<unknown>): Promise<BaleError> {
  try {
    await p
  } catch (e) {
    if (e instanceof BaleError) return e
    throw e
  }
  throw new Error('resolved')
}

describe('applyLayer and its input stream', () => {
  it('waits for the end of the input: an error the source reports after the last byte rejects it', async () => {
    const tree = await createTree(await newStaging())
    const digest = new BaleError('E_DIGEST', 'layer 2: expected diff_id sha256:aa got sha256:bb')
    const e = await rejection(applyLayer(tree, tarStream([{ name: 'a', content: 'x' }], { error: digest }), L))
    expect(e).toBe(digest)
  })

  it('wraps a plain source error (e.g. a decompressor) as E_INPUT prefixed with the layer', async () => {
    const tree = await createTree(await newStaging())
    const tar = buildTar([{ name: 'a', content: 'x'.repeat(5000) }])
    const e = await rejection(applyLayer(tree, chunkedStream(tar.subarray(0, 2000), { error: new Error('invalid zstd frame') }), L))
    expect(e.code).toBe('E_INPUT')
    expect(e.message).toBe('layer 2 (sha256:abcd…): invalid zstd frame')
  })

  it('destroys the source when it rejects an entry, without reading the rest', async () => {
    const tree = await createTree(await newStaging())
    let pulled = 0
    const tar = buildTar([{ name: '../escape', content: 'x' }, ...Array.from({ length: 50 }, (_, i) => ({ name: `f${i}`, content: 'y'.repeat(4096) }))])
    async function* gen(): AsyncGenerator<Buffer> {
      for (let i = 0; i < tar.length; i += 512) {
        pulled += 512
        yield tar.subarray(i, i + 512)
      }
    }
    const src = Readable.from(gen(), { objectMode: false, highWaterMark: 512 })
    const e = await rejection(applyLayer(tree, src, L))
    expect(e.code).toBe('E_UNSAFE_PATH')
    expect(e.message).toBe(`layer 2 (sha256:abcd…): "../escape": path has a '..' component`)
    expect(src.destroyed).toBe(true)
    expect(pulled).toBeLessThan(tar.length / 4)
  })

  it('leaves the tree unchanged when a layer fails while being read', async () => {
    const tree = await createTree(await newStaging())
    await applyLayer(tree, tarStream([{ name: 'keep', content: 'k' }]), { index: 0, label: 'layer 1' })
    const before = new Map(tree.entries)
    await rejection(applyLayer(tree, tarStream([{ name: '.wh.keep' }, { name: 'new', content: 'n' }, { name: 'bad\n' }]), L))
    expect(tree.entries).toEqual(before)
  })
})
