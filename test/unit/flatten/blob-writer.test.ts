import { randomBytes } from 'node:crypto'
import { readdir, readFile, symlink, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { applyLayer, createTree } from '../../../src/pipeline/flatten/index.js'
import { blobPath } from '../../../src/pipeline/tree.js'
import { tarStream, type TarEntry } from '../../helpers/tar.js'
import { flatten, newStaging, removeStagings } from './harness.js'

afterEach(removeStagings)

describe('blob writing', () => {
  it('writes small and large (chunked) files byte for byte', async () => {
    const files = Array.from({ length: 60 }, (_, i) => ({ name: `small/${i}`, content: randomBytes(i * 97) }))
    const big = randomBytes(5 * 1024 * 1024 + 3)
    const mid = randomBytes(256 * 1024)
    const tree = await flatten([[...files, { name: 'big', content: big }, { name: 'mid', content: mid }]], { chunkSize: 4096 })
    for (const f of files) expect((await readFile(blobPath(tree, tree.entries.get(f.name) ?? fail()))).equals(f.content)).toBe(true)
    expect((await readFile(blobPath(tree, tree.entries.get('big') ?? fail()))).equals(big)).toBe(true)
    expect((await readFile(blobPath(tree, tree.entries.get('mid') ?? fail()))).equals(mid)).toBe(true)
  })

  it('leaves no write landing after a rejected layer', async () => {
    const staging = await newStaging()
    const tree = await createTree(staging)
    const entries: TarEntry[] = [...Array.from({ length: 200 }, (_, i) => ({ name: `f${i}`, content: 'x'.repeat(1000) })), { name: 'bad\rname' }]
    await expect(applyLayer(tree, tarStream(entries, { chunkSize: 65536 }), { index: 0, label: 'layer 1' })).rejects.toThrow('carriage return')
    const after = await readdir(path.join(staging, 'blobs'))
    expect(after).toHaveLength(200)
    await sleep(50)
    expect(await readdir(path.join(staging, 'blobs'))).toEqual(after)
  })

  it('reports a failed write of a large, streamed file too, without following a planted symlink', async () => {
    const staging = await newStaging()
    const victim = path.join(await newStaging(), 'victim')
    await writeFile(victim, 'untouched')
    const tree = await createTree(staging)
    await symlink(victim, path.join(staging, 'blobs', String(tree.nextIno)))
    await expect(applyLayer(tree, tarStream([{ name: 'big', content: Buffer.alloc(1024 * 1024) }]), { index: 0, label: 'layer 1' })).rejects.toThrow(
      /^layer 1: EEXIST/,
    )
    expect(await readFile(victim, 'utf8')).toBe('untouched')
  })
})

function fail(): never {
  throw new Error('missing entry')
}
