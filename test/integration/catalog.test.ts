/**
 * The catalog end to end with real tools: images pushed with skopeo to the Debian
 * docker-registry, `bale catalog build` (make-bundle with real e2fsprogs), publish to a
 * directory served by a loopback HTTP server (test/helpers/http-server.ts) and to registries as
 * OCI artifacts, `skopeo copy` between registries, `bale fetch` over HTTP and from a registry,
 * `bale catalog mirror` checked with `sha256sum -c`, and `bale install` inside `unshare -n`
 * (a network namespace with no interfaces but a down loopback).
 */
import { execFile, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { promises as fs, watch } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import { resolveInstalled } from '../../src/catalog/store.js'
import { RegistryPusher } from '../../src/registry/push.js'
import { parseReference } from '../../src/registry/reference.js'
import { bale, ensureBuilt, ROOT, type CliResult } from '../helpers/cli.js'
import { serveDirectory, type StaticServer } from '../helpers/http-server.js'
import { addKernel } from '../unit/catalog/fixtures.js'
import { filesLayer, pseudoRandom, pushImage, type RegistryProcess, startRegistry } from '../helpers/registry.js'

const execFileP = promisify(execFile)
const regs = inject('registries')

const KERNEL = 'test-kernel-1'
/** Tests build at level 3: the level only changes speed here, not what is tested. */
const LEVEL = '3'

let work: string
let catalogFile: string
let buildDir: string
let publishDir: string
let server: StaticServer
let second: RegistryProcess
let builderEnv: NodeJS.ProcessEnv
const sources: Record<string, string> = {}
const built: Record<string, { sha256: string; size: number; path: string }> = {}

interface Json<T> {
  code: number | null
  json: T
  stderr: string
}

async function baleJson<T>(args: string[], env: NodeJS.ProcessEnv): Promise<Json<T>> {
  const r = await bale([...args, '--json'], { env })
  let json: T
  try {
    json = JSON.parse(r.stdout) as T
  } catch {
    throw new Error(`bale ${args.join(' ')}: not JSON (code ${r.code}): ${r.stdout}\n${r.stderr}`)
  }
  return { code: r.code, json, stderr: r.stderr }
}

async function ok<T>(args: string[], env: NodeJS.ProcessEnv): Promise<T> {
  const r = await baleJson<T>(args, env)
  expect(r.code, `bale ${args.join(' ')}: ${JSON.stringify(r.json)} ${r.stderr}`).toBe(0)
  return r.json
}

/** A fresh host: its own data and cache directories. */
async function freshEnv(label: string): Promise<NodeJS.ProcessEnv> {
  const dir = await fs.mkdtemp(path.join(work, `${label}-`))
  return { BALE_DATA_DIR: path.join(dir, 'data'), BALE_CACHE_DIR: path.join(dir, 'cache') }
}

async function sha256File(file: string): Promise<string> {
  return createHash('sha256')
    .update(await fs.readFile(file))
    .digest('hex')
}

function catalogJson(entries: Array<{ name: string; version: string; source: string; description: string }>): string {
  return JSON.stringify({ schema_version: 1, entries: entries.map((e) => ({ ...e, platform: 'linux/amd64', kernel_ref: KERNEL })) }, null, 2)
}

beforeAll(async () => {
  ensureBuilt()
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-catalog-it-'))
  builderEnv = await freshEnv('builder')
  await addKernel(builderEnv.BALE_DATA_DIR as string, KERNEL)
  const demo = await pushImage(work, regs.plain, 'catalog/demo:1.0', [
    {
      layers: [filesLayer({ 'etc/motd': 'demo bundle\n', 'bin/tool': pseudoRandom('tool', 256 * 1024) }, 'gzip'), filesLayer({ 'etc/second': 'layer 2\n' }, 'zstd')],
      config: { Entrypoint: ['/bin/tool'], Env: ['A=1'] },
    },
  ])
  const tiny = await pushImage(work, regs.plain, 'catalog/tiny:2', [{ layers: [filesLayer({ 'hello.txt': 'tiny\n' }, 'none')] }])
  // Large and incompressible, so copying it takes long enough to interrupt a publish mid-way.
  const big = await pushImage(work, regs.plain, 'catalog/big:1', [{ layers: [filesLayer({ 'blob.bin': pseudoRandom('big', 96 * 1024 * 1024) }, 'none')] }])
  sources.demo = `${regs.plain}/catalog/demo@${demo.manifestDigests[0]}`
  sources.tiny = `${regs.plain}/catalog/tiny:2@${tiny.manifestDigests[0]}`
  sources.big = `${regs.plain}/catalog/big@${big.manifestDigests[0]}`
  catalogFile = path.join(work, 'catalog.json')
  await fs.writeFile(
    catalogFile,
    catalogJson([
      { name: 'demo', version: '1.0', source: sources.demo, description: 'demo image' },
      { name: 'tiny', version: '2', source: sources.tiny, description: 'tiny image' },
      { name: 'big', version: '1', source: sources.big, description: 'a large incompressible image' },
    ]),
  )
  buildDir = path.join(work, 'build')
  publishDir = path.join(work, 'published')
  server = await serveDirectory(publishDir)
  second = await startRegistry(path.join(work, 'second-registry'))
})

afterAll(async () => {
  await server?.close()
  await second?.stop()
  if (work) await fs.rm(work, { recursive: true, force: true })
})

interface BuildJson {
  built: number
  cached: number
  entries: Array<{ name: string; version: string; status: string; path: string; sha256: string; size: number; integrity: string }>
}

describe('catalog build', () => {
  it('builds every entry with make-bundle, then rebuilds nothing when the inputs are unchanged', async () => {
    const first = await ok<BuildJson>(['catalog', 'build', '--catalog', catalogFile, '--out', buildDir, '--level', LEVEL], builderEnv)
    expect(first.entries.map((e) => [e.name, e.status])).toEqual([
      ['demo', 'built'],
      ['tiny', 'built'],
      ['big', 'built'],
    ])
    for (const e of first.entries) {
      expect(await sha256File(e.path)).toBe(e.sha256)
      built[e.name] = { sha256: e.sha256, size: e.size, path: e.path }
    }
    const mtimes = await Promise.all(first.entries.map(async (e) => (await fs.stat(e.path)).mtimeMs))

    const again = await ok<BuildJson>(['catalog', 'build', '--catalog', catalogFile, '--out', buildDir, '--level', LEVEL], builderEnv)
    expect(again.built).toBe(0)
    expect(again.cached).toBe(3)
    expect(again.entries.map((e) => e.sha256)).toEqual(first.entries.map((e) => e.sha256))
    expect(await Promise.all(again.entries.map(async (e) => (await fs.stat(e.path)).mtimeMs))).toEqual(mtimes)
  })

  it('a changed input (the zstd level) rebuilds only the entry asked for', async () => {
    const r = await ok<BuildJson>(['catalog', 'build', 'tiny', '--catalog', catalogFile, '--out', path.join(work, 'build-l5'), '--level', '5'], builderEnv)
    expect(r.entries.map((e) => [e.name, e.status])).toEqual([['tiny', 'built']])
    const again = await ok<BuildJson>(['catalog', 'build', 'tiny', '--catalog', catalogFile, '--out', path.join(work, 'build-l5'), '--level', '5'], builderEnv)
    expect(again.entries[0]?.status).toBe('cached')
  })

  it('an unknown entry name fails naming it', async () => {
    const r = await baleJson<{ error: { code: string; message: string } }>(['catalog', 'build', 'nosuch', '--catalog', catalogFile, '--out', buildDir], builderEnv)
    expect(r.code).toBe(6)
    expect(r.json.error.message).toContain("no entry named 'nosuch'")
  })
})

interface DirPublishJson {
  kind: 'dir'
  index_changed: boolean
  bundles: Array<{ name: string; version: string; url: string; status: string }>
  kernels: Array<{ ref: string; status: string }>
}

interface IndexDoc {
  bundles: Array<{ name: string; version: string; url: string; size: number; integrity: string; sha256: string; kernel_ref: string; created: string }>
  kernels: Array<{ ref: string; files: Array<{ name: string; url: string }> }>
}

describe('catalog publish to a directory', () => {
  it('writes bundles, kernels and index.json; publishing again is idempotent', async () => {
    const first = await ok<DirPublishJson>(['catalog', 'publish', 'demo', 'tiny', '--from', buildDir, '--to', publishDir], builderEnv)
    expect(first.bundles.map((b) => b.status)).toEqual(['added', 'added'])
    expect(first.kernels).toEqual([{ ref: KERNEL, status: 'added' }])
    const indexText = await fs.readFile(path.join(publishDir, 'index.json'), 'utf8')
    const index = JSON.parse(indexText) as IndexDoc
    expect(index.bundles.map((b) => `${b.name}@${b.version}`)).toEqual(['demo@1.0', 'tiny@2'])
    for (const b of index.bundles) {
      expect(Object.keys(b)).toEqual(expect.arrayContaining(['name', 'version', 'url', 'size', 'integrity', 'kernel_ref', 'created']))
      expect(b.integrity).toMatch(/^sha512-/)
      expect(b.sha256).toBe(built[b.name]?.sha256)
      expect(await sha256File(path.join(publishDir, b.url))).toBe(b.sha256)
    }
    expect(index.kernels[0]?.files.map((f) => f.name)).toEqual(['initramfs.cpio.gz', 'kernel.json', 'vmlinux'])

    const stat = await fs.stat(path.join(publishDir, 'index.json'))
    const again = await ok<DirPublishJson>(['catalog', 'publish', 'demo', 'tiny', '--from', buildDir, '--to', publishDir], builderEnv)
    expect(again.index_changed).toBe(false)
    expect(again.bundles.map((b) => b.status)).toEqual(['unchanged', 'unchanged'])
    expect(await fs.readFile(path.join(publishDir, 'index.json'), 'utf8')).toBe(indexText)
    expect((await fs.stat(path.join(publishDir, 'index.json'))).mtimeMs).toBe(stat.mtimeMs)
  })

  it('an interrupted publish (SIGKILL mid-copy) leaves the index as it was; the next publish completes', async () => {
    const before = await fs.readFile(path.join(publishDir, 'index.json'), 'utf8')
    const bigDir = path.join(publishDir, 'bundles', 'big')
    await fs.mkdir(bigDir, { recursive: true })
    let sawTemp = ''
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'catalog', 'publish', 'big', '--from', buildDir, '--to', publishDir], {
      env: { ...process.env, ...builderEnv },
      stdio: 'ignore',
    })
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_c, sig) => resolve(sig)))
    const watcher = watch(bigDir, (_event, name) => {
      if (sawTemp === '' && name !== null && /\.tmp-/.test(String(name))) {
        sawTemp = String(name)
        child.kill('SIGKILL')
      }
    })
    const sig = await exited
    watcher.close()
    expect(sawTemp, 'the publish was killed while copying (a temp file existed)').not.toBe('')
    expect(sig).toBe('SIGKILL')
    expect(await fs.readFile(path.join(publishDir, 'index.json'), 'utf8')).toBe(before)
    expect(await fs.readdir(bigDir)).toEqual([sawTemp])

    const done = await ok<DirPublishJson>(['catalog', 'publish', 'big', '--from', buildDir, '--to', publishDir], builderEnv)
    expect(done.bundles[0]?.status).toBe('added')
    expect(await fs.readdir(bigDir)).toEqual(['big-1.bundle.tar.zst'])
    const index = JSON.parse(await fs.readFile(path.join(publishDir, 'index.json'), 'utf8')) as IndexDoc
    expect(index.bundles.map((b) => b.name)).toEqual(['big', 'demo', 'tiny'])
  })
})

