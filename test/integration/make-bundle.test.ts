/**
 * make-bundle end to end with the real CLI, real e2fsprogs and real layouts: what a user gets
 * from `bale make-bundle`, read back from the ext4 image with debugfs. Builds run unprivileged
 * (uid 65534) as well as root, and must give the same bytes.
 */
import { createHash } from 'node:crypto'
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import ssri from 'ssri'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { bale, checkoutReadableByNobody, ensureBuilt } from '../helpers/cli.js'
import { cat, debugfs, e2fsckClean, stat, xattr } from '../helpers/debugfs.js'
import { writeDockerArchive, writeOciLayout, type FixtureImage } from '../helpers/oci-layout.js'
import { buildTar, type TarEntry } from '../helpers/tar.js'

let work: string
const MTIME = 1_600_000_000
// security.capability for cap_net_bind_service+ep (VFS_CAP_REVISION_2): binary, with NUL bytes.
const CAP = Buffer.from('0100000200040000000000000000000000000000', 'hex')

const layer1: TarEntry[] = [
  { name: 'bin/', type: 'dir', mtime: MTIME },
  { name: 'bin/tool', content: '#!/bin/sh\necho tool\n', mode: 0o4755, mtime: MTIME },
  { name: 'bin/sg', content: 'sg', mode: 0o2755, gid: 50, mtime: MTIME },
  { name: 'bin/ping', content: 'ping', mode: 0o755, mtime: MTIME, pax: { 'SCHILY.xattr.security.capability': CAP, 'SCHILY.xattr.user.note': 'hi there' } },
  { name: 'home/', type: 'dir', mode: 0o755, mtime: MTIME },
  { name: 'home/u/', type: 'dir', mode: 0o700, uid: 1000, gid: 1000, mtime: MTIME },
  { name: 'home/u/notes', content: 'private', mode: 0o640, uid: 1000, gid: 1000, mtime: MTIME + 7 },
  { name: 'locked/', type: 'dir', mode: 0o555, mtime: MTIME },
  { name: 'locked/inside', content: 'x', mode: 0o000, mtime: MTIME },
  { name: 'dev/', type: 'dir', mtime: MTIME },
  { name: 'dev/null', type: 'char', mode: 0o666, devmajor: 1, devminor: 3, mtime: MTIME },
  { name: 'dev/sda', type: 'block', mode: 0o660, gid: 6, devmajor: 8, devminor: 0, mtime: MTIME },
  { name: 'run/', type: 'dir', mtime: MTIME },
  { name: 'run/fifo', type: 'fifo', mode: 0o600, mtime: MTIME },
  { name: 'etc/', type: 'dir', mtime: MTIME },
  { name: 'etc/os-release', content: 'ID=fixture\nVERSION_ID="7"\n', mtime: MTIME },
  { name: 'etc/a', content: 'shared inode', mtime: MTIME },
  { name: 'etc/b', type: 'link', linkname: 'etc/a', mtime: MTIME },
  { name: 'etc/c', type: 'link', linkname: 'etc/a', mtime: MTIME },
  { name: 'etc/link', type: 'symlink', linkname: '../bin/tool', mtime: MTIME },
  { name: `etc/${'long-target-'.repeat(8)}`, type: 'symlink', linkname: `/${'x'.repeat(100)}`, mtime: MTIME },
  { name: 'etc/with space "quoted"', content: 'odd name', mtime: MTIME },
  { name: 'etc/<2>', content: 'not inode 2', mtime: MTIME },
  { name: 'gone/', type: 'dir', mtime: MTIME },
  { name: 'gone/old', content: 'lower', mtime: MTIME },
  { name: 'opaque/', type: 'dir', mtime: MTIME },
  { name: 'opaque/lower', content: 'lower', mtime: MTIME },
  { name: 'replace', content: 'v1', mtime: MTIME },
]
const layer2: TarEntry[] = [
  { name: 'gone/.wh.old', content: '' },
  { name: 'opaque/', type: 'dir', mtime: MTIME },
  { name: 'opaque/.wh..wh..opq', content: '' },
  { name: 'opaque/upper', content: 'upper', mtime: MTIME },
  { name: 'replace', content: 'v2 longer', mode: 0o600, mtime: MTIME + 1 },
  { name: 'etc/.wh.a', content: '' }, // etc/b and etc/c keep the inode and its content
]
const layer3: TarEntry[] = [{ name: 'usr/', type: 'dir', mtime: MTIME }, { name: 'usr/hello', content: 'from layer 3\n', mtime: MTIME }]

