/**
 * Real registries for integration tests: the Debian `docker-registry` binary (distribution
 * 2.8) on 127.0.0.1 with a free port and its own storage directory, plain, behind htpasswd
 * basic auth, or behind token auth; images pushed into it with skopeo from OCI layouts the
 * fixtures write. Nothing here fakes the registry.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { openSync, closeSync, promises as fs } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { promisify } from 'node:util'
import { type FixtureImage, type FixtureLayer, MEDIA, type OciLayoutResult, sha256, writeOciLayout } from './oci-layout.js'
import { buildTar, type TarEntry } from './tar.js'

const execFileP = promisify(execFile)

export const REGISTRY_BIN = '/usr/bin/docker-registry'

/** What the integration global setup provides to tests (vitest `inject('registries')`). */
export interface RegistryEnv {
  /** host:port of an open registry. */
  plain: string
  /** host:port of a registry behind htpasswd (bcrypt) basic auth. */
  basic: string
  /** host:port of a registry behind token auth. */
  token: string
  /** Origin of the token server (stats at /stats). */
  tokenServer: string
  /** user and password accepted by the basic-auth registry and the token server. */
  user: string
  password: string
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0
      srv.close(() => resolve(port))
    })
  })
}

export type RegistryAuth =
  | { kind: 'none' }
  | { kind: 'htpasswd'; file: string }
  | { kind: 'token'; realm: string; service: string; issuer: string; rootCertBundle: string }

export interface RegistryProcess {
  /** host:port */
  readonly address: string
  readonly port: number
  readonly dir: string
  stop(): Promise<void>
}

function configYaml(dir: string, port: number, auth: RegistryAuth): string {
  const lines = [
    'version: 0.1',
    'log:',
    '  level: error',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${path.join(dir, 'data')}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    // A fixed secret silences the "No HTTP secret provided" warning; only one instance uses it.
    '  secret: bale-integration-tests',
  ]
  if (auth.kind === 'htpasswd') lines.push('auth:', '  htpasswd:', '    realm: bale-test', `    path: ${auth.file}`)
  if (auth.kind === 'token') {
    lines.push(
      'auth:',
      '  token:',
      `    realm: ${auth.realm}`,
      `    service: ${auth.service}`,
      `    issuer: ${auth.issuer}`,
      `    rootcertbundle: ${auth.rootCertBundle}`,
    )
  }
  return `${lines.join('\n')}\n`
}

const running = new Set<ChildProcess>()
// If the test process dies without teardown, take the registries with it.
process.once('exit', () => {
  for (const c of running) c.kill('SIGKILL')
})

/** Start docker-registry in `dir` and wait until GET /v2/ answers (200 or 401). */
export async function startRegistry(dir: string, auth: RegistryAuth = { kind: 'none' }): Promise<RegistryProcess> {
  await fs.mkdir(dir, { recursive: true })
  // A free port can be taken between our probe and the registry's bind: try a few.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort()
    const config = path.join(dir, 'config.yml')
    await fs.writeFile(config, configYaml(dir, port, auth))
    const logFd = openSync(path.join(dir, 'registry.log'), 'a')
    const child = spawn(REGISTRY_BIN, ['serve', config], { stdio: ['ignore', logFd, logFd] })
    closeSync(logFd)
    running.add(child)
    let exited = false
    child.once('exit', () => {
      exited = true
      running.delete(child)
    })
    const stop = async (): Promise<void> => {
      if (exited) return
      const gone = new Promise<void>((r) => child.once('exit', () => r()))
      child.kill('SIGTERM')
      const t = setTimeout(() => child.kill('SIGKILL'), 3000)
      await gone
      clearTimeout(t)
    }
    const deadline = Date.now() + 15_000
    while (!exited && Date.now() < deadline) {
      const status = await fetch(`http://127.0.0.1:${port}/v2/`).then(
        (r) => r.status,
        () => 0,
      )
      if (status === 200 || status === 401) return { address: `127.0.0.1:${port}`, port, dir, stop }
      await new Promise((r) => setTimeout(r, 50))
    }
    await stop()
    if (attempt >= 3) {
      const log = await fs.readFile(path.join(dir, 'registry.log'), 'utf8').catch(() => '')
      throw new Error(`docker-registry did not start in ${dir}: ${log.split('\n').slice(-5).join(' | ')}`)
    }
  }
}

/** An htpasswd file with a bcrypt entry, as the registry's htpasswd auth requires. */
export async function writeHtpasswd(file: string, user: string, password: string): Promise<void> {
  const { stdout } = await execFileP('htpasswd', ['-Bbn', user, password])
  await fs.writeFile(file, stdout)
}

/**
 * Push an OCI layout's tagged image (all platforms of an index) to `dest` (`host:port/repo:tag`)
 * with skopeo, as a user of bale would have pushed it.
 */
export async function pushLayout(layoutDir: string, layoutTag: string, dest: string, opts: { creds?: string } = {}): Promise<void> {
  const args = ['copy', '--quiet', '--all', '--dest-tls-verify=false', '--preserve-digests']
  if (opts.creds !== undefined) args.push('--dest-creds', opts.creds)
  args.push(`oci:${layoutDir}:${layoutTag}`, `docker://${dest}`)
  await execFileP('skopeo', args)
}

