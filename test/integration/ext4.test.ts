// The ext4 stage against the real e2fsprogs: build images from hand-made trees and read them
// back with debugfs (stat, cat, ea_get, ls), e2fsck, and sha256 for reproducibility.
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { promises as fs, readFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { cat, debugfs, e2fsckClean, stat, xattr } from '../helpers/debugfs.js'
import { BaleError } from '../../src/lib/errors.js'
import { hashOnThread } from '../../src/lib/hash.js'
import { dataRanges } from '../../src/lib/sparse.js'
import { buildExt4, minimumExt4Size, mkfsReadsTar, planExt4, type Ext4Options, type Ext4Plan } from '../../src/pipeline/ext4/index.js'
import { TAR_BATCH_BYTES } from '../../src/pipeline/ext4/tar-input.js'
import { noFsyncPreload } from '../../src/pipeline/ext4/tools.js'
import { type Inode, readContent } from '../../src/pipeline/tree.js'
import { keptBlocks, metadataBlocks } from '../../src/pipeline/ext4/geometry.js'
import { ext4Usage, inodeCount } from '../../src/pipeline/ext4/plan.js'
import { TreeBuilder } from '../unit/ext4/fixture.js'

const OPTS: Ext4Options = {
  uuid: '0b5f4a5e-1c2d-4e3f-8a9b-0c1d2e3f4a5b',
  hashSeed: '6c7d8e9f-0a1b-4c2d-9e3f-4a5b6c7d8e9f',
  timestamp: 1_700_000_000,
  label: 'bale-test',
}

// system.posix_acl_access as the VFS (and tar SCHILY.xattr) carries it: version 2, then
// user::rwx, group::r-x, other::r-x as (tag u16, perm u16, id u32) entries.
const ACL = Buffer.from([2, 0, 0, 0, 1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, 4, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 5, 0, 0xff, 0xff, 0xff, 0xff])
// security.capability v2 (cap_net_raw+ep): magic 0x02000001 little-endian, permitted bit 13, inheritable 0.
const CAP_NET_RAW = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
const BIG = Buffer.alloc(300_000)
for (let i = 0; i < BIG.length; i++) BIG[i] = (i * 7919) % 251
const LONG_TARGET = `../${'very-long-directory-name/'.repeat(4)}target-file`
const DEEP = Array.from({ length: 40 }, (_, i) => `level-${i}`).join('/')
const UNICODE = 'ünïcødé-文件-😀'

let work: string

/** The tree every read-back test looks at: one of each thing the image must carry. */
async function richTree(staging: string): Promise<TreeBuilder> {
  const b = await TreeBuilder.create(staging, { mode: 0o755, mtime: 1_500_000_000 })
  b.dir('etc', { mtime: 1_500_000_001 })
  await b.file('etc/hostname', 'bale\n', { mtime: 1_600_000_001 })
  await b.file('secret', 'mode zero\n', { mode: 0o000 })
  b.dir('ro', { mode: 0o555 })
  await b.file('ro/child.txt', 'in a read-only dir\n')
  b.dir('locked', { mode: 0o000, uid: 1000, gid: 1000 })
  b.dir('locked/inner', { mode: 0o700 })
  await b.file('locked/inner/file', 'behind 0000\n', { mode: 0o600 })
  b.dir('usr')
  b.dir('usr/bin')
  await b.file('usr/bin/su', 'setuid\n', { mode: 0o4755 })
  await b.file('usr/bin/wall', 'setgid\n', { mode: 0o2755, gid: 5 })
  await b.file('usr/bin/ping', 'cap\n', { mode: 0o755, xattrs: { 'security.capability': CAP_NET_RAW } })
  b.dir('tmp', { mode: 0o1777 })
  b.dir('home')
  b.dir('home/user', { uid: 1000, gid: 1000, mode: 0o750 })
  await b.file('home/user/notes', 'mine\n', { uid: 1000, gid: 1000, mtime: 1_234_567_890, xattrs: { 'user.test': 'hello xattr' } })
  await b.file('nobody', 'nobody\n', { uid: 65534, gid: 65534 })
  await b.file('acl-file', 'acl\n', { mode: 0o755, xattrs: { 'system.posix_acl_access': ACL } })
  await b.file('future', 'after 2038\n', { mtime: 4_102_444_800 })
  await b.file('epoch', 'at 0\n', { mtime: 0 })
  b.dir('data')
  const shared = await b.file('data/a', 'shared content\n', { mode: 0o640, uid: 7, gid: 8 })
  b.link('data/b', shared)
  b.dir('other')
  b.link('other/c', shared)
  b.symlink('lib', 'usr/lib')
  b.symlink('long-link', LONG_TARGET)
  const sl = b.symlink('data/sl1', 'a')
  b.link('data/sl2', sl)
  b.dir('dev')
  const nul = b.device('dev/null', 'char', 1, 3, { mode: 0o666 })
  b.link('dev/null-again', nul)
  b.device('dev/sda', 'block', 8, 0, { mode: 0o660, gid: 6 })
  b.device('dev/big', 'char', 300, 70000 % 65536, { mode: 0o600 })
  b.fifo('dev/initctl', { mode: 0o600 })
  b.dir('names', { xattrs: { 'user.on-a-dir': 'dir value' } })
  await b.file('names/with space', 'space\n')
  await b.file('names/quote"inside', 'quote\n')
  await b.file('names/"', 'just a quote\n')
  await b.file('names/tab\there', 'tab\n')
  await b.file('names/<2>', 'not inode two\n')
  await b.file('names/-dash', 'dash\n')
  await b.file(`names/${UNICODE}`, 'unicode\n')
  b.fifo('names/fifo with "quotes"')
  await b.file('big', BIG)
  await b.file('empty-no-blob', undefined)
  await b.file('empty-blob', '')
  let p = ''
  for (const part of DEEP.split('/')) {
    p = p ? `${p}/${part}` : part
    b.dir(p)
  }
  await b.file(`${DEEP}/bottom`, 'deep\n')
  return b
}

function sha256(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex')
}

/** A time field of `debugfs stat` with its extra epoch bits: "mtime: 0xLOW:EXTRA". */
function timeField(image: string, p: string, field: 'atime' | 'ctime' | 'mtime' | 'crtime'): number {
  const out = debugfs(image, `stat "${p.replace(/"/g, '""')}"`)
  const m = new RegExp(`(?:^|\\s)${field}: 0x([0-9a-f]+):([0-9a-f]+)`).exec(out)
  if (!m?.[1] || !m[2]) throw new Error(`no ${field} for ${p} in:\n${out}`)
  return (parseInt(m[1], 16) | 0) + (parseInt(m[2], 16) & 3) * 2 ** 32
}

function inodeNumber(image: string, p: string): number {
  const m = /Inode: (\d+)/.exec(debugfs(image, `stat "${p.replace(/"/g, '""')}"`))
  if (!m?.[1]) throw new Error(`no inode for ${p}`)
  return Number(m[1])
}

async function expectBaleError(p: Promise<unknown>, code: string, text: RegExp): Promise<BaleError> {
  const e: unknown = await p.then(() => undefined, (err: unknown) => err)
  expect(e).toBeInstanceOf(BaleError)
  const be = e as BaleError
  expect(be.code).toBe(code)
  expect(be.message).toMatch(text)
  expect(be.message).not.toContain('\n')
  return be
}

beforeAll(async () => {
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-ext4-'))
})
afterAll(async () => {
  await fs.rm(work, { recursive: true, force: true })
})

/**
 * The ways mke2fs -d is fed: a staged directory (any e2fsprogs), or a tar on its stdin
 * (e2fsprogs >= 1.47.1, which the set-up installs) from blobs or from a packed tree's spool.
 */
const FEEDS = [
  { feed: 'a staged directory', input: 'dir', packed: false },
  { feed: 'a tar on stdin', input: 'tar', packed: false },
  { feed: 'a tar on stdin from a packed tree', input: 'tar', packed: true },
] as const

/**
 * The image with each superblock copy's lifetime-writes counter (s_kbytes_written) and checksum
 * zeroed: the only bytes that depend on how mke2fs was fed (it counts what it wrote).
 */
function withoutWriteCounters(file: string): Buffer {
  const img = readFileSync(file)
  const GROUP_BYTES = 32768 * 4096
  for (let group = 0; group * GROUP_BYTES < img.length; group++) {
    const sb = group === 0 ? 1024 : group * GROUP_BYTES
    if (img.readUInt16LE(sb + 0x38) !== 0xef53) continue
    img.fill(0, sb + 0x178, sb + 0x180)
    img.fill(0, sb + 0x3fc, sb + 0x400)
  }
  return img
}

describe.each(FEEDS)('ext4 image of a rich tree, mke2fs fed $feed, read back with debugfs', ({ input, packed }) => {
  let image: string
  let tree: TreeBuilder
  let plan: Ext4Plan
  beforeAll(async () => {
    tree = await richTree(path.join(work, `rich-staging-${input}-${packed}`))
    if (packed) await tree.pack()
    image = path.join(work, `rich-${input}-${packed}.ext4`)
    plan = await buildExt4(tree.tree, image, { ...OPTS, input })
    expect((await fs.stat(image)).size).toBe(plan.sizeBytes)
  })

  it('passes e2fsck -fn', () => {
    expect(() => e2fsckClean(image)).not.toThrow()
  })

  it('sets owner, full mode and mtime of regular files, including setuid/setgid and mode 0000', () => {
    expect(stat(image, '/usr/bin/su')).toMatchObject({ type: 'regular', mode: 0o4755, uid: 0, gid: 0 })
    expect(stat(image, '/usr/bin/wall')).toMatchObject({ mode: 0o2755, gid: 5 })
    expect(stat(image, '/secret')).toMatchObject({ mode: 0o000 })
    expect(stat(image, '/home/user/notes')).toMatchObject({ uid: 1000, gid: 1000, mode: 0o644, mtime: 1_234_567_890 })
    expect(stat(image, '/nobody')).toMatchObject({ uid: 65534, gid: 65534 })
    expect(stat(image, '/etc/hostname').mtime).toBe(1_600_000_001)
  })

  it('sets directory modes: 0555, 0000, sticky 1777, the root', () => {
    expect(stat(image, '/ro')).toMatchObject({ type: 'directory', mode: 0o555 })
    expect(stat(image, '/locked')).toMatchObject({ mode: 0o000, uid: 1000, gid: 1000 })
    expect(stat(image, '/tmp').mode).toBe(0o1777)
    expect(stat(image, '/')).toMatchObject({ mode: 0o755, mtime: 1_500_000_000 })
    expect(cat(image, '/locked/inner/file').toString()).toBe('behind 0000\n')
    expect(cat(image, '/ro/child.txt').toString()).toBe('in a read-only dir\n')
  })

  it('keeps file contents byte for byte, including multi-block and empty files', () => {
    expect(cat(image, '/big').equals(BIG)).toBe(true)
    expect(stat(image, '/big').size).toBe(BIG.length)
    expect(cat(image, '/etc/hostname').toString()).toBe('bale\n')
    expect(stat(image, '/empty-no-blob')).toMatchObject({ type: 'regular', size: 0 })
    expect(stat(image, '/empty-blob')).toMatchObject({ type: 'regular', size: 0 })
  })

  it('keeps hard links as one inode with the right link count (3 names)', () => {
    const ino = inodeNumber(image, '/data/a')
    expect(inodeNumber(image, '/data/b')).toBe(ino)
    expect(inodeNumber(image, '/other/c')).toBe(ino)
    expect(stat(image, '/data/a')).toMatchObject({ links: 3, mode: 0o640, uid: 7, gid: 8 })
    expect(cat(image, '/other/c').toString()).toBe('shared content\n')
  })

  it('writes short and long symlinks, and a hard-linked symlink as one inode', () => {
    expect(stat(image, '/lib')).toMatchObject({ type: 'symlink', mode: 0o777, fastLinkTarget: 'usr/lib' })
    const long = stat(image, '/long-link')
    expect(long).toMatchObject({ type: 'symlink', size: Buffer.byteLength(LONG_TARGET) })
    expect(long.fastLinkTarget).toBeUndefined()
    expect(cat(image, '/long-link').toString()).toBe(LONG_TARGET)
    expect(inodeNumber(image, '/data/sl2')).toBe(inodeNumber(image, '/data/sl1'))
    expect(stat(image, '/data/sl1')).toMatchObject({ links: 2, fastLinkTarget: 'a' })
  })

  it('creates char and block devices and fifos with their numbers, modes and owners', () => {
    expect(stat(image, '/dev/null')).toMatchObject({ type: 'character', mode: 0o666, device: [1, 3], links: 2 })
    expect(inodeNumber(image, '/dev/null-again')).toBe(inodeNumber(image, '/dev/null'))
    expect(stat(image, '/dev/sda')).toMatchObject({ type: 'block', mode: 0o660, gid: 6, device: [8, 0] })
    expect(stat(image, '/dev/big')).toMatchObject({ device: [300, 70000 % 65536] })
    expect(stat(image, '/dev/initctl')).toMatchObject({ type: 'FIFO', mode: 0o600 })
    expect(stat(image, '/names/fifo with "quotes"')).toMatchObject({ type: 'FIFO', mode: 0o644 })
    // mknod linked bare names into their directories, not "/dev/null" into the root.
    expect(debugfs(image, 'ls -l /')).not.toContain('/dev/null')
  })

  it('sets xattrs byte for byte: user.test, binary security.capability, on a directory', () => {
    const tmp = path.join(work, 'xattr-value')
    expect(xattr(image, '/home/user/notes', 'user.test', tmp).toString()).toBe('hello xattr')
    expect(xattr(image, '/usr/bin/ping', 'security.capability', tmp).equals(CAP_NET_RAW)).toBe(true)
    expect(xattr(image, '/names', 'user.on-a-dir', tmp).toString()).toBe('dir value')
  })

  it('stores a POSIX ACL in the ext4 on-disk format (debugfs converts the VFS form)', () => {
    // ea_list shows the on-disk value: version 1, then short entries without ids for the base tags.
    const list = debugfs(image, 'ea_list /acl-file')
    expect(list).toContain('system.posix_acl_access (16) = 01 00 00 00 01 00 07 00 04 00 05 00 20 00 05 00')
  })

  it('handles names with spaces, quotes, tabs, <2>, a leading dash, unicode and 40-level paths', () => {
    expect(cat(image, '/names/with space').toString()).toBe('space\n')
    expect(cat(image, '/names/quote"inside').toString()).toBe('quote\n')
    expect(cat(image, '/names/"').toString()).toBe('just a quote\n')
    expect(cat(image, '/names/tab\there').toString()).toBe('tab\n')
    expect(cat(image, '/names/<2>').toString()).toBe('not inode two\n')
    expect(stat(image, '/names/<2>').type).toBe('regular')
    // <2> was not mistaken for inode 2: the root keeps its own mode and owner.
    expect(stat(image, '/')).toMatchObject({ type: 'directory', mode: 0o755, uid: 0 })
    expect(cat(image, '/names/-dash').toString()).toBe('dash\n')
    expect(cat(image, `/names/${UNICODE}`).toString()).toBe('unicode\n')
    expect(cat(image, `/${DEEP}/bottom`).toString()).toBe('deep\n')
  })

  it('pins every time: mtime as given (1970 and after 2038 too), atime = mtime, ctime and crtime = timestamp', () => {
    expect(timeField(image, '/future', 'mtime')).toBe(4_102_444_800)
    expect(timeField(image, '/epoch', 'mtime')).toBe(0)
    for (const p of ['/etc/hostname', '/dev/null', '/lib', '/ro', '/lost+found']) {
      expect(timeField(image, p, 'crtime')).toBe(OPTS.timestamp)
    }
    for (const p of ['/etc/hostname', '/dev/null', '/lib', '/ro']) {
      expect(timeField(image, p, 'ctime')).toBe(OPTS.timestamp)
      expect(timeField(image, p, 'atime')).toBe(timeField(image, p, 'mtime'))
    }
    const sb = execFileSync('dumpe2fs', ['-h', image], { env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'ignore'] }).toString()
    expect(sb).toMatch(/Filesystem UUID:\s+0b5f4a5e-1c2d-4e3f-8a9b-0c1d2e3f4a5b/)
    expect(sb).toMatch(/Directory Hash Seed:\s+6c7d8e9f-0a1b-4c2d-9e3f-4a5b6c7d8e9f/)
    expect(sb).toMatch(/Filesystem volume name:\s+bale-test/)
    expect(sb).toMatch(/Filesystem created:\s+Tue Nov 14 22:13:20 2023/)
    expect(sb).toMatch(/Last write time:\s+Tue Nov 14 22:13:20 2023/)
  })

  it('leaves the staging tree as it found it: contents in place, no root or scratch left', async () => {
    const staging = tree.tree.staging
    expect((await fs.readdir(staging)).sort()).toEqual(packed ? ['blobs', 'spool'] : ['blobs'])
    const shared = tree.tree.entries.get('data/a') as Inode
    const big = tree.tree.entries.get('big') as Inode
    expect((await readContent(tree.tree, big)).equals(BIG)).toBe(true)
    expect((await readContent(tree.tree, shared)).toString()).toBe('shared content\n')
    // A hard-linked blob was linked into the staged root and unlinked from it again.
    if (!packed) expect((await fs.stat(path.join(staging, 'blobs', String(shared.ino)))).nlink).toBe(1)
  })
})