interface FetchJson {
  name: string
  version: string
  status: string
  install: string
  path: string
  sha256: string
  resumed_from: number
  reproduced?: boolean
  kernel: { ref: string; status: string }
}

describe('bale fetch from a directory over HTTP', () => {
  it('downloads, verifies and installs the bundle and its kernel; a second fetch downloads nothing', async () => {
    const env = await freshEnv('fetch')
    server.requests.length = 0
    const r = await ok<FetchJson>(['fetch', 'demo', '--catalog', `${server.url}/`], env)
    expect(r).toMatchObject({ name: 'demo', version: '1.0', status: 'downloaded', install: 'installed', sha256: built.demo?.sha256, kernel: { ref: KERNEL, status: 'installed' } })
    expect(await sha256File(r.path)).toBe(built.demo?.sha256)
    expect(await resolveInstalled('demo', env)).toBe(r.path)
    expect(await resolveInstalled('demo@1.0', env)).toBe(r.path)

    server.requests.length = 0
    const again = await ok<FetchJson>(['fetch', 'demo@1.0', '--catalog', `${server.url}/index.json`], env)
    expect(again).toMatchObject({ status: 'cached', install: 'unchanged', kernel: { status: 'present' } })
    expect(server.requests.map((q) => q.path)).toEqual(['/index.json'])
  })

  it('resumes a download cut mid-body with a Range request', async () => {
    const env = await freshEnv('resume')
    const url = '/bundles/demo/demo-1.0.bundle.tar.zst'
    server.faults.set(url, { cutAfter: 100_000 })
    server.requests.length = 0
    const r = await ok<FetchJson>(['fetch', 'demo', '--catalog', server.url, '--no-kernel'], env)
    expect(r.sha256).toBe(built.demo?.sha256)
    const gets = server.requests.filter((q) => q.path === url)
    expect(gets.map((q) => q.range ?? null)).toEqual([null, 'bytes=100000-'])
    expect(gets[1]?.status).toBe(206)
  })

  it('resumes a partial file an earlier run left, from where it stopped', async () => {
    const env = await freshEnv('resume-run')
    const sha = built.demo?.sha256 as string
    const downloads = path.join(env.BALE_CACHE_DIR as string, 'downloads')
    await fs.mkdir(downloads, { recursive: true })
    const whole = await fs.readFile(built.demo?.path as string)
    await fs.writeFile(path.join(downloads, `${sha}.partial`), whole.subarray(0, 12345))
    server.requests.length = 0
    const r = await ok<FetchJson>(['fetch', 'demo', '--catalog', server.url, '--no-kernel'], env)
    expect(r.resumed_from).toBe(12345)
    expect(server.requests.filter((q) => q.path.startsWith('/bundles/')).map((q) => q.range)).toEqual(['bytes=12345-'])
    expect(await sha256File(r.path)).toBe(sha)
  })

  it('a bundle that does not match its integrity is deleted and the fetch fails naming the entry', async () => {
    const env = await freshEnv('tampered')
    const served = path.join(publishDir, 'bundles', 'tiny', 'tiny-2.bundle.tar.zst')
    const original = await fs.readFile(served)
    const bad = Buffer.from(original)
    bad[bad.length >> 1] = (bad[bad.length >> 1] as number) ^ 0xff
    await fs.writeFile(served, bad)
    try {
      const r = await baleJson<{ error: { code: string; message: string } }>(['fetch', 'tiny', '--catalog', server.url], env)
      expect(r.code).toBe(4)
      expect(r.json.error.code).toBe('E_DIGEST')
      expect(r.json.error.message).toMatch(/^tiny@2 \(.*\): expected sha512-.* got sha512-.* \(download deleted\)$/)
      expect(await fs.readdir(path.join(env.BALE_CACHE_DIR as string, 'downloads'))).toEqual([])
      await expect(resolveInstalled('tiny', env)).rejects.toThrow('not installed')
    } finally {
      await fs.writeFile(served, original)
    }
  })
})

