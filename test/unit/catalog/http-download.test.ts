import { createHash, randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import ssri from 'ssri'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { checkScheme, HttpClient } from '../../../src/catalog/http.js'
import { serveDirectory, type StaticServer } from '../../helpers/http-server.js'

/** Compare big buffers by digest: vitest's deep equality walks them byte by byte, very slowly. */
function digestOf(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex')
}

let root: string
let server: StaticServer
let http: HttpClient
const data = randomBytes(300_000)
const expected = { size: data.length, sha256: createHash('sha256').update(data).digest('hex'), integrity: ssri.fromData(data).toString() }

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-http-'))
  await fs.mkdir(path.join(root, 'srv'))
  await fs.writeFile(path.join(root, 'srv', 'file.bin'), data)
  server = await serveDirectory(path.join(root, 'srv'))
  // Fast retries: the behaviour, not the waiting, is under test.
  http = new HttpClient({ retry: { attempts: 4, baseMs: 1, maxMs: 5, maxRetryAfterMs: 1000, jitter: 0 } })
})
afterAll(async () => {
  await http.close()
  await server.close()
  await fs.rm(root, { recursive: true, force: true })
})
beforeEach(() => {
  server.requests.length = 0
  server.faults.clear()
})

function partialPath(): string {
  return path.join(root, `dl-${randomBytes(4).toString('hex')}.partial`)
}

describe('resumable verified download', () => {
  it('downloads and verifies', async () => {
    const p = partialPath()
    const d = await http.download(new URL(`${server.url}/file.bin`), p, expected, 'file')
    expect(d).toMatchObject({ ...expected, resumedFrom: 0 })
    expect(digestOf(await fs.readFile(p))).toBe(digestOf(data))
  })

  it('a connection dropped mid-body is resumed with Range from the bytes received', async () => {
    server.faults.set('/file.bin', { cutAfter: 70_000 })
    const p = partialPath()
    await http.download(new URL(`${server.url}/file.bin`), p, expected, 'file')
    expect(server.requests.map((r) => [r.range ?? null, r.status])).toEqual([
      [null, 200],
      ['bytes=70000-', 206],
    ])
    expect(digestOf(await fs.readFile(p))).toBe(digestOf(data))
  })

  it('a server that ignores Range (200 to a resume) is read from the start, not appended', async () => {
    const p = partialPath()
    await fs.writeFile(p, data.subarray(0, 5000))
    server.faults.set('/file.bin', { ignoreRange: true })
    const d = await http.download(new URL(`${server.url}/file.bin`), p, expected, 'file')
    expect(d.resumedFrom).toBe(0)
    expect(digestOf(await fs.readFile(p))).toBe(digestOf(data))
  })

  it('a partial file longer than the expected size is discarded and the download restarts', async () => {
    const p = partialPath()
    await fs.writeFile(p, Buffer.concat([data, Buffer.from('junk')]))
    await http.download(new URL(`${server.url}/file.bin`), p, expected, 'file')
    expect(server.requests[0]?.range).toBeUndefined()
    expect(digestOf(await fs.readFile(p))).toBe(digestOf(data))
  })

  it('a resumed prefix with wrong bytes fails the integrity check and the partial file is deleted', async () => {
    const p = partialPath()
    const bad = Buffer.from(data.subarray(0, 1000))
    bad[10] = (bad[10] as number) ^ 0xff
    await fs.writeFile(p, bad)
    await expect(http.download(new URL(`${server.url}/file.bin`), p, expected, 'demo@1')).rejects.toThrow(/^demo@1: expected sha512-\S+ got sha512-\S+ \(download deleted\)$/)
    await expect(fs.stat(p)).rejects.toMatchObject({ code: 'ENOENT' })
  })

  it('a server sending more than the expected size is cut off', async () => {
    const p = partialPath()
    await expect(http.download(new URL(`${server.url}/file.bin`), p, { ...expected, size: 1000 }, 'short')).rejects.toThrow('short: server sent more bytes than the 1000 expected')
  })

  it('404 fails at once with the URL', async () => {
    await expect(http.download(new URL(`${server.url}/missing.bin`), partialPath(), expected, 'm')).rejects.toMatchObject({ code: 'E_NOT_FOUND' })
    expect(server.requests).toHaveLength(1)
  })
})

describe('plain HTTP', () => {
  it('is allowed to loopback, refused elsewhere unless --insecure', () => {
    expect(() => checkScheme(new URL('http://127.0.0.1:8080/x'), false, 'GET')).not.toThrow()
    expect(() => checkScheme(new URL('http://localhost/x'), false, 'GET')).not.toThrow()
    expect(() => checkScheme(new URL('http://catalog.example.com/x'), false, 'GET')).toThrow('refusing plain HTTP to catalog.example.com')
    expect(() => checkScheme(new URL('http://catalog.example.com/x'), true, 'GET')).not.toThrow()
    expect(() => checkScheme(new URL('ftp://catalog.example.com/x'), true, 'GET')).toThrow('ftp: URLs are not supported')
  })
})