describe('tar input (mke2fs >= 1.47.1)', () => {
  it('this host has it: the set-up installs e2fsprogs >= 1.47.1 and libarchive', async () => {
    await expect(mkfsReadsTar(work)).resolves.toBe(true)
  })

  it('gives the image the staged directory gives, but for the lifetime-writes counter, from blobs or a spool', async () => {
    const viaDir = path.join(work, 'feed-dir.ext4')
    await buildExt4((await richTree(path.join(work, 'feed-dir'))).tree, viaDir, { ...OPTS, input: 'dir' })
    const packed = await richTree(path.join(work, 'feed-packed'))
    await packed.pack()
    const viaTar = path.join(work, 'feed-tar.ext4')
    await buildExt4(packed.tree, viaTar, { ...OPTS, input: 'tar' })
    const viaPackedDir = path.join(work, 'feed-packed-dir.ext4')
    await buildExt4(packed.tree, viaPackedDir, { ...OPTS, input: 'dir' })
    expect(sha256(viaPackedDir)).toBe(sha256(viaDir))
    expect(withoutWriteCounters(viaTar).equals(withoutWriteCounters(viaDir))).toBe(true)
  })

  it('a tree whose tar spans batches, headers on their edges, gives the staged directory image', async () => {
    // 'a' fills the first batch to its end, so a file's first name starts the second; 'd' leaves
    // one block at the end of the second, less than the PAX header a non-ASCII name needs.
    const make = async (staging: string): Promise<TreeBuilder> => {
      const b = await TreeBuilder.create(staging)
      await b.file('a', Buffer.alloc(TAR_BATCH_BYTES - 512, 'a'))
      b.link('c', await b.file('b', 'bee\n'))
      await b.file('d', Buffer.alloc(TAR_BATCH_BYTES - 5 * 512, 'd'))
      b.link('f', await b.file(`e-${UNICODE}`, 'e\n'))
      b.symlink('g', 'a')
      return b
    }
    const viaDir = path.join(work, 'batches-dir.ext4')
    await buildExt4((await make(path.join(work, 'batches-dir'))).tree, viaDir, { ...OPTS, input: 'dir' })
    const packed = await make(path.join(work, 'batches-packed'))
    await packed.pack()
    const viaTar = path.join(work, 'batches-tar.ext4')
    await buildExt4(packed.tree, viaTar, { ...OPTS, input: 'tar' })
    expect(withoutWriteCounters(viaTar).equals(withoutWriteCounters(viaDir))).toBe(true)
    expect(stat(viaTar, '/c').links).toBe(2)
  })

  it('a content blob whose size disagrees with the tree is rejected by name, and no image is left', async () => {
    const t = await TreeBuilder.create(path.join(work, 'bad-blob-tar'))
    const f = await t.file('f', 'four')
    f.size = 5
    const out = path.join(work, 'bad-blob-tar.ext4')
    await expectBaleError(buildExt4(t.tree, out, { ...OPTS, input: 'tar' }), 'E_INPUT', /^\/f: content blob has 4 bytes, the tree says 5/)
    await expect(fs.access(out)).rejects.toThrow()
  })

  it('a spool that ends inside a file fails naming the file (what mke2fs saw is not what is reported)', async () => {
    const t = await TreeBuilder.create(path.join(work, 'short-spool'))
    await t.file('a', 'first file\n')
    const b = await t.file('dir-less-b', 'second file\n')
    await t.pack()
    b.size += 100
    const out = path.join(work, 'short-spool.ext4')
    await expectBaleError(buildExt4(t.tree, out, { ...OPTS, input: 'tar' }), 'E_INPUT', /^\/dir-less-b: its content ends after 12 of 112 bytes/)
    await expect(fs.access(out)).rejects.toThrow()
  })
})