/** Deterministic incompressible bytes (SHA-256 in counter mode), so a layer is as big stored as raw. */
export function pseudoRandom(seed: string, size: number): Buffer {
  const out = Buffer.alloc(size)
  for (let off = 0, i = 0; off < size; i++) {
    const block = createHash('sha256').update(`${seed}:${i}`).digest()
    off += block.copy(out, off)
  }
  return out
}

/** A layer holding `files` (name → content), as a tar compressed as asked. */
export function filesLayer(files: Record<string, string | Buffer>, compression: FixtureLayer['compression']): FixtureLayer {
  const entries: TarEntry[] = Object.entries(files).map(([name, content]) => ({ name, content, mtime: 1_700_000_000 }))
  return { tar: buildTar(entries), compression }
}

export interface PushedImage extends OciLayoutResult {
  /** What to pull: `host:port/repo:tag`. */
  ref: string
  /** Digest of the attestation manifest added to the index, when asked for. */
  attestationDigest?: string
}

const ATTESTATION_ANNOTATIONS = (subject: string): Record<string, string> => ({
  'vnd.docker.reference.type': 'attestation-manifest',
  'vnd.docker.reference.digest': subject,
})

/**
 * Build an OCI layout from `images` in `workDir` and push it to `registry` as `repoTag`.
 * `index: true` pushes a multi-platform image index; `attestation: true` adds, first in that
 * index, a BuildKit-style attestation manifest (platform unknown/unknown, in-toto layer).
 */
export async function pushImage(
  workDir: string,
  registry: string,
  repoTag: string,
  images: FixtureImage[],
  opts: { index?: boolean; attestation?: boolean; creds?: string; lieAboutPlatforms?: Array<FixtureImage['platform']> } = {},
): Promise<PushedImage> {
  const dir = await fs.mkdtemp(path.join(workDir, 'layout-'))
  const res = await writeOciLayout(dir, images, { tag: 'fixture', index: opts.index === true || opts.attestation === true || opts.lieAboutPlatforms !== undefined })
  if (opts.lieAboutPlatforms !== undefined && res.indexDigest !== undefined) {
    // Rewrite the index so that its descriptors claim other platforms than the configs say.
    const indexPath = path.join(dir, 'blobs', 'sha256', res.indexDigest.slice(7))
    const index = JSON.parse(await fs.readFile(indexPath, 'utf8')) as { manifests: Array<{ platform?: unknown }> }
    index.manifests.forEach((m, i) => {
      if (opts.lieAboutPlatforms?.[i] !== undefined) m.platform = opts.lieAboutPlatforms[i]
    })
    const data = Buffer.from(JSON.stringify(index))
    const digest = sha256(data)
    await fs.writeFile(path.join(dir, 'blobs', 'sha256', digest.slice(7)), data)
    await fs.rm(indexPath)
    res.indexDigest = digest
    await fs.writeFile(
      path.join(dir, 'index.json'),
      JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.index, manifests: [{ mediaType: MEDIA.index, digest, size: data.length, annotations: { 'org.opencontainers.image.ref.name': 'fixture' } }] }),
    )
  }
  let attestationDigest: string | undefined
  if (opts.attestation === true && res.indexDigest !== undefined) {
    const blob = async (data: Buffer): Promise<{ digest: string; size: number }> => {
      const digest = sha256(data)
      await fs.writeFile(path.join(dir, 'blobs', 'sha256', digest.slice(7)), data)
      return { digest, size: data.length }
    }
    const statement = await blob(Buffer.from(JSON.stringify({ _type: 'https://in-toto.io/Statement/v0.1', predicateType: 'https://spdx.dev/Document' })))
    const cfg = await blob(Buffer.from(JSON.stringify({ architecture: 'unknown', os: 'unknown', config: {}, rootfs: { type: 'layers', diff_ids: [statement.digest] } })))
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA.manifest,
        config: { mediaType: MEDIA.config, ...cfg },
        layers: [{ mediaType: 'application/vnd.in-toto+json', ...statement, annotations: { 'in-toto.io/predicate-type': 'https://spdx.dev/Document' } }],
      }),
    )
    const att = await blob(manifest)
    attestationDigest = att.digest
    const indexPath = path.join(dir, 'blobs', 'sha256', res.indexDigest.slice(7))
    const index = JSON.parse(await fs.readFile(indexPath, 'utf8')) as { manifests: unknown[] }
    index.manifests.unshift({
      mediaType: MEDIA.manifest,
      ...att,
      platform: { os: 'unknown', architecture: 'unknown' },
      annotations: ATTESTATION_ANNOTATIONS(res.manifestDigests[0] as string),
    })
    const newIndex = await blob(Buffer.from(JSON.stringify(index)))
    await fs.rm(indexPath)
    res.indexDigest = newIndex.digest
    await fs.writeFile(
      path.join(dir, 'index.json'),
      JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.index, manifests: [{ mediaType: MEDIA.index, ...newIndex, annotations: { 'org.opencontainers.image.ref.name': 'fixture' } }] }),
    )
  }
  const ref = `${registry}/${repoTag}`
  await pushLayout(dir, 'fixture', ref, opts.creds === undefined ? {} : { creds: opts.creds })
  return { ...res, ref, ...(attestationDigest === undefined ? {} : { attestationDigest }) }
}
