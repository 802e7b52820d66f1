/**
 * `bale pull` as a user runs it (bin/run.js over dist/): the --json summary, one-line errors
 * with their exit codes, plain progress lines when not on a terminal, a warm pull with zero
 * requests, and a pull killed with SIGKILL mid-blob that the next run resumes with Range.
 */
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, beforeEach, describe, expect, inject, it } from 'vitest'
import { ERROR_CODES } from '../../src/lib/errors.js'
import { bale, ensureBuilt } from '../helpers/cli.js'
import { type FaultProxy, isBlobDigest, startFaultProxy } from '../helpers/fault-proxy.js'
import { filesLayer, type PushedImage, pushImage, pseudoRandom } from '../helpers/registry.js'

const regs = inject('registries')

let work: string
let proxy: FaultProxy
let img: PushedImage
let ref: string
let env: NodeJS.ProcessEnv

beforeAll(async () => {
  ensureBuilt()
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-pull-cli-'))
  img = await pushImage(work, regs.plain, 'cli/img:v1', [
    { layers: [filesLayer({ 'big.bin': pseudoRandom('cli', 3 * 1024 * 1024) }, 'gzip'), filesLayer({ 'etc/os-release': 'ID=test\n' }, 'zstd')] },
  ])
  proxy = await startFaultProxy(regs.plain)
  ref = `${proxy.address}/cli/img:v1`
})

afterAll(async () => {
  await proxy?.stop()
  if (work) await fs.rm(work, { recursive: true, force: true })
})

beforeEach(async () => {
  proxy.reset()
  // A fresh cache (and so a fresh store) per test; no credentials from the real home.
  const cache = await fs.mkdtemp(path.join(work, 'cache-'))
  env = { BALE_CACHE_DIR: cache, HOME: path.join(work, 'home'), DOCKER_CONFIG: path.join(work, 'no-docker') }
})

describe('bale pull', () => {
  it('--json prints the summary; a second pull makes no request', async () => {
    const r = await bale(['pull', ref, '--json'], { env })
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    expect(JSON.parse(r.stdout)).toEqual({
      ref,
      manifest_digest: img.manifestDigests[0],
      index_digest: null,
      config_digest: img.configDigests[0],
      platform: 'linux/amd64',
      layers: [
        { digest: img.layerDigests[0]?.[0], size: expect.any(Number), media_type: 'application/vnd.oci.image.layer.v1.tar+gzip' },
        { digest: img.layerDigests[0]?.[1], size: expect.any(Number), media_type: 'application/vnd.oci.image.layer.v1.tar+zstd' },
      ],
    })
    const store = path.join(env.BALE_CACHE_DIR as string, 'oci')
    expect((await fs.readdir(path.join(store, 'blobs', 'sha256'))).length).toBe(4)

    proxy.reset()
    const warm = await bale(['pull', ref], { env })
    expect(warm.code).toBe(0)
    expect(proxy.requests).toEqual([])
    expect(warm.stdout).toContain('all from the store')
    const offline = await bale(['pull', ref, '--offline', '--json'], { env })
    expect(offline.code).toBe(0)
    expect(JSON.parse(offline.stdout).manifest_digest).toBe(img.manifestDigests[0])
    expect(proxy.requests).toEqual([])
  })

  it('prints plain progress lines, not bars, when not on a terminal', async () => {
    const r = await bale(['pull', ref], { env })
    expect(r.code).toBe(0)
    const lines = r.stderr.trim().split('\n')
    expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^${ref}: linux/amd64 manifest sha256:[0-9a-f]{64}, 2 layers \\(3\\.0 MiB\\)$`)))
    expect(lines).toContain(`config ${img.configDigests[0]?.slice(0, 19)}: ${(await fs.stat(path.join(env.BALE_CACHE_DIR as string, 'oci', 'blobs', 'sha256', (img.configDigests[0] as string).slice(7)))).size} B downloaded`)
    expect(lines).toContain(`layer ${img.layerDigests[0]?.[0]?.slice(0, 19)}: 3.0 MiB downloaded`)
    expect(r.stderr).not.toContain(String.fromCharCode(0x1b)) // no terminal escape codes
    expect(r.stdout.split('\n')[0]).toBe(`${ref} linux/amd64`)
  })

  it('errors are one line with the mapped exit code', async () => {
    const missing = await bale(['pull', `${proxy.address}/cli/img:absent`], { env })
    expect(missing.code).toBe(ERROR_CODES.E_NOT_FOUND)
    expect(missing.stderr).toBe(`bale: ${proxy.address}/cli/img:absent: manifest not found (404) (MANIFEST_UNKNOWN: manifest unknown)\n`)

    const unauth = await bale(['pull', `${regs.basic}/cli/img:v1`], { env })
    expect(unauth.code).toBe(ERROR_CODES.E_AUTH)
    expect(unauth.stderr.trim().split('\n')).toHaveLength(1)
    expect(unauth.stderr).toMatch(/authentication required \(401\)/)

    const offline = await bale(['pull', ref, '--offline', '--json'], { env })
    expect(offline.code).toBe(ERROR_CODES.E_NOT_FOUND)
    expect(JSON.parse(offline.stdout)).toEqual({ error: { code: 'E_NOT_FOUND', message: expect.stringMatching(/^offline: /), subject: ref } })

    const bad = await bale(['pull', 'UPPER/case'], { env })
    expect(bad.code).toBe(ERROR_CODES.E_INPUT)
    expect(bad.stderr).toBe(`bale: invalid image reference 'UPPER/case': repository name must be lowercase ('UPPER')\n`)

    const platform = await bale(['pull', ref, '--platform', 'linux'], { env })
    expect(platform.code).toBe(ERROR_CODES.E_USAGE)
  })

  it('a pull killed mid-blob (SIGKILL) is resumed by the next run with Range', async () => {
    const bigLayer = img.layerDigests[0]?.[0] as string
    // Send 2 MiB of the big layer, then hold the connection open: the process is mid-blob.
    proxy.addRule({ match: isBlobDigest(bigLayer), fault: { kind: 'stall', afterBytes: 2 * 1024 * 1024 } })
    const partial = path.join(env.BALE_CACHE_DIR as string, 'oci', 'ingest', `${bigLayer.slice(7)}.partial`)
    let pid = 0
    const first = bale(['pull', ref], { env, onSpawn: (p) => (pid = p) })
    // Wait until at least one 1 MiB write batch has reached the partial file.
    const deadline = Date.now() + 60_000
    while (Date.now() < deadline) {
      const size = (await fs.stat(partial).catch(() => undefined))?.size ?? 0
      if (size >= 1024 * 1024) break
      await new Promise((r) => setTimeout(r, 50))
    }
    process.kill(pid, 'SIGKILL')
    const killed = await first
    expect(killed.signal).toBe('SIGKILL')
    const kept = (await fs.stat(partial)).size
    expect(kept).toBeGreaterThanOrEqual(1024 * 1024)

    proxy.reset()
    const second = await bale(['pull', ref, '--json'], { env })
    expect(second.code).toBe(0)
    const big = proxy.requests.filter((r) => r.path.includes(bigLayer))
    expect(big.map((r) => r.range)).toEqual([`bytes=${kept}-`])
    await expect(fs.stat(partial)).rejects.toThrow()
    expect(JSON.parse(second.stdout).layers[0].digest).toBe(bigLayer)
  })
})