describe('reproducibility', () => {
  it('gives a bit-identical image for the same tree, built twice from separate staging directories', async () => {
    const first = await richTree(path.join(work, 'repro-1'))
    const a = path.join(work, 'repro-1.ext4')
    await buildExt4(first.tree, a, OPTS)
    // A second staging tree made later: its host inode times, inode numbers and creation order differ.
    await new Promise((r) => setTimeout(r, 1100))
    const second = await richTree(path.join(work, 'repro-2'))
    const b = path.join(work, 'repro-2.ext4')
    await buildExt4(second.tree, b, OPTS)
    // And the first tree again: a build leaves its tree reusable.
    const c = path.join(work, 'repro-1-again.ext4')
    await buildExt4(first.tree, c, OPTS)
    expect(sha256(b)).toBe(sha256(a))
    expect(sha256(c)).toBe(sha256(a))
  })

  it('consumeBlobs (make-bundle) gives the same image and leaves the contents in the staged root', async () => {
    const t = await richTree(path.join(work, 'repro-consume'))
    const blobs = path.join(t.tree.staging, 'blobs')
    const before = (await fs.readdir(blobs)).length
    const kept = path.join(work, 'repro-kept.ext4')
    await buildExt4((await richTree(path.join(work, 'repro-kept'))).tree, kept, OPTS)
    const a = path.join(work, 'repro-consume.ext4')
    await buildExt4(t.tree, a, { ...OPTS, consumeBlobs: true })
    expect(sha256(a)).toBe(sha256(kept))
    // Single-name files stayed where mke2fs read them; hard-linked ones keep their blob too.
    expect((await fs.readdir(blobs)).length).toBeLessThan(before)
    expect(await fs.readFile(path.join(t.tree.staging, 'root', 'etc', 'hostname'), 'utf8')).toBe(cat(a, '/etc/hostname').toString())
  })

  it('fake-time-zero-is-ignored: timestamp 0 (SOURCE_DATE_EPOCH=0) is written as 1 and stays reproducible', async () => {
    // libext2fs 1.47.0 takes E2FSPROGS_FAKE_TIME=0 as unset and would write the host clock.
    const t = await TreeBuilder.create(path.join(work, 'epoch-zero'), { mtime: 0 })
    await t.file('f', 'x', { mtime: 0 })
    const a = path.join(work, 'epoch-zero-a.ext4')
    const b = path.join(work, 'epoch-zero-b.ext4')
    await buildExt4(t.tree, a, { ...OPTS, timestamp: 0 })
    await new Promise((r) => setTimeout(r, 1100))
    await buildExt4(t.tree, b, { ...OPTS, timestamp: 0 })
    expect(sha256(b)).toBe(sha256(a))
    expect(timeField(a, '/f', 'mtime')).toBe(0)
    expect(timeField(a, '/f', 'crtime')).toBe(1)
    expect(timeField(a, '/f', 'ctime')).toBe(1)
    const sb = execFileSync('dumpe2fs', ['-h', a], { env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'ignore'] }).toString()
    expect(sb).toMatch(/Filesystem created:\s+Thu Jan {2}1 00:00:01 1970/)
  })

  it('host-e2fsprogs-env-ignored: MKE2FS_CONFIG and E2FSPROGS_FAKE_TIME in the environment change nothing', async () => {
    const t = await TreeBuilder.create(path.join(work, 'host-env'))
    await t.file('f', 'x')
    const clean = path.join(work, 'host-env-clean.ext4')
    await buildExt4(t.tree, clean, OPTS)
    const conf = path.join(work, 'hostile-mke2fs.conf')
    await fs.writeFile(conf, '[defaults]\n\tinode_size = 128\n[fs_types]\n\text4 = {\n\t\tfeatures = ^metadata_csum,inline_data\n\t}\n')
    const saved = { ...process.env }
    process.env.MKE2FS_CONFIG = conf
    process.env.E2FSPROGS_FAKE_TIME = '12345'
    try {
      const dirty = path.join(work, 'host-env-dirty.ext4')
      await buildExt4(t.tree, dirty, OPTS)
      expect(sha256(dirty)).toBe(sha256(clean))
    } finally {
      process.env.MKE2FS_CONFIG = saved.MKE2FS_CONFIG
      process.env.E2FSPROGS_FAKE_TIME = saved.E2FSPROGS_FAKE_TIME
      if (saved.MKE2FS_CONFIG === undefined) delete process.env.MKE2FS_CONFIG
      if (saved.E2FSPROGS_FAKE_TIME === undefined) delete process.env.E2FSPROGS_FAKE_TIME
    }
  })

  it('gives a different image for a different uuid (the options reach the image)', async () => {
    const t = await TreeBuilder.create(path.join(work, 'repro-3'))
    await t.file('f', 'x')
    const a = path.join(work, 'repro-3a.ext4')
    const b = path.join(work, 'repro-3b.ext4')
    await buildExt4(t.tree, a, OPTS)
    await buildExt4(t.tree, b, { ...OPTS, uuid: '0b5f4a5e-1c2d-4e3f-8a9b-0c1d2e3f4a5c' })
    expect(sha256(a)).not.toBe(sha256(b))
  })
})

