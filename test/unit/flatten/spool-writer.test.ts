import { mkdir, readFile, stat, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { SpoolWriter } from '../../../src/pipeline/flatten/spool-writer.js'
import { newStaging, removeStagings } from './harness.js'

afterEach(removeStagings)

async function* chunks(...parts: Buffer[]): AsyncGenerator<Buffer> {
  for (const p of parts) yield p
}

describe('SpoolWriter', () => {
  it('appends each body and returns its slice; a body larger than a batch is split and kept whole', async () => {
    const spool = path.join(await newStaging(), 'spool')
    const w = new SpoolWriter(spool)
    const big = Buffer.alloc(3 * 1024 * 1024 + 17)
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) % 251
    const a = await w.add(chunks(Buffer.from('ab'), Buffer.from('c')))
    const empty = await w.add(chunks())
    const b = await w.add(chunks(big.subarray(0, 1000), big.subarray(1000)))
    const c = await w.add(chunks(Buffer.from('tail')))
    await w.flush()
    await w.close()
    expect([a.offset, empty.offset, b.offset, c.offset]).toEqual([0, 3, 3, 3 + big.length])
    const data = await readFile(spool)
    expect(data.length).toBe(3 + big.length + 4)
    expect(data.subarray(0, 3).toString()).toBe('abc')
    expect(data.subarray(3, 3 + big.length).equals(big)).toBe(true)
    expect(data.subarray(b.offset + big.length).toString()).toBe('tail')
    expect((await stat(spool)).mode & 0o7777).toBe(0o600)
  })

  it('never writes through a planted file or symlink: the spool is created exclusively', async () => {
    const dir = await newStaging()
    await mkdir(path.join(dir, 's'))
    const planted = path.join(dir, 's', '1')
    await writeFile(planted, 'victim')
    await expect(new SpoolWriter(planted).add(chunks(Buffer.from('x')))).rejects.toThrow(/EEXIST/)
    expect(await readFile(planted, 'utf8')).toBe('victim')
  })
})