interface OciPublishJson {
  kind: 'oci'
  bundles: Array<{ name: string; version: string; reference: string; digest: string; status: string }>
  kernels: Array<{ ref: string; reference: string; digest: string; status: string }>
}

describe('OCI artifacts', () => {
  it('publishes bundles and kernels as OCI artifacts; publishing again pushes nothing', async () => {
    const first = await ok<OciPublishJson>(['catalog', 'publish', 'demo', 'tiny', '--from', buildDir, '--to', `oci://${regs.plain}/bale`], builderEnv)
    expect(first.bundles.map((b) => [b.reference, b.status])).toEqual([
      [`${regs.plain}/bale/demo:1.0`, 'added'],
      [`${regs.plain}/bale/tiny:2`, 'added'],
    ])
    expect(first.kernels.map((k) => [k.reference, k.status])).toEqual([[`${regs.plain}/bale/kernels:${KERNEL}`, 'added']])
    const { stdout } = await execFileP('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${regs.plain}/bale/demo:1.0`])
    const m = JSON.parse(stdout) as { artifactType: string; config: { mediaType: string }; layers: Array<{ mediaType: string }> }
    expect(m.artifactType).toBe('application/vnd.bale.bundle.v1')
    expect(m.config.mediaType).toBe('application/vnd.bale.bundle.manifest.v1+json')
    expect(m.layers.map((l) => l.mediaType)).toEqual(['application/vnd.bale.rootfs.ext4.v1+zstd'])

    const again = await ok<OciPublishJson>(['catalog', 'publish', 'demo', 'tiny', '--from', buildDir, '--to', `oci://${regs.plain}/bale`], builderEnv)
    expect([...again.bundles, ...again.kernels].map((b) => b.status)).toEqual(['unchanged', 'unchanged', 'unchanged'])
    expect(again.bundles.map((b) => b.digest)).toEqual(first.bundles.map((b) => b.digest))
  })

  it('latest follows the newest version: publishing an older version afterwards does not move it back', async () => {
    const oldCatalog = path.join(work, 'catalog-old.json')
    await fs.writeFile(oldCatalog, catalogJson([{ name: 'demo', version: '0.9', source: sources.demo as string, description: 'an older demo' }]))
    const oldBuild = path.join(work, 'build-old')
    await ok<BuildJson>(['catalog', 'build', '--catalog', oldCatalog, '--out', oldBuild, '--level', LEVEL], builderEnv)
    const target = `oci://${regs.plain}/latest-guard`
    await ok<OciPublishJson>(['catalog', 'publish', 'demo', '--from', buildDir, '--to', target, '--no-kernels'], builderEnv)
    const r = await ok<OciPublishJson>(['catalog', 'publish', 'demo', '--from', oldBuild, '--to', target, '--no-kernels'], builderEnv)
    expect(r.bundles[0]?.status).toBe('added')
    const latest = async (): Promise<string | undefined> => {
      const { stdout } = await execFileP('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${regs.plain}/latest-guard/demo:latest`])
      return (JSON.parse(stdout) as { annotations?: Record<string, string> }).annotations?.['org.opencontainers.image.version']
    }
    expect(await latest()).toBe('1.0')
    const env = await freshEnv('latest')
    expect((await ok<FetchJson>(['fetch', 'demo', '--catalog', target, '--no-kernel'], env)).version).toBe('1.0')
  })

  it('skopeo copy moves an artifact to a second registry and bale fetch rebuilds the identical bundle from there', async () => {
    for (const repo of [`bale/demo:1.0`, `bale/kernels:${KERNEL}`]) {
      await execFileP('skopeo', ['copy', '--quiet', '--src-tls-verify=false', '--dest-tls-verify=false', '--preserve-digests', `docker://${regs.plain}/${repo}`, `docker://${second.address}/mirror/${repo.slice('bale/'.length)}`])
    }
    const env = await freshEnv('oci-fetch')
    const r = await ok<FetchJson>(['fetch', 'demo@1.0', '--catalog', `oci://${second.address}/mirror`], env)
    expect(r).toMatchObject({ status: 'downloaded', install: 'installed', reproduced: true, sha256: built.demo?.sha256, kernel: { status: 'installed' } })
    expect(await sha256File(r.path)).toBe(built.demo?.sha256)
    const kernelFile = path.join(env.BALE_DATA_DIR as string, 'kernels', KERNEL, 'vmlinux')
    expect(await sha256File(kernelFile)).toBe(await sha256File(path.join(builderEnv.BALE_DATA_DIR as string, 'kernels', KERNEL, 'vmlinux')))

    // Only tag 1.0 was copied, so the version is named (a versionless fetch follows :latest).
    const again = await ok<FetchJson>(['fetch', 'demo@1.0', '--catalog', `oci://${second.address}/mirror`], env)
    expect(again.status).toBe('cached')
  })

  it('skopeo copies an artifact to an OCI layout unchanged', async () => {
    const layout = path.join(work, 'oci-layout-copy')
    await execFileP('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${regs.plain}/bale/tiny:2`, `oci:${layout}:tiny`])
    const index = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> }
    const { stdout } = await execFileP('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${regs.plain}/bale/tiny:2`])
    expect(index.manifests[0]?.digest).toBe(`sha256:${createHash('sha256').update(stdout).digest('hex')}`)
  })

  it('pushes through basic and token auth with credentials', async () => {
    const creds = `${regs.user}:${regs.password}`
    for (const reg of [regs.basic, regs.token]) {
      const r = await ok<OciPublishJson>(['catalog', 'publish', 'tiny', '--from', buildDir, '--to', `oci://${reg}/auth`, '--no-kernels', '--creds', creds], builderEnv)
      expect(r.bundles[0]?.status).toBe('added')
      const env = await freshEnv('auth-fetch')
      const f = await ok<FetchJson>(['fetch', 'tiny', '--catalog', `oci://${reg}/auth`, '--creds', creds, '--no-kernel'], env)
      expect(f.sha256).toBe(built.tiny?.sha256)
    }
    const denied = await baleJson<{ error: { code: string } }>(['catalog', 'publish', 'tiny', '--from', buildDir, '--to', `oci://${regs.basic}/auth`, '--no-kernels'], {
      ...builderEnv,
      BALE_REGISTRY_CREDS: '',
      DOCKER_CONFIG: work,
    })
    expect(denied.json.error.code).toBe('E_AUTH')
  })

  it('uploads a large blob in PATCH chunks that the registry reassembles', async () => {
    const ref = parseReference(`${regs.plain}/bale/chunked:1`)
    const data = randomBytes(2_500_000)
    const file = path.join(work, 'chunked.bin')
    await fs.writeFile(file, data)
    const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`
    const pusher = new RegistryPusher(ref, { chunkSize: 1024 * 1024 })
    try {
      expect(await pusher.pushBlob({ digest, size: data.length }, { path: file })).toBe('uploaded')
      expect(await pusher.pushBlob({ digest, size: data.length }, { path: file })).toBe('exists')
    } finally {
      await pusher.close()
    }
    const res = await fetch(`http://${regs.plain}/v2/bale/chunked/blobs/${digest}`)
    expect(createHash('sha256').update(Buffer.from(await res.arrayBuffer())).digest('hex')).toBe(digest.slice(7))
  })
})

interface MirrorJson {
  sha256sums: string
  bundles: Array<{ name: string; status: string }>
  kernels: Array<{ ref: string; status: string }>
}

interface InstallJson {
  bundles: Array<{ name: string; version: string; path: string; sha256: string; status: string }>
  kernels: Array<{ ref: string; status: string }>
}

function unshareBale(args: string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('unshare', ['-n', '--', process.execPath, path.join(ROOT, 'bin', 'run.js'), ...args], { cwd: ROOT, env: { ...process.env, CI: 'true', ...env } })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (b: Buffer) => out.push(b))
    child.stderr.on('data', (b: Buffer) => err.push(b))
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }))
  })
}