const image: FixtureImage = {
  layers: [
    { tar: buildTar(layer1), compression: 'gzip' },
    { tar: buildTar(layer2), compression: 'zstd' },
    { tar: buildTar(layer3), compression: 'none' },
  ],
  config: { Entrypoint: ['/usr/hello'], Cmd: ['--flag'], Env: ['PATH=/bin', 'A=1'], WorkingDir: '/home', User: '1000:1000', ExposedPorts: { '8080/tcp': {} } },
}

/** A fresh directory uid 65534 may write, for unprivileged builds (TMPDIR and --out live there). */
function nobodyDir(name: string): string {
  const d = path.join(work, name)
  rmSync(d, { recursive: true, force: true })
  mkdirSync(d)
  chownSync(d, 65534, 65534)
  return d
}

function sha256(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex')
}

/** Unpack with the CLI and return the rootfs path. */
async function unpack(bundle: string): Promise<string> {
  const dir = mkdtempSync(path.join(work, 'unpack-'))
  const r = await bale(['bundle', 'unpack', bundle, dir])
  expect(r.stderr).toBe('')
  expect(r.code).toBe(0)
  return path.join(dir, 'rootfs.ext4')
}

let layoutDir: string
let layout: Awaited<ReturnType<typeof writeOciLayout>>

beforeAll(async () => {
  ensureBuilt()
  work = mkdtempSync(path.join(os.tmpdir(), 'bale-mb-'))
  chmodSync(work, 0o755)
  expect(checkoutReadableByNobody()).toBe(true)
  layoutDir = path.join(work, 'layout')
  layout = await writeOciLayout(layoutDir, [image], { tag: 'v1' })
  worldReadable(layoutDir)
})
afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true })
})

function worldReadable(dir: string): void {
  // The layout is read by the unprivileged build: make it world-readable.
  for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    chmodSync(path.join(e.parentPath, e.name), e.isDirectory() ? 0o755 : 0o644)
  }
  chmodSync(dir, 0o755)
}