describe('sizing', () => {
  it('--size too small fails naming --size and the minimum, and leaves no output file', async () => {
    const t = await TreeBuilder.create(path.join(work, 'small'))
    await t.file('big', Buffer.alloc(8 * 2 ** 20, 1))
    const out = path.join(work, 'small.ext4')
    const e = await expectBaleError(buildExt4(t.tree, out, { ...OPTS, sizeBytes: 8 * 2 ** 20 }), 'E_USAGE', /^--size 8388608: too small .* needs at least \d+ bytes/)
    expect(e.subject).toBe('--size')
    await expect(fs.access(out)).rejects.toThrow()
  })

  it('an image of exactly the minimum size builds and checks clean (many small files, a large file, wide directories)', async () => {
    const t = await TreeBuilder.create(path.join(work, 'minimum'))
    for (let d = 0; d < 20; d++) {
      t.dir(`d${d}`)
      for (let f = 0; f < 150; f++) await t.file(`d${d}/file-with-a-longish-name-${f}`, `content ${d}/${f}\n`)
    }
    await t.file('large', Buffer.alloc(40 * 2 ** 20, 7))
    for (let i = 0; i < 200; i++) t.symlink(`ln-${i}`, `${'t'.repeat(80)}${i}`)
    const min = minimumExt4Size(t.tree)
    const out = path.join(work, 'minimum.ext4')
    const plan = await buildExt4(t.tree, out, { ...OPTS, sizeBytes: min })
    expect(plan.sizeBytes).toBe(min)
    expect(() => e2fsckClean(out)).not.toThrow()
    // The planned (default) size is larger than the minimum: it leaves room for the VM.
    expect(planExt4(t.tree).sizeBytes).toBeGreaterThan(min + 60 * 2 ** 20)
  })

  it('the metadata arithmetic mirrors mke2fs: estimate within 0..2 blocks of what it uses, 9 MiB to 3 GiB', async () => {
    const t = await TreeBuilder.create(path.join(work, 'geometry'))
    const used = ext4Usage(t.tree)
    // 129 MiB: a last group of 256 blocks that mke2fs drops.
    for (const mib of [9, 129, 1100, 3000]) {
      const out = path.join(work, `geometry-${mib}.ext4`)
      await buildExt4(t.tree, out, { ...OPTS, sizeBytes: mib * 2 ** 20 })
      const sb = execFileSync('dumpe2fs', ['-h', out], { env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'ignore'] }).toString()
      const field = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(sb)?.[1])
      const blocks = mib * 256
      const inodes = inodeCount(used.inodes, blocks)
      const kept = keptBlocks(blocks, inodes)
      expect(field('Block count')).toBe(kept)
      const estimate = metadataBlocks(kept, inodes) + used.blocks
      const actual = field('Block count') - field('Free blocks')
      expect(estimate - actual).toBeGreaterThanOrEqual(0)
      expect(estimate - actual).toBeLessThanOrEqual(2)
      await fs.rm(out)
    }
  })

  it('an empty tree (only the root) builds', async () => {
    const t = await TreeBuilder.create(path.join(work, 'empty'))
    const out = path.join(work, 'empty.ext4')
    await buildExt4(t.tree, out, { ...OPTS, sizeBytes: minimumExt4Size(t.tree) })
    expect(() => e2fsckClean(out)).not.toThrow()
  })
})