describe('air-gapped mirror and install', () => {
  let mirror: string
  let sums: string

  it('mirror writes bundles, kernels, index and a SHA256SUMS that sha256sum -c accepts', async () => {
    mirror = path.join(work, 'mirror')
    const r = await ok<MirrorJson>(['catalog', 'mirror', 'demo', 'tiny', '--from', buildDir, '--to', mirror], builderEnv)
    sums = r.sha256sums
    expect(r.kernels).toEqual([{ ref: KERNEL, status: 'added' }])
    const { stdout } = await execFileP('sha256sum', ['-c', 'SHA256SUMS'], { cwd: mirror })
    const checked = stdout.trim().split('\n')
    expect(checked).toHaveLength(6) // 2 bundles, 3 kernel files, index.json
    for (const line of checked) expect(line).toMatch(/: OK$/)
    expect(await sha256File(path.join(mirror, 'SHA256SUMS'))).toBe(sums)
    const again = await ok<MirrorJson>(['catalog', 'mirror', 'demo', 'tiny', '--from', buildDir, '--to', mirror], builderEnv)
    expect(again.sha256sums).toBe(sums)
  })

  it('install inside unshare -n (no network) verifies and installs bundles and kernel', async () => {
    const env = await freshEnv('airgap')
    const r = await unshareBale(['install', '--from', mirror, 'demo', 'tiny@2', '--sha256sums', sums, '--json'], env)
    expect(r.code, r.stdout + r.stderr).toBe(0)
    const res = JSON.parse(r.stdout) as InstallJson
    expect(res.bundles.map((b) => [b.name, b.status])).toEqual([
      ['demo', 'installed'],
      ['tiny', 'installed'],
    ])
    expect(res.kernels).toEqual([{ ref: KERNEL, status: 'installed' }])
    expect(await resolveInstalled('demo', env)).toBe(res.bundles[0]?.path)
    expect(await sha256File(res.bundles[0]?.path as string)).toBe(built.demo?.sha256)
    const again = JSON.parse((await unshareBale(['install', '--from', mirror, 'demo', '--json'], env)).stdout) as InstallJson
    expect(again.bundles[0]?.status).toBe('unchanged')
    expect(again.kernels[0]?.status).toBe('unchanged')
  })

  it('unshare -n really isolates: the test HTTP server is unreachable from inside', async () => {
    const r = await new Promise<number | null>((resolve) => {
      const c = spawn('unshare', ['-n', '--', process.execPath, '-e', `require('net').connect(${server.port}, '127.0.0.1').on('error', () => process.exit(3)).on('connect', () => process.exit(0))`])
      c.on('close', (code) => resolve(code))
    })
    expect(r).toBe(3)
  })

  for (const [what, file] of [
    ['a bundle', 'bundles/demo/demo-1.0.bundle.tar.zst'],
    ['a kernel file', `kernels/${KERNEL}/vmlinux`],
    ['index.json', 'index.json'],
  ] as const) {
    it(`refuses a mirror in which ${what} was tampered with, installing nothing`, async () => {
      const copy = path.join(work, `tampered-${randomBytes(3).toString('hex')}`)
      await fs.cp(mirror, copy, { recursive: true })
      const target = path.join(copy, file)
      const data = await fs.readFile(target)
      data[data.length - 2] = (data[data.length - 2] as number) ^ 0x01
      await fs.writeFile(target, data)
      const env = await freshEnv('tampered-install')
      const r = await unshareBale(['install', '--from', copy, 'demo', '--json'], env)
      expect(r.code).toBe(4)
      const err = (JSON.parse(r.stdout) as { error: { code: string; message: string; subject: string } }).error
      expect(err.code).toBe('E_DIGEST')
      expect(err.message).toContain(path.basename(file))
      await expect(resolveInstalled('demo', env)).rejects.toThrow('not installed')
      const kernels = await fs.readdir(path.join(env.BALE_DATA_DIR as string, 'kernels')).catch(() => [] as string[])
      expect(kernels.filter((k) => !k.startsWith('.'))).toEqual([])
    })
  }

  it('refuses a mirror whose SHA256SUMS does not match the pinned sha256', async () => {
    const env = await freshEnv('pin')
    const r = await unshareBale(['install', '--from', mirror, 'demo', '--sha256sums', '0'.repeat(64), '--json'], env)
    expect(r.code).toBe(4)
    expect((JSON.parse(r.stdout) as { error: { message: string } }).error.message).toContain('SHA256SUMS: expected sha256:0000')
  })
})
