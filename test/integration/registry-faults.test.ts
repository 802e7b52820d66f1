/**
 * Faults between bale and a real registry, injected by a loopback proxy: 429 with Retry-After,
 * 500s, connection resets part-way through a blob (resumed with Range), corrupted bytes (the
 * pull fails naming the digest and the store keeps only verified blobs), and a transfer cut
 * off in one run and resumed by the next.
 */
import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, beforeEach, describe, expect, inject, it } from 'vitest'
import { BaleError } from '../../src/lib/errors.js'
import { pull, type PullEvent } from '../../src/registry/pull.js'
import { DEFAULT_RETRY } from '../../src/registry/retry.js'
import { type FaultProxy, isBlobDigest, isManifest, startFaultProxy } from '../helpers/fault-proxy.js'
import { filesLayer, type PushedImage, pushImage, pseudoRandom } from '../helpers/registry.js'

const regs = inject('registries')

let work: string
let proxy: FaultProxy
let img: PushedImage
/** The 3 MiB incompressible layer: big enough to be cut part-way, and for a 1 MiB write batch to reach disk first. */
let bigLayer: string
let smallLayer: string
let ref: string

async function newStore(): Promise<string> {
  return fs.mkdtemp(path.join(work, 'store-'))
}

async function storedBlobs(store: string): Promise<string[]> {
  return (await fs.readdir(path.join(store, 'blobs', 'sha256'))).map((h) => `sha256:${h}`)
}

async function assertOnlyVerifiedBlobs(store: string): Promise<void> {
  for (const d of await storedBlobs(store)) {
    const data = await fs.readFile(path.join(store, 'blobs', 'sha256', d.slice(7)))
    expect(`sha256:${createHash('sha256').update(data).digest('hex')}`).toBe(d)
  }
}

async function partials(store: string): Promise<string[]> {
  return (await fs.readdir(path.join(store, 'ingest')).catch(() => [])).filter((n) => n.endsWith('.partial'))
}

beforeAll(async () => {
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-faults-test-'))
  img = await pushImage(work, regs.plain, 'faults/img:v1', [
    { layers: [filesLayer({ 'big.bin': pseudoRandom('faults', 3 * 1024 * 1024) }, 'gzip'), filesLayer({ 'etc/small': 'small\n' }, 'gzip')] },
  ])
  bigLayer = img.layerDigests[0]?.[0] as string
  smallLayer = img.layerDigests[0]?.[1] as string
  proxy = await startFaultProxy(regs.plain)
  ref = `${proxy.address}/faults/img:v1`
})

afterAll(async () => {
  await proxy?.stop()
  if (work) await fs.rm(work, { recursive: true, force: true })
})

beforeEach(() => {
  proxy.reset()
})

describe('transient faults are retried', () => {
  it('honours Retry-After on a 429', async () => {
    proxy.addRule({ match: isManifest, fault: { kind: 'status', status: 429, retryAfter: '1' } })
    const events: PullEvent[] = []
    const res = await pull(ref, { storeDir: await newStore() }, (e) => events.push(e))
    expect(res.manifestDigest).toBe(img.manifestDigests[0])
    const manifestReqs = proxy.requests.filter((r) => isManifest(r.method, r.path))
    expect(manifestReqs.map((r) => r.outcome)).toEqual(['status', 'forwarded'])
    const waited = (manifestReqs[1]?.at ?? 0) - (manifestReqs[0]?.at ?? 0)
    expect(waited).toBeGreaterThanOrEqual(950)
    expect(events).toContainEqual(expect.objectContaining({ type: 'retry', delayMs: 1000, reason: 'HTTP 429' }))
  })

  it('refuses to wait longer than the cap when Retry-After asks for it', async () => {
    proxy.addRule({ match: isManifest, fault: { kind: 'status', status: 429, retryAfter: '3600' } })
    const e = (await pull(ref, { storeDir: await newStore() }).catch((err: unknown) => err)) as BaleError
    expect(e.code).toBe('E_NETWORK')
    expect(e.message).toMatch(/HTTP 429, and the registry asks to retry after 3600 s \(more than the 60 s bale waits\)/)
  })

  it('retries 500s with backoff and gives up after the policy\'s tries, naming the blob', async () => {
    proxy.addRule({ match: isBlobDigest(smallLayer), fault: { kind: 'status', status: 500 }, times: 2 })
    const store = await newStore()
    const res = await pull(ref, { storeDir: store })
    expect(res.layers.map((l) => l.digest)).toEqual(img.layerDigests[0])
    expect(proxy.requests.filter((r) => r.path.includes(smallLayer)).map((r) => r.outcome)).toEqual(['status', 'status', 'forwarded'])
    await assertOnlyVerifiedBlobs(store)

    proxy.reset()
    proxy.addRule({ match: isBlobDigest(smallLayer), fault: { kind: 'status', status: 503 }, times: 100 })
    const fast = { ...DEFAULT_RETRY, baseMs: 10 }
    const e = (await pull(ref, { storeDir: await newStore(), retry: fast }).catch((err: unknown) => err)) as BaleError
    expect(e.code).toBe('E_NETWORK')
    expect(e.message).toBe(`blob ${smallLayer} of ${proxy.address}/faults/img: HTTP 503 (INJECTED: injected 503) after 5 tries`)
    expect(proxy.requests.filter((r) => r.path.includes(smallLayer))).toHaveLength(DEFAULT_RETRY.attempts)
  })

  it('resumes a blob with Range after a connection reset part-way through', async () => {
    proxy.addRule({ match: isBlobDigest(bigLayer), fault: { kind: 'reset', afterBytes: 1_500_000 } })
    const store = await newStore()
    const events: PullEvent[] = []
    const res = await pull(ref, { storeDir: store }, (e) => events.push(e))
    expect(res.layers.map((l) => l.digest)).toEqual(img.layerDigests[0])
    const reqs = proxy.requests.filter((r) => r.path.includes(bigLayer))
    expect(reqs).toHaveLength(2)
    expect(reqs[0]?.outcome).toBe('reset')
    expect(reqs[0]?.range).toBeUndefined()
    // What arrived before the reset was kept: the retry asks for the rest only.
    const retry = events.find((e) => e.type === 'retry' && e.what === `layer ${bigLayer} of ${proxy.address}/faults/img`)
    const kept = Number(/at byte (\d+)$/.exec(retry?.type === 'retry' ? retry.reason : '')?.[1])
    expect(kept).toBeGreaterThan(0)
    expect(kept).toBeLessThanOrEqual(1_500_000)
    expect(reqs[1]?.range).toBe(`bytes=${kept}-`)
    expect(events).toContainEqual(expect.objectContaining({ type: 'blob-done', digest: bigLayer, resumedFrom: 0, cached: false }))
    await assertOnlyVerifiedBlobs(store)
    expect(await partials(store)).toEqual([])
  })
})