describe('failures are BaleErrors naming the path, and leave no output', () => {
  it('debugfs-exits-zero-on-failure: an xattr too large for ext4 fails as E_TOOL naming the file', async () => {
    const t = await TreeBuilder.create(path.join(work, 'bad-xattr'))
    await t.file('ok', 'fine')
    t.dir('dir')
    await t.file('dir/too-big', 'x', { xattrs: { 'user.huge': Buffer.alloc(6000, 0x61) } })
    const out = path.join(work, 'bad-xattr.ext4')
    const e = await expectBaleError(buildExt4(t.tree, out, OPTS), 'E_TOOL', /^debugfs failed on \/dir\/too-big: /)
    expect(e.subject).toBe('/dir/too-big')
    await expect(fs.access(out)).rejects.toThrow()
  })

  it('a non-directory lost+found is rejected by name before mkfs', async () => {
    const t = await TreeBuilder.create(path.join(work, 'bad-lf'))
    await t.file('lost+found', 'not a dir')
    await expectBaleError(buildExt4(t.tree, path.join(work, 'bad-lf.ext4'), OPTS), 'E_INPUT', /^\/lost\+found: must be a directory/)
  })

  it('a content blob whose size disagrees with the tree is rejected by name', async () => {
    const t = await TreeBuilder.create(path.join(work, 'bad-blob'))
    const f = await t.file('f', 'four')
    f.size = 5
    const out = path.join(work, 'bad-blob.ext4')
    await expectBaleError(buildExt4(t.tree, out, OPTS), 'E_INPUT', /^\/f: content blob has 4 bytes, the tree says 5/)
    await expect(fs.access(out)).rejects.toThrow()
  })

  it('an output path that is a symlink is not followed', async () => {
    const t = await TreeBuilder.create(path.join(work, 'out-link'))
    const victim = path.join(work, 'victim')
    await fs.writeFile(victim, 'keep me')
    const out = path.join(work, 'out-link.ext4')
    await fs.symlink(victim, out)
    await expectBaleError(buildExt4(t.tree, out, OPTS), 'E_INPUT', /out-link\.ext4: cannot create the image/)
    expect(await fs.readFile(victim, 'utf8')).toBe('keep me')
  })
})

