import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import ssri from 'ssri'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { checkDigests, copyVerified, digestFile } from '../../../src/catalog/integrity.js'

/** Compare big buffers by digest: vitest's deep equality walks them byte by byte, very slowly. */
function digestOf(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex')
}

let dir: string
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-integrity-'))
})
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true })
})

const data = Buffer.from('bale catalog bytes\n'.repeat(1000))
const sha256 = createHash('sha256').update(data).digest('hex')

describe('digests', () => {
  it('computes the same sha256 and ssri integrity as the reference implementations', async () => {
    const f = path.join(dir, 'a')
    await fs.writeFile(f, data)
    const d = await digestFile(f)
    expect(d).toEqual({ size: data.length, sha256, integrity: ssri.fromData(data).toString() })
    expect(d.integrity).toMatch(/^sha512-/)
  })

  it('checks an integrity of another algorithm (sha256) by hashing with it', async () => {
    const f = path.join(dir, 'b')
    await fs.writeFile(f, data)
    const want = ssri.fromData(data, { algorithms: ['sha256'] }).toString()
    const dest = path.join(dir, 'b-copy')
    await copyVerified(f, dest, { integrity: want }, 'b')
    expect(digestOf(await fs.readFile(dest))).toBe(digestOf(data))
  })

  it('names the entry and both integrities on a mismatch', () => {
    const got = { size: 1, sha256: 'a'.repeat(64), integrity: ssri.fromData('x').toString() }
    expect(() => checkDigests(got, { integrity: ssri.fromData('y').toString() }, 'demo@1')).toThrow(/^demo@1: expected sha512-\S+ got sha512-\S+$/)
    expect(() => checkDigests(got, { size: 2 }, 'demo@1')).toThrow('demo@1: expected 2 bytes got 1')
  })

  it('copyVerified leaves nothing at or beside the destination when the bytes do not match', async () => {
    const f = path.join(dir, 'c')
    await fs.writeFile(f, data)
    const out = await fs.mkdtemp(path.join(dir, 'out-'))
    await expect(copyVerified(f, path.join(out, 'c'), { sha256: 'f'.repeat(64) }, 'c')).rejects.toMatchObject({ code: 'E_DIGEST' })
    expect(await fs.readdir(out)).toEqual([])
  })
})