describe('bytes that do not verify', () => {
  it('a corrupted blob is deleted and the pull fails naming the digest', async () => {
    proxy.addRule({ match: isBlobDigest(bigLayer), fault: { kind: 'corrupt', atByte: 2_000_000 } })
    const store = await newStore()
    const e = (await pull(ref, { storeDir: store }).catch((err: unknown) => err)) as BaleError
    expect(e).toBeInstanceOf(BaleError)
    expect(e.code).toBe('E_DIGEST')
    expect(e.message).toMatch(new RegExp(`^blob ${bigLayer}: expected ${bigLayer} got sha256:[0-9a-f]{64}; removed$`))
    expect(await storedBlobs(store)).not.toContain(bigLayer)
    // The corrupt bytes are gone. Another layer still downloading when the pull failed may keep
    // its partial file for a later resume (timing decides), which is how interruption is handled.
    expect(await partials(store)).not.toContain(`${bigLayer.slice('sha256:'.length)}.partial`)
    await assertOnlyVerifiedBlobs(store)
    expect(JSON.parse(await fs.readFile(path.join(store, 'index.json'), 'utf8')).manifests).toEqual([])
    // A clean retry then succeeds and leaves nothing in ingest.
    const res = await pull(ref, { storeDir: store })
    expect(res.layers.map((l) => l.digest)).toEqual(img.layerDigests[0])
    expect(await partials(store)).toEqual([])
  })
})

describe('resume across runs', () => {
  it('a run cut off mid-blob leaves a partial file; the next run resumes it with Range and verifies', async () => {
    const store = await newStore()
    // One try only, so the first run gives up after the reset instead of resuming itself.
    proxy.addRule({ match: isBlobDigest(bigLayer), fault: { kind: 'reset', afterBytes: 2_200_000 } })
    const e = (await pull(ref, { storeDir: store, retry: { ...DEFAULT_RETRY, attempts: 1 } }).catch((err: unknown) => err)) as BaleError
    expect(e.code).toBe('E_NETWORK')
    const kept = Number(/\((\d+) of \d+ bytes kept; rerun to resume\)$/.exec(e.message)?.[1])
    expect(kept).toBeGreaterThan(0)
    expect(await partials(store)).toEqual([`${bigLayer.slice(7)}.partial`])
    expect((await fs.stat(path.join(store, 'ingest', `${bigLayer.slice(7)}.partial`))).size).toBe(kept)

    proxy.reset()
    const events: PullEvent[] = []
    const res = await pull(ref, { storeDir: store }, (ev) => events.push(ev))
    expect(res.layers.map((l) => l.digest)).toEqual(img.layerDigests[0])
    const big = proxy.requests.filter((r) => r.path.includes(bigLayer))
    expect(big.map((r) => r.range)).toEqual([`bytes=${kept}-`])
    expect(events).toContainEqual(expect.objectContaining({ type: 'blob-done', digest: bigLayer, cached: false, resumedFrom: kept }))
    await assertOnlyVerifiedBlobs(store)
    expect(await partials(store)).toEqual([])
  })

  it('a resumed partial that does not verify is downloaded afresh once', async () => {
    const store = await newStore()
    proxy.addRule({ match: isBlobDigest(bigLayer), fault: { kind: 'reset', afterBytes: 1_200_000 } })
    await expect(pull(ref, { storeDir: store, retry: { ...DEFAULT_RETRY, attempts: 1 } })).rejects.toThrow(/rerun to resume/)
    const partial = path.join(store, 'ingest', `${bigLayer.slice(7)}.partial`)
    const kept = (await fs.stat(partial)).size
    expect(kept).toBeGreaterThan(10)
    // Damage the kept bytes, as a crash or a bad earlier transfer might have.
    const fh = await fs.open(partial, 'r+')
    await fh.write(Buffer.from([0xde, 0xad]), 0, 2, 10)
    await fh.close()
    proxy.reset()
    const res = await pull(ref, { storeDir: store })
    expect(res.layers.map((l) => l.digest)).toEqual(img.layerDigests[0])
    expect(proxy.requests.filter((r) => r.path.includes(bigLayer)).map((r) => r.range)).toEqual([`bytes=${kept}-`, undefined])
    await assertOnlyVerifiedBlobs(store)
  })
})
