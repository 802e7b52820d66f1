import { randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { fixedChunks } from '../../../src/pipeline/bundle/writer.js'

async function* from(chunks: Buffer[]): AsyncGenerator<Buffer> {
  for (const c of chunks) yield c
}

async function collect(chunks: Buffer[], size: number): Promise<Buffer[]> {
  const out: Buffer[] = []
  // Copy what is yielded: a yielded buffer may be handed back to alloc() by a real consumer.
  for await (const c of fixedChunks(from(chunks), size)) out.push(c)
  return out
}

describe('fixedChunks', () => {
  it('re-cuts any chunking into whole buffers of the size, the last one shorter', async () => {
    const data = randomBytes(10_000)
    const cuts = [0, 1, 700, 701, 2048, 4096, 4097, 9000, 10_000]
    const chunks = cuts.slice(1).map((end, i) => data.subarray(cuts[i], end))
    const out = await collect(chunks, 1024)
    expect(out.map((b) => b.length)).toEqual([...Array<number>(9).fill(1024), 10_000 - 9 * 1024])
    expect(Buffer.concat(out).equals(data)).toBe(true)
  })

  it('passes a whole aligned chunk on as it is, and copies the ones around it', async () => {
    const head = randomBytes(1000)
    const tail = randomBytes(24)
    const whole = randomBytes(1024)
    const out = await collect([head, tail, whole, randomBytes(10)], 1024)
    expect(out).toHaveLength(3)
    expect(out[0]?.equals(Buffer.concat([head, tail]))).toBe(true)
    expect(out[1]).toBe(whole) // the same object: no copy
    expect(out[2]).toHaveLength(10)
  })

  it('copies a whole-sized chunk that does not start at a boundary', async () => {
    const a = randomBytes(10)
    const b = randomBytes(1024)
    const out = await collect([a, b], 1024)
    expect(out[0]).not.toBe(b)
    expect(Buffer.concat(out).equals(Buffer.concat([a, b]))).toBe(true)
  })

  it('with a first size: that many bytes first, then whole buffers, aligned ones passed on as they are', async () => {
    const head = [randomBytes(512), randomBytes(300), randomBytes(212), randomBytes(512)]
    const whole = randomBytes(1024)
    const out: Buffer[] = []
    const allocs: number[] = []
    const alloc = (): Buffer => {
      allocs.push(1024)
      return Buffer.allocUnsafe(1024)
    }
    for await (const c of fixedChunks(from([...head, whole, randomBytes(1500)]), 1024, alloc, 1536)) out.push(c)
    expect(out.map((b) => b.length)).toEqual([1536, 1024, 1024, 476])
    expect(out[0]?.equals(Buffer.concat(head))).toBe(true)
    expect(out[1]).toBe(whole)
    // The first buffer is its own; alloc() serves the later ones only (the 1500 bytes after whole).
    expect(allocs).toHaveLength(2)
  })
})