describe('make-bundle from a multi-layer OCI layout', () => {
  let bundle: string
  let rootfs: string
  let stdout: string[]

  beforeAll(async () => {
    const dir = nobodyDir('unpriv')
    bundle = path.join(dir, 'fixture.tar.zst')
    const r = await bale(['make-bundle', '--oci-layout', `${layoutDir}:v1`, '--out', bundle, '--name', 'fixture', '--version', '1.0.0', '--quiet'], {
      unprivileged: true,
      env: { TMPDIR: dir, HOME: dir },
    })
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    stdout = r.stdout.trim().split('\n')
    rootfs = await unpack(bundle)
  })

  it('prints path, sha256 and size, one per line, and leaves only the bundle behind', () => {
    expect(stdout).toEqual([bundle, sha256(bundle), String(readFileSync(bundle).length)])
    expect(readdirSync(path.dirname(bundle))).toEqual(['fixture.tar.zst'])
  })

  it('keeps owners, modes incl. setuid/setgid, and mtimes — built without root', () => {
    expect(stat(rootfs, '/bin/tool')).toMatchObject({ type: 'regular', mode: 0o4755, uid: 0, gid: 0, mtime: MTIME })
    expect(stat(rootfs, '/bin/sg')).toMatchObject({ mode: 0o2755, gid: 50 })
    expect(stat(rootfs, '/home/u')).toMatchObject({ type: 'directory', mode: 0o700, uid: 1000, gid: 1000 })
    expect(stat(rootfs, '/home/u/notes')).toMatchObject({ mode: 0o640, uid: 1000, gid: 1000, mtime: MTIME + 7 })
    expect(stat(rootfs, '/locked')).toMatchObject({ type: 'directory', mode: 0o555 })
    expect(stat(rootfs, '/locked/inside')).toMatchObject({ mode: 0o000 })
    expect(cat(rootfs, '/home/u/notes').toString()).toBe('private')
  })

  it('creates devices and fifos with their numbers', () => {
    expect(stat(rootfs, '/dev/null')).toMatchObject({ type: 'character', mode: 0o666, device: [1, 3] })
    expect(stat(rootfs, '/dev/sda')).toMatchObject({ type: 'block', mode: 0o660, gid: 6, device: [8, 0] })
    expect(stat(rootfs, '/run/fifo')).toMatchObject({ type: 'FIFO', mode: 0o600 })
  })

  it('keeps binary and text xattrs', () => {
    expect(xattr(rootfs, '/bin/ping', 'security.capability', path.join(work, 'xa1'))).toEqual(CAP)
    expect(xattr(rootfs, '/bin/ping', 'user.note', path.join(work, 'xa2')).toString()).toBe('hi there')
  })

  it('keeps hard links as one inode that survives its first name being whited out', () => {
    expect(existsInImage(rootfs, '/etc/a')).toBe(false)
    expect(stat(rootfs, '/etc/b').links).toBe(2)
    expect(cat(rootfs, '/etc/c').toString()).toBe('shared inode')
    expect(inodeOf(rootfs, '/etc/b')).toBe(inodeOf(rootfs, '/etc/c'))
  })

  it('keeps symlink targets, short and long', () => {
    expect(stat(rootfs, '/etc/link').fastLinkTarget).toBe('../bin/tool')
    const long = `/etc/${'long-target-'.repeat(8)}`
    expect(stat(rootfs, long).type).toBe('symlink')
    expect(cat(rootfs, long).toString()).toBe(`/${'x'.repeat(100)}`)
  })

  it('handles names with spaces, quotes and <2>', () => {
    expect(cat(rootfs, '/etc/with space "quoted"').toString()).toBe('odd name')
    expect(cat(rootfs, '/etc/<2>').toString()).toBe('not inode 2')
  })

  it('applies whiteouts, opaque directories and replacements across layers', () => {
    expect(existsInImage(rootfs, '/gone/old')).toBe(false)
    expect(existsInImage(rootfs, '/gone')).toBe(true)
    expect(existsInImage(rootfs, '/opaque/lower')).toBe(false)
    expect(cat(rootfs, '/opaque/upper').toString()).toBe('upper')
    expect(cat(rootfs, '/replace').toString()).toBe('v2 longer')
    expect(stat(rootfs, '/replace')).toMatchObject({ mode: 0o600, mtime: MTIME + 1 })
    expect(cat(rootfs, '/usr/hello').toString()).toBe('from layer 3\n')
  })

  it('injects the guest init and config root-owned, and passes e2fsck', () => {
    expect(stat(rootfs, '/.bale/init')).toMatchObject({ type: 'regular', mode: 0o755, uid: 0, gid: 0 })
    expect(stat(rootfs, '/.bale/config.json')).toMatchObject({ mode: 0o644, uid: 0, gid: 0 })
    expect(JSON.parse(cat(rootfs, '/.bale/config.json').toString())).toMatchObject({
      entrypoint: ['/usr/hello'], cmd: ['--flag'], env: ['PATH=/bin', 'A=1'], user: '1000:1000', workdir: '/home',
    })
    e2fsckClean(rootfs)
  })

  it('records the source, config, rootfs and agent in the manifest', async () => {
    const r = await bale(['bundle', 'inspect', bundle, '--json'])
    expect(r.code).toBe(0)
    const m = JSON.parse(r.stdout)
    expect(m).toMatchObject({
      schema_version: 1, name: 'fixture', version: '1.0.0', distro: 'fixture-7', arch: 'amd64', kernel_ref: 'default',
      source: { manifest_digest: layout.manifestDigests[0], config_digest: layout.configDigests[0] },
      config: { entrypoint: ['/usr/hello'], workdir: '/home', user: '1000:1000', exposed_ports: ['8080/tcp'] },
      rootfs: { file: 'rootfs.ext4', sha256: sha256(rootfs), size: readFileSync(rootfs).length },
    })
    expect(m.source.layers.map((l: { diff_id: string }) => l.diff_id)).toEqual(layout.diffIds[0])
    expect(m.source.layers.map((l: { digest: string }) => l.digest)).toEqual(layout.layerDigests[0])
    expect(m.agent.sha256).toBe(sha256(path.join(import.meta.dirname, '..', '..', 'guest', 'out', 'bale-init')))
  })

  it('passes bundle verify', async () => {
    const r = await bale(['bundle', 'verify', bundle])
    expect(r.code).toBe(0)
  })

  it('is reproducible: root and unprivileged builds give the same bytes; --json carries an ssri integrity', async () => {
    const out = path.join(work, 'root-build.tar.zst')
    const r = await bale(['make-bundle', '--oci-layout', `${layoutDir}:v1`, '--out', out, '--name', 'fixture', '--version', '1.0.0', '--json'])
    expect(r.code).toBe(0)
    const j = JSON.parse(r.stdout)
    expect(Object.keys(j).sort()).toEqual(['integrity', 'path', 'sha256', 'size'])
    expect(j.sha256).toBe(sha256(bundle))
    expect(sha256(out)).toBe(sha256(bundle))
    expect(ssri.checkData(readFileSync(out), j.integrity)).toBeTruthy()
  })
})

