import { createHash, randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { hashOnThread, sha256File } from '../../../src/lib/hash.js'

let dir: string
let file: string
let bytes: Buffer
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-hash-'))
  file = path.join(dir, 'f')
  // Zeros around two runs of data, longer than one 4 MiB read.
  bytes = Buffer.alloc(9 * 1024 * 1024 + 123)
  randomBytes(5 * 1024 * 1024).copy(bytes, 1024 * 1024)
  randomBytes(1000).copy(bytes, bytes.length - 1000)
  await fs.writeFile(file, bytes)
})
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true })
})

const hex = (alg: string, b: Buffer): string => createHash(alg).update(b).digest('hex')

describe('sha256File', () => {
  it('gives the digest of the whole file, read in several pieces', async () => {
    expect(await sha256File(file)).toBe(hex('sha256', bytes))
  })
})

describe('hashOnThread', () => {
  it('gives the digest of the whole file, sha256 by default and sha512 when asked', async () => {
    expect(await hashOnThread(file, bytes.length).digest).toBe(hex('sha256', bytes))
    expect(await hashOnThread(file, bytes.length, { algorithm: 'sha512' }).digest).toBe(hex('sha512', bytes))
  })

  it('with data ranges, reads only those and hashes the rest as zeros: the digest of the whole file', async () => {
    const ranges = [
      { start: 1024 * 1024, end: 6 * 1024 * 1024 },
      { start: bytes.length - 4096, end: bytes.length },
    ]
    expect(await hashOnThread(file, bytes.length, { ranges }).digest).toBe(hex('sha256', bytes))
  })

  it('covers the first `size` bytes only', async () => {
    expect(await hashOnThread(file, 4096).digest).toBe(hex('sha256', bytes.subarray(0, 4096)))
  })

  it('a file shorter than `size` fails, naming it', async () => {
    await expect(hashOnThread(file, bytes.length + 1).digest).rejects.toThrow(`${file}: ends after ${bytes.length} of ${bytes.length + 1} bytes`)
  })

  it('a missing file fails', async () => {
    await expect(hashOnThread(path.join(dir, 'nope'), 1).digest).rejects.toMatchObject({ code: 'ENOENT' })
  })

  it('stop() ends the thread; the digest then fails rather than hanging', async () => {
    const h = hashOnThread(file, bytes.length)
    await h.stop()
    await expect(h.digest).rejects.toThrow()
  })
})
