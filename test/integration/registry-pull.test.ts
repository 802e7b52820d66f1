/**
 * `pull` against the real Debian docker-registry: single- and multi-platform images pushed
 * with skopeo, gzip, zstd and uncompressed layers, by tag and by digest, the store as an OCI
 * layout, the zero-request warm path and --offline. Requests are counted at a loopback proxy.
 */
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import { BaleError } from '../../src/lib/errors.js'
import { ociLayoutSource } from '../../src/pipeline/source/oci-layout.js'
import { registrySource } from '../../src/pipeline/source/registry.js'
import { openLayerTar } from '../../src/pipeline/source/layer.js'
import { pull, type PullEvent } from '../../src/registry/pull.js'
import { REF_NAME_ANNOTATION } from '../../src/registry/store.js'
import { type FaultProxy, isManifest, startFaultProxy } from '../helpers/fault-proxy.js'
import { freePort } from '../helpers/registry.js'
import { filesLayer, type PushedImage, pushImage, pseudoRandom } from '../helpers/registry.js'

const execFileP = promisify(execFile)
const regs = inject('registries')

let work: string
let proxy: FaultProxy
let single: PushedImage
let multi: PushedImage
let zstdImg: PushedImage

async function listBlobs(store: string): Promise<string[]> {
  return (await fs.readdir(path.join(store, 'blobs', 'sha256'))).sort()
}

async function assertStoreVerified(store: string): Promise<void> {
  for (const hex of await listBlobs(store)) {
    const data = await fs.readFile(path.join(store, 'blobs', 'sha256', hex))
    expect(createHash('sha256').update(data).digest('hex'), `blob ${hex}`).toBe(hex)
  }
}

async function newStore(): Promise<string> {
  return fs.mkdtemp(path.join(work, 'store-'))
}

beforeAll(async () => {
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-pull-test-'))
  proxy = await startFaultProxy(regs.plain)
  single = await pushImage(work, regs.plain, 'pull/single:v1', [
    {
      layers: [
        filesLayer({ 'etc/hello': 'hello\n', 'big.bin': pseudoRandom('single', 512 * 1024) }, 'gzip'),
        filesLayer({ 'etc/second': 'second layer\n' }, 'none'),
      ],
      config: { Entrypoint: ['/bin/sh'], Cmd: ['-c', 'echo hi'], Env: ['A=1'], ExposedPorts: { '80/tcp': {} } },
    },
  ])
  zstdImg = await pushImage(work, regs.plain, 'pull/zstd:v1', [{ layers: [filesLayer({ 'zstd.txt': 'compressed with zstd\n' }, 'zstd')] }])
  multi = await pushImage(
    work,
    regs.plain,
    'pull/multi:v1',
    [
      { platform: { os: 'linux', architecture: 'amd64' }, layers: [filesLayer({ arch: 'amd64\n' }, 'gzip')] },
      { platform: { os: 'linux', architecture: 'arm64', variant: 'v8' }, layers: [filesLayer({ arch: 'arm64\n' }, 'gzip')] },
      { platform: { os: 'linux', architecture: 'arm', variant: 'v7' }, layers: [filesLayer({ arch: 'armv7\n' }, 'gzip')] },
    ],
    { attestation: true },
  )
})

afterAll(async () => {
  await proxy?.stop()
  if (work) await fs.rm(work, { recursive: true, force: true })
})