function existsInImage(image: string, p: string): boolean {
  try {
    stat(image, p)
    return true
  } catch {
    return false
  }
}
function inodeOf(image: string, p: string): number {
  const out = debugfs(image, `stat "${p}"`)
  return Number(/Inode: (\d+)/.exec(out)?.[1])
}

describe('make-bundle from other sources', () => {
  it('reads a gzip rootfs tar from stdin', async () => {
    const { gzipSync } = await import('node:zlib')
    const tar = gzipSync(buildTar([{ name: './', type: 'dir', mtime: MTIME }, { name: './bin/', type: 'dir', mtime: MTIME }, { name: './bin/sh', content: 'sh', mode: 0o755, mtime: MTIME }]))
    const out = path.join(work, 'stdin.tar.zst')
    const r = await bale(['make-bundle', '--rootfs-tar', '-', '--out', out, '--name', 'plain', '--quiet'], { input: tar })
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const rootfs = await unpack(out)
    expect(stat(rootfs, '/bin/sh')).toMatchObject({ mode: 0o755, mtime: MTIME })
    const m = JSON.parse((await bale(['bundle', 'inspect', out, '--json'])).stdout)
    expect(m.created).toBe(new Date(MTIME * 1000).toISOString())
  })

  it('reads a docker save archive', async () => {
    const file = path.join(work, 'saved.tar')
    await writeDockerArchive(file, image)
    const out = path.join(work, 'docker.tar.zst')
    const r = await bale(['make-bundle', '--docker-archive', file, '--out', out, '--quiet'])
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    expect(cat(await unpack(out), '/etc/b').toString()).toBe('shared inode')
  })
})