describe('data ranges of sparse files (real filefrag, FIEMAP)', () => {
  // On the repository's disk, not os.tmpdir(), which may be a tmpfs (no FIEMAP) on some hosts.
  const repoCache = path.resolve(import.meta.dirname, '..', '..', '.cache')
  let dir: string
  beforeAll(async () => {
    await fs.mkdir(repoCache, { recursive: true })
    dir = await fs.mkdtemp(path.join(repoCache, 'sparse-'))
  })
  afterAll(async () => {
    await fs.rm(dir, { recursive: true, force: true })
  })

  it('reports where data was written, leaves the holes out, and hashes like a full read', async () => {
    const file = path.join(dir, 'sparse.img')
    const size = 64 * 1024 * 1024
    const fh = await fs.open(file, 'w')
    try {
      await fh.truncate(size)
      // Not yet synced: the map must include data still in the page cache (delayed allocation).
      await fh.write(Buffer.alloc(10_000, 1), 0, 10_000, 5 * 1024 * 1024 + 100)
      await fh.write(Buffer.alloc(4096, 2), 0, 4096, size - 4096)
    } finally {
      await fh.close()
    }
    const ranges = await dataRanges(file, size)
    expect(ranges).toBeDefined()
    const r = ranges ?? []
    const covers = (pos: number): boolean => r.some((x) => x.start <= pos && pos < x.end)
    for (const pos of [5 * 1024 * 1024 + 100, 5 * 1024 * 1024 + 10_099, size - 4096, size - 1]) expect(covers(pos)).toBe(true)
    expect(covers(0)).toBe(false)
    expect(covers(32 * 1024 * 1024)).toBe(false)
    expect(r.reduce((n, x) => n + x.end - x.start, 0)).toBeLessThan(1024 * 1024)
    expect(await hashOnThread(file, size, { ranges: r }).digest).toBe(sha256(file))
  })

  it('an image mke2fs just made without fsync (libeatmydata) maps the same before and after a sync', async () => {
    // What make-bundle relies on: the data of a fresh image, still in the page cache, is in the
    // map taken without FIEMAP_FLAG_SYNC, on the filesystem CI builds on.
    const lib = noFsyncPreload()
    expect(lib).toBeDefined()
    const tree = path.join(dir, 'tree')
    await fs.mkdir(path.join(tree, 'etc'), { recursive: true })
    await fs.writeFile(path.join(tree, 'etc', 'big'), BIG)
    await fs.writeFile(path.join(tree, 'small'), 'x'.repeat(5000))
    const file = path.join(dir, 'fresh.ext4')
    const size = 256 * 1024 * 1024
    execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard,assume_storage_prezeroed=1', '-d', tree, file, '256M'], { env: { ...process.env, LD_PRELOAD: lib } })
    const before = await dataRanges(file, size)
    expect(before).toBeDefined()
    expect(await hashOnThread(file, size, { ranges: before }).digest).toBe(sha256(file))
    const fh = await fs.open(file, 'r')
    await fh.sync()
    await fh.close()
    expect(await dataRanges(file, size)).toEqual(before)
  })

  it('a filesystem without FIEMAP (tmpfs) gives no map, and the caller reads everything', async () => {
    const shm = await fs.mkdtemp('/dev/shm/bale-sparse-')
    try {
      const file = path.join(shm, 'f')
      await fs.writeFile(file, 'data')
      expect(await dataRanges(file, 4)).toBeUndefined()
      expect(await hashOnThread(file, 4).digest).toBe(sha256(file))
    } finally {
      await fs.rm(shm, { recursive: true, force: true })
    }
  })
})