describe('pull from a real registry', () => {
  it('pulls a single-platform image by tag into an OCI layout store, every blob verified', async () => {
    const store = await newStore()
    const events: PullEvent[] = []
    const res = await pull(single.ref, { storeDir: store }, (e) => events.push(e))
    expect(res.ref).toBe(single.ref)
    expect(res.platform).toBe('linux/amd64')
    expect(res.manifestDigest).toBe(single.manifestDigests[0])
    expect(res.configDigest).toBe(single.configDigests[0])
    expect(res.layers.map((l) => l.digest)).toEqual(single.layerDigests[0])
    expect(res.downloaded).toBe(3) // config + 2 layers
    expect(await listBlobs(store)).toEqual(
      [res.manifestDigest, res.configDigest, ...(single.layerDigests[0] as string[])].map((d) => d.slice(7)).sort(),
    )
    await assertStoreVerified(store)
    const index = JSON.parse(await fs.readFile(path.join(store, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations: Record<string, string> }> }
    expect(index.manifests).toHaveLength(1)
    expect(index.manifests[0]?.digest).toBe(res.manifestDigest)
    expect(index.manifests[0]?.annotations[REF_NAME_ANNOTATION]).toBe(single.ref)
    expect(JSON.parse(await fs.readFile(path.join(store, 'oci-layout'), 'utf8'))).toEqual({ imageLayoutVersion: '1.0.0' })
    // Nothing left in flight.
    expect((await fs.readdir(path.join(store, 'ingest'))).filter((n) => !n.endsWith('.lock'))).toEqual([])
    expect(events.filter((e) => e.type === 'blob-done' && !e.cached)).toHaveLength(3)
  })

  it('the store is a valid OCI layout that skopeo reads by the full reference', async () => {
    const store = await newStore()
    await pull(single.ref, { storeDir: store })
    const { stdout } = await execFileP('skopeo', ['inspect', '--raw', `oci:${store}:${single.ref}`])
    expect(createHash('sha256').update(stdout).digest('hex')).toBe(single.manifestDigests[0]?.slice(7))
  })

  it('the store is a valid --oci-layout source, single image or index', async () => {
    for (const img of [single, multi]) {
      const store = await newStore()
      const pulled = await pull(img.ref, { storeDir: store })
      const viaLayout = await ociLayoutSource(store, { platform: 'linux/amd64' }).resolve()
      expect(viaLayout.manifestDigest).toBe(pulled.manifestDigest)
      expect(viaLayout.configDigest).toBe(pulled.configDigest)
      expect(viaLayout.layers.map((l) => l.digest)).toEqual(pulled.layers.map((l) => l.digest))
      const viaRegistry = await registrySource(img.ref, { storeDir: store }).resolve()
      expect(viaRegistry.config).toEqual(viaLayout.config)
      expect(viaRegistry.layers.map((l) => [l.diffId, l.compression, l.size])).toEqual(viaLayout.layers.map((l) => [l.diffId, l.compression, l.size]))
    }
  })

  it('the registry source serves layers that pass diff_id verification (gzip, uncompressed, zstd)', async () => {
    const store = await newStore()
    for (const img of [single, zstdImg]) {
      const src = registrySource(img.ref, { storeDir: store })
      const resolved = await src.resolve()
      expect(resolved.config).toMatchObject(img === single ? { entrypoint: ['/bin/sh'], cmd: ['-c', 'echo hi'], env: ['A=1'], exposedPorts: ['80/tcp'] } : {})
      expect(resolved.layers.map((l) => l.compression)).toEqual(img === single ? ['gzip', 'none'] : ['zstd'])
      for (const [i, blob] of resolved.layers.entries()) {
        const { tar, digests } = await openLayerTar(blob, `layer ${i}`)
        tar.resume()
        const d = await digests
        expect(d.diffId).toBe(img.diffIds[0]?.[i])
      }
      await src.close()
    }
  })

  it('chooses the platform from an index and skips the attestation manifest', async () => {
    const store = await newStore()
    const amd = await pull(multi.ref, { storeDir: store })
    expect(amd.platform).toBe('linux/amd64')
    expect(amd.indexDigest).toBe(multi.indexDigest)
    expect(amd.manifestDigest).toBe(multi.manifestDigests[0])
    const arm64 = await pull(multi.ref, { storeDir: store, platform: 'linux/arm64' })
    expect(arm64.manifestDigest).toBe(multi.manifestDigests[1])
    const armv7 = await pull(multi.ref, { storeDir: store, platform: 'linux/arm/v7' })
    expect(armv7.manifestDigest).toBe(multi.manifestDigests[2])
    // The attestation manifest was never fetched.
    expect(await listBlobs(store)).not.toContain(multi.attestationDigest?.slice(7))
    // The tag names the index, so every platform resolves from the store.
    const index = JSON.parse(await fs.readFile(path.join(store, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> }
    expect(index.manifests.map((m) => m.digest)).toEqual([multi.indexDigest])
    await expect(pull(multi.ref, { storeDir: store, platform: 'linux/s390x' })).rejects.toThrow(/no linux\/s390x image in the index \(available: linux\/amd64, linux\/arm64\/v8, linux\/arm\/v7\)/)
  })

  it('pulls by digest and refuses a single-platform image of another architecture', async () => {
    const store = await newStore()
    const byDigest = `${regs.plain}/pull/single@${single.manifestDigests[0]}`
    const res = await pull(byDigest, { storeDir: store })
    expect(res.manifestDigest).toBe(single.manifestDigests[0])
    await expect(pull(single.ref, { storeDir: store, platform: 'linux/arm64' })).rejects.toThrow(/is a linux\/amd64 image, not linux\/arm64/)
  })

  it('a cached re-pull makes zero requests, and --offline resolves the tag with none either', async () => {
    const store = await newStore()
    const ref = `${proxy.address}/pull/single:v1`
    proxy.reset()
    const cold = await pull(ref, { storeDir: store })
    expect(proxy.requests.length).toBeGreaterThan(0)
    proxy.reset()
    const warm = await pull(ref, { storeDir: store })
    expect(proxy.requests).toEqual([])
    expect(warm.downloaded).toBe(0)
    expect(warm.manifestDigest).toBe(cold.manifestDigest)
    const offline = await pull(ref, { storeDir: store, offline: true })
    expect(offline.layers).toEqual(cold.layers)
    expect(proxy.requests).toEqual([])
  })

  it('--refresh asks the registry again but downloads nothing that is already stored', async () => {
    const store = await newStore()
    const ref = `${proxy.address}/pull/single:v1`
    await pull(ref, { storeDir: store })
    proxy.reset()
    const res = await pull(ref, { storeDir: store, refresh: true })
    expect(res.downloaded).toBe(0)
    expect(proxy.requests.map((r) => r.path)).toEqual(['/v2/', '/v2/pull/single/manifests/v1'])
  })

  it('--offline with an empty store fails clearly, naming the reference, and creates nothing', async () => {
    const store = path.join(work, 'never-created')
    const err = await pull(single.ref, { storeDir: store, offline: true }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(BaleError)
    expect((err as BaleError).code).toBe('E_NOT_FOUND')
    expect((err as BaleError).message).toContain(`offline: ${single.ref} is not in the store ${store}`)
    await expect(fs.stat(store)).rejects.toThrow()
  })

  it('--offline names the missing blob when only part of an image is stored', async () => {
    const store = await newStore()
    await pull(multi.ref, { storeDir: store })
    const err = await pull(multi.ref, { storeDir: store, offline: true, platform: 'linux/arm64' }).catch((e: unknown) => e)
    expect((err as BaleError).code).toBe('E_NOT_FOUND')
    expect((err as BaleError).message).toContain(`linux/arm64/v8 manifest ${multi.manifestDigests[1]} of ${multi.ref} is not in the store`)
  })

  it('an unknown tag is a clear 404 naming the reference', async () => {
    const store = await newStore()
    const err = await pull(`${regs.plain}/pull/single:nope`, { storeDir: store }).catch((e: unknown) => e)
    expect((err as BaleError).code).toBe('E_NOT_FOUND')
    expect((err as BaleError).message).toMatch(new RegExp(`^${regs.plain}/pull/single:nope: manifest not found \\(404\\)`))
    const err2 = await pull(`${regs.plain}/pull/absent-repo:v1`, { storeDir: store }).catch((e: unknown) => e)
    expect((err2 as BaleError).code).toBe('E_NOT_FOUND')
  })

  it('an index whose platform contradicts the image config is refused', async () => {
    const liar = await pushImage(work, regs.plain, 'pull/liar:v1', [{ platform: { os: 'linux', architecture: 'arm64' }, layers: [filesLayer({ a: 'a\n' }, 'gzip')] }], {
      lieAboutPlatforms: [{ os: 'linux', architecture: 'amd64' }],
    })
    const err = await pull(liar.ref, { storeDir: await newStore() }).catch((e: unknown) => e)
    expect((err as BaleError).code).toBe('E_INPUT')
    expect((err as BaleError).message).toBe(
      `${liar.ref}: the index lists manifest ${liar.manifestDigests[0]} as linux/amd64 but its config ${liar.configDigests[0]} says linux/arm64`,
    )
  })

  it('a manifest whose Content-Type contradicts its mediaType is refused', async () => {
    proxy.reset()
    proxy.addRule({ match: isManifest, fault: { kind: 'content-type', value: 'application/vnd.oci.image.index.v1+json' } })
    const err = await pull(`${proxy.address}/pull/single:v1`, { storeDir: await newStore() }).catch((e: unknown) => e)
    expect((err as BaleError).code).toBe('E_INPUT')
    expect((err as BaleError).message).toBe(
      `${proxy.address}/pull/single:v1: mediaType application/vnd.oci.image.manifest.v1+json in the body contradicts application/vnd.oci.image.index.v1+json it was served or described as`,
    )
  })

  it('a manifest fetched by digest must hash to that digest', async () => {
    proxy.reset()
    proxy.addRule({ match: isManifest, fault: { kind: 'corrupt', atByte: 20 } })
    const pinned = `${proxy.address}/pull/single@${single.manifestDigests[0]}`
    const store = await newStore()
    const err = await pull(pinned, { storeDir: store }).catch((e: unknown) => e)
    expect((err as BaleError).code).toBe('E_DIGEST')
    expect((err as BaleError).message).toMatch(new RegExp(`^GET ${proxy.address}/pull/single@${single.manifestDigests[0]}: expected ${single.manifestDigests[0]} got sha256:[0-9a-f]{64}$`))
    expect(await listBlobs(store)).toEqual([])
  })

  it('a registry that refuses connections fails at once, without retrying', async () => {
    const port = await freePort()
    const t0 = Date.now()
    const err = await pull(`127.0.0.1:${port}/x/y:z`, { storeDir: await newStore() }).catch((e: unknown) => e)
    expect((err as BaleError).code).toBe('E_NETWORK')
    expect((err as BaleError).message).toBe(`GET http://127.0.0.1:${port}/v2/: connection refused (ECONNREFUSED)`)
    expect(Date.now() - t0).toBeLessThan(2000)
  })
})