describe('make-bundle refuses bad input with one clear line and no output', () => {
  /** Copy the good layout and let the test damage it. */
  function damagedLayout(name: string, damage: (dir: string) => void): string {
    const dir = path.join(work, name)
    cpSync(layoutDir, dir, { recursive: true })
    damage(dir)
    return dir
  }
  const blob = (dir: string, digest: string): string => path.join(dir, 'blobs', 'sha256', digest.slice(7))

  async function expectRefused(args: string[], exitCode: number, message: RegExp): Promise<void> {
    const tmp = nobodyDir(`refused-${Math.random().toString(36).slice(2)}`)
    const out = path.join(tmp, 'out.tar.zst')
    const r = await bale(['make-bundle', ...args, '--out', out], { env: { TMPDIR: tmp } })
    expect(r.code).toBe(exitCode)
    const lines = r.stderr.trim().split('\n')
    expect(lines.filter((l) => !l.startsWith('resolved ') && !l.startsWith('layer '))).toHaveLength(1)
    expect(r.stderr).toMatch(message)
    expect(r.stderr).not.toMatch(/\n\s+at /) // no stack trace
    expect(readdirSync(tmp)).toEqual([]) // no bundle, no temp file, no staging
  }

  it('a corrupt layer blob, naming its digest', async () => {
    const d = layout.layerDigests[0]![1]!
    const dir = damagedLayout('corrupt', (x) => {
      const f = blob(x, d)
      const b = readFileSync(f)
      b[b.length - 20] = b[b.length - 20]! ^ 0xff
      writeFileSync(f, b)
    })
    await expectRefused(['--oci-layout', `${dir}:v1`], 4, new RegExp(d.slice(0, 20)))
  })

  it('a truncated layer blob', async () => {
    const d = layout.layerDigests[0]![0]!
    const dir = damagedLayout('truncated', (x) => truncateSync(blob(x, d), 100))
    await expectRefused(['--oci-layout', `${dir}:v1`], 4, new RegExp(d.slice(0, 20)))
  })

  it('a layer whose content does not match its diff_id', async () => {
    // Same bytes in a new layout whose config lists a different diff_id for layer 3.
    const dir = path.join(work, 'wrong-diffid')
    const bad = await writeOciLayout(dir, [{ ...image, layers: [image.layers[0]!, image.layers[1]!, { tar: buildTar(layer3), compression: 'none' }] }], { tag: 'v1' })
    const cfgPath = blob(dir, bad.configDigests[0]!)
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'))
    cfg.rootfs.diff_ids[2] = `sha256:${'0'.repeat(64)}`
    const cfgBuf = Buffer.from(JSON.stringify(cfg))
    const cfgDigest = `sha256:${createHash('sha256').update(cfgBuf).digest('hex')}`
    writeFileSync(blob(dir, cfgDigest), cfgBuf)
    const manPath = blob(dir, bad.manifestDigests[0]!)
    const man = JSON.parse(readFileSync(manPath, 'utf8'))
    man.config = { ...man.config, digest: cfgDigest, size: cfgBuf.length }
    const manBuf = Buffer.from(JSON.stringify(man))
    const manDigest = `sha256:${createHash('sha256').update(manBuf).digest('hex')}`
    writeFileSync(blob(dir, manDigest), manBuf)
    const index = JSON.parse(readFileSync(path.join(dir, 'index.json'), 'utf8'))
    index.manifests[0] = { ...index.manifests[0], digest: manDigest, size: manBuf.length }
    writeFileSync(path.join(dir, 'index.json'), JSON.stringify(index))
    await expectRefused(['--oci-layout', `${dir}:v1`], 4, /diff_id|sha256:0{20}/)
  })

  it('a tar that ends in the middle of a file', async () => {
    const full = buildTar([{ name: 'big', content: Buffer.alloc(10_000, 7) }], { endMarker: false })
    const dir = path.join(work, 'short-tar')
    await writeOciLayout(dir, [{ layers: [{ tar: full.subarray(0, 4096), compression: 'gzip' }] }], { tag: 'v1' })
    await expectRefused(['--oci-layout', `${dir}:v1`], 3, /truncated|unexpected end/i)
  })

  it.each([
    ['../escape', /\.\.\/escape|'\.\.'/],
    ['a\nb', /a\\nb|newline/],
  ])('a hostile name %j', async (name, message) => {
    const dir = path.join(work, `hostile-${Buffer.from(name).toString('hex')}`)
    await writeOciLayout(dir, [{ layers: [{ tar: buildTar([{ name, content: 'x' }]), compression: 'none' }] }], { tag: 'v1' })
    await expectRefused(['--oci-layout', `${dir}:v1`], 5, message)
  })

  it('a hostile name in the first of three layers, while the next is being read ahead', async () => {
    const dir = path.join(work, 'hostile-first')
    const many = (tag: string, n: number): TarEntry[] => Array.from({ length: n }, (_, i) => ({ name: `${tag}/f${i}`, content: `${tag} ${i} `.repeat(300) }))
    // The bad name comes last in layer 1, so layer 2 is well under way (on its thread) by then.
    const layers = [buildTar([...many('one', 1500), { name: '../escape', content: 'x' }]), buildTar(many('two', 3000)), buildTar(many('three', 300))]
    await writeOciLayout(dir, [{ layers: layers.map((tar) => ({ tar, compression: 'gzip' as const })) }], { tag: 'v1' })
    // The second layer's reader (and its blob-writing thread) is stopped before staging is removed.
    await expectRefused(['--oci-layout', `${dir}:v1`], 5, /layer 1\/3.*(\.\.\/escape|'\.\.')/)
  })

  it('a symlink-parent escape', async () => {
    const dir = path.join(work, 'symlink-parent')
    const tar = buildTar([{ name: 'etc', type: 'symlink', linkname: '/tmp' }, { name: 'etc/passwd', content: 'owned' }])
    await writeOciLayout(dir, [{ layers: [{ tar, compression: 'none' }] }], { tag: 'v1' })
    await expectRefused(['--oci-layout', `${dir}:v1`], 5, /etc\/passwd/)
  })

  it('an unknown tag and conflicting sources', async () => {
    await expectRefused(['--oci-layout', `${layoutDir}:nope`], 6, /nope/)
    await expectRefused(['--oci-layout', layoutDir, '--rootfs-tar', '-'], 2, /--oci-layout.*--rootfs-tar|exactly one/)
  })
})

