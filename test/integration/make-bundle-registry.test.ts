/**
 * `make-bundle --image` against the real Debian docker-registry: platform selection from an
 * index, an unprivileged build, a fully cached rebuild with --offline that makes no request at
 * all, and the cache itself used as an --oci-layout source — all giving the same bytes.
 */
import { createHash } from 'node:crypto'
import { chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import { bale, ensureBuilt } from '../helpers/cli.js'
import { cat } from '../helpers/debugfs.js'
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy.js'
import { filesLayer, type PushedImage, pushImage } from '../helpers/registry.js'

const regs = inject('registries')
let work: string
let proxy: FaultProxy
let img: PushedImage
let ref: string
let cacheDir: string

const sha256 = (f: string): string => createHash('sha256').update(readFileSync(f)).digest('hex')

beforeAll(async () => {
  ensureBuilt()
  work = mkdtempSync(path.join(os.tmpdir(), 'bale-mb-reg-'))
  img = await pushImage(
    work,
    regs.plain,
    'mb/multi:v2',
    [
      { platform: { os: 'linux', architecture: 'amd64' }, layers: [filesLayer({ 'etc/arch': 'amd64\n' }, 'gzip')] },
      {
        platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
        layers: [filesLayer({ 'etc/arch': 'arm64\n', 'bin/app': 'app' }, 'zstd'), filesLayer({ 'etc/extra': 'x' }, 'gzip')],
        config: { Entrypoint: ['/bin/app'] },
      },
    ],
    { index: true },
  )
  proxy = await startFaultProxy(regs.plain)
  ref = `${proxy.address}/mb/multi:v2`
  // The cache belongs to the unprivileged builder; root reuses it afterwards.
  cacheDir = path.join(work, 'cache')
  mkdirSync(cacheDir)
  chownSync(cacheDir, 65534, 65534)
  chownSync(work, 65534, 65534)
})

afterAll(async () => {
  await proxy?.stop()
  if (work) rmSync(work, { recursive: true, force: true })
})

async function unpackedRootfs(bundle: string): Promise<string> {
  const dir = mkdtempSync(path.join(work, 'u-'))
  expect((await bale(['bundle', 'unpack', bundle, dir])).code).toBe(0)
  return path.join(dir, 'rootfs.ext4')
}

describe('make-bundle --image', () => {
  let first: string

  it('builds the requested platform from an index, as an unprivileged user', async () => {
    first = path.join(work, 'arm.tar.zst')
    const r = await bale(['make-bundle', '--image', ref, '--platform', 'linux/arm64/v8', '--out', first, '--quiet'], {
      unprivileged: true,
      env: { BALE_CACHE_DIR: cacheDir, HOME: work, TMPDIR: work, DOCKER_CONFIG: path.join(work, 'none') },
    })
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const m = JSON.parse((await bale(['bundle', 'inspect', first, '--json'])).stdout)
    expect(m).toMatchObject({ name: 'multi', version: 'v2', arch: 'arm64', source: { ref, platform: 'linux/arm64/v8', manifest_digest: img.manifestDigests[1] } })
    expect(m.source.layers.map((l: { diff_id: string }) => l.diff_id)).toEqual(img.diffIds[1])
    const rootfs = await unpackedRootfs(first)
    expect(cat(rootfs, '/etc/arch').toString()).toBe('arm64\n')
    expect(cat(rootfs, '/etc/extra').toString()).toBe('x')
  })

  it('rebuilds from the cache with --offline making zero requests, to the same bytes', async () => {
    proxy.reset()
    const again = path.join(work, 'arm-offline.tar.zst')
    const r = await bale(['make-bundle', '--image', ref, '--platform', 'linux/arm64/v8', '--offline', '--out', again, '--quiet'], {
      env: { BALE_CACHE_DIR: cacheDir, TMPDIR: work },
    })
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    expect(proxy.requests).toHaveLength(0)
    expect(sha256(again)).toBe(sha256(first))
  })

  it('--offline with nothing cached fails clearly without a request', async () => {
    proxy.reset()
    const empty = mkdtempSync(path.join(work, 'empty-cache-'))
    const out = path.join(work, 'never.tar.zst')
    const r = await bale(['make-bundle', '--image', `${proxy.address}/mb/other:v1`, '--offline', '--out', out], { env: { BALE_CACHE_DIR: empty } })
    expect(r.code).not.toBe(0)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toMatch(/mb\/other:v1/)
    expect(proxy.requests).toHaveLength(0)
  })
})