describe('make-bundle interrupted', () => {
  it('SIGINT mid-build leaves no output and no staging', async () => {
    const { randomBytes } = await import('node:crypto')
    // ~48 MiB of incompressible data: long enough to interrupt while staging is populated.
    const big: TarEntry[] = Array.from({ length: 12 }, (_, i) => ({ name: `blob${i}`, content: randomBytes(4 << 20) }))
    const dir = path.join(work, 'big')
    await writeOciLayout(dir, [{ layers: [{ tar: buildTar(big), compression: 'gzip' }] }], { tag: 'v1' })
    const tmp = nobodyDir('sigint')
    const out = path.join(tmp, 'out.tar.zst')
    let pid = 0
    const run = bale(['make-bundle', '--oci-layout', `${dir}:v1`, '--out', out], { env: { TMPDIR: tmp }, onSpawn: (p) => (pid = p) })
    const deadline = Date.now() + 60_000
    while (!readdirSync(tmp).some((n) => n.startsWith('bale-staging-')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    process.kill(pid, 'SIGINT')
    const r = await run
    expect(r.signal === 'SIGINT' || r.code === 130).toBe(true)
    expect(r.stderr).toMatch(/interrupted/)
    expect(existsSync(out)).toBe(false)
    expect(readdirSync(tmp)).toEqual([])
  })

  it('SIGINT while two layers of small files are being stored leaves no staging', async () => {
    const files = (tag: string): TarEntry[] => Array.from({ length: 3000 }, (_, i) => ({ name: `${tag}/${i}`, content: `${tag}${i}`.repeat(300) }))
    const dir = path.join(work, 'many')
    await writeOciLayout(dir, [{ layers: [buildTar(files('a')), buildTar(files('b'))].map((tar) => ({ tar, compression: 'gzip' as const })) }], { tag: 'v1' })
    const tmp = nobodyDir('sigint-many')
    const out = path.join(tmp, 'out.tar.zst')
    let pid = 0
    const run = bale(['make-bundle', '--oci-layout', `${dir}:v1`, '--out', out], { env: { TMPDIR: tmp }, onSpawn: (p) => (pid = p) })
    // Files stored so far: a blob each (past a layer's first 64, created by a worker thread), or,
    // where mke2fs reads tars (as in CI), ~1.5 kB each appended to the layer's spool.
    const blobs = (): number => {
      const staging = readdirSync(tmp).find((n) => n.startsWith('bale-staging-'))
      if (staging === undefined) return 0
      const count = (sub: string, f: (name: string) => number): number => {
        try {
          return readdirSync(path.join(tmp, staging, sub)).reduce((n, name) => n + f(name), 0)
        } catch {
          return 0
        }
      }
      const spooled = count('spool', (name) => {
        try {
          return statSync(path.join(tmp, staging, 'spool', name)).size
        } catch {
          return 0
        }
      })
      return count('blobs', () => 1) + Math.floor(spooled / 1500)
    }
    const deadline = Date.now() + 60_000
    while (blobs() < 500 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
    process.kill(pid, 'SIGINT')
    const r = await run
    expect(r.signal === 'SIGINT' || r.code === 130).toBe(true)
    expect(existsSync(out)).toBe(false)
    expect(readdirSync(tmp)).toEqual([])
  })
})
