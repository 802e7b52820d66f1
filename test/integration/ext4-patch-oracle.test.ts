// Equivalence oracle for the inode patcher (src/pipeline/ext4/image.ts): the same tree built the
// old way — mke2fs -d, then the whole debugfs script (uid, gid, mode, mtime, atime, ctime of every
// inode by number, then devices, fifos, links, xattrs) — and the new way (buildExt4: inodes
// patched in place, debugfs only for what is left) must give the same bytes in every inode, and
// the same image but for the superblock's count of kilobytes written.
import { constants, promises as fs, readFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { e2fsckClean, stat } from '../helpers/debugfs.js'
import type { FlatTree, Inode } from '../../src/pipeline/tree.js'
import { buildExt4, planExt4, type Ext4Options } from '../../src/pipeline/ext4/index.js'
import { checkDebugfsOutput, debugfsLines, debugfsScript, fsTimestamp, sortedXattrs, xattrValueFile } from '../../src/pipeline/ext4/debugfs.js'
import { BLOCK_SIZE } from '../../src/pipeline/ext4/geometry.js'
import { Ext4Image } from '../../src/pipeline/ext4/image.js'
import { stageRoot } from '../../src/pipeline/ext4/stage.js'
import { MKE2FS_CONF, debugfs, mkfs } from '../../src/pipeline/ext4/tools.js'
import { TreeBuilder } from '../unit/ext4/fixture.js'

const OPTS: Ext4Options = {
  uuid: '3d1c6a2e-4b5f-4a6e-9c7d-8e9f0a1b2c3d',
  hashSeed: '5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d',
  timestamp: 1_700_000_000,
}
/** The last second ext4 (and debugfs @EPOCH) can hold: epoch bits 3, low half 0x7fffffff (year 2446). */
const EXT4_TIME_MAX = 2 ** 34 - 2 ** 31 - 1
/** The primary superblock's offset in the image. */
const SUPERBLOCK = 1024

let work: string

beforeAll(async () => {
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-ext4-oracle-'))
})
afterAll(async () => {
  await fs.rm(work, { recursive: true, force: true })
})

/**
 * The old build: mke2fs -d of the staged tree, then one debugfs script that sets everything,
 * addressing mke2fs's inodes by the numbers the image reader finds (read-only).
 */
async function buildOldWay(tree: FlatTree, out: string, opts: Ext4Options): Promise<void> {
  const time = fsTimestamp(opts.timestamp)
  const plan = planExt4(tree, opts.sizeBytes)
  const scratch = await fs.mkdtemp(path.join(work, 'old-scratch-'))
  const xattrDir = path.join(scratch, 'xattrs')
  await fs.mkdir(xattrDir)
  const done = new Set<Inode>()
  for (const inode of tree.entries.values()) {
    if (done.has(inode)) continue
    done.add(inode)
    let i = 0
    for (const [, value] of sortedXattrs(inode)) await fs.writeFile(xattrValueFile(xattrDir, inode, i++), value)
  }
  const fh = await fs.open(out, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC, 0o644)
  await fh.truncate(plan.sizeBytes)
  await fh.close()
  const staged = stageRoot(tree, path.join(tree.staging, 'root'))
  const conf = path.join(scratch, 'mke2fs.conf')
  await fs.writeFile(conf, MKE2FS_CONF)
  try {
    await mkfs({
      input: { dir: path.join(tree.staging, 'root') }, out, blocks: plan.sizeBytes / BLOCK_SIZE, inodes: plan.inodes,
      uuid: opts.uuid, hashSeed: opts.hashSeed, timestamp: time, label: opts.label, conf, log: path.join(scratch, 'mkfs.log'),
    })
  } finally {
    staged.restore()
  }
  const image = Ext4Image.open(out, false)
  const inodes = image.treeInodes(tree)
  image.close()
  const scriptOpts = { timestamp: time, xattrDir, inodes }
  const script = path.join(scratch, 'all.debugfs')
  await fs.writeFile(script, debugfsScript(tree, scriptOpts))
  const run = await debugfs({ image: out, script, write: true, timestamp: time, log: path.join(scratch, 'all.log') })
  await checkDebugfsOutput(run.output, debugfsLines(tree, scriptOpts), run.code)
  await fs.rm(scratch, { recursive: true })
}

/**
 * The two images' bytes, compared whole except for one statistic: the old way's debugfs run
 * rewrote the superblock with its own s_kbytes_written (0x178, 8 bytes: bytes written over the
 * filesystem's life), and so its checksum (0x3fc); the new way writes less. Returns the offsets
 * of the first differing bytes, or none.
 */
function differingBytes(a: string, b: string): number[] {
  const x = readFileSync(a)
  const y = readFileSync(b)
  expect(y.length).toBe(x.length)
  for (const buf of [x, y]) {
    buf.fill(0, SUPERBLOCK + 0x178, SUPERBLOCK + 0x180)
    buf.fill(0, SUPERBLOCK + 0x3fc, SUPERBLOCK + 0x400)
  }
  const out: number[] = []
  for (let i = 0; i < x.length && out.length < 10; i++) if (x[i] !== y[i]) out.push(i)
  return out
}

/** Every inode (1..count) whose bytes differ between the two images, with both versions in hex. */
function differingInodes(a: string, b: string): Array<{ ino: number; old: string; new: string }> {
  const ia = Ext4Image.open(a, false)
  const ib = Ext4Image.open(b, false)
  try {
    expect(ib.inodeCount).toBe(ia.inodeCount)
    const diff: Array<{ ino: number; old: string; new: string }> = []
    for (let ino = 1; ino <= ia.inodeCount; ino++) {
      const x = ia.readInode(ino)
      const y = ib.readInode(ino)
      if (!x.equals(y)) diff.push({ ino, old: x.toString('hex'), new: y.toString('hex') })
    }
    return diff
  } finally {
    ia.close()
    ib.close()
  }
}

/** Files, directories, symlinks and hard links only: the new way runs no debugfs at all. */
async function plainTree(staging: string): Promise<TreeBuilder> {
  const b = await TreeBuilder.create(staging, { mode: 0o755, mtime: 1_500_000_000, uid: 0, gid: 0 })
  b.dir('bin', { mtime: 1 })
  await b.file('bin/su', 'setuid\n', { mode: 0o4755 })
  await b.file('bin/wall', 'setgid\n', { mode: 0o2711, gid: 5 })
  await b.file('bin/all-special', 'ugs\n', { mode: 0o7777 })
  b.dir('tmp', { mode: 0o1777 })
  b.dir('sticky-only', { mode: 0o1000 })
  b.dir('locked', { mode: 0o000, uid: 1000, gid: 1000 })
  await b.file('locked/secret', 'zero\n', { mode: 0o000 })
  await b.file('big-ids', 'ids\n', { uid: 70_000, gid: 4_294_967_294 })
  await b.file('max-uid', 'ids\n', { uid: 4_294_967_294, gid: 65_536 })
  await b.file('nobody', 'ids\n', { uid: 65_534, gid: 65_535 })
  b.dir('times')
  await b.file('times/epoch', 'x', { mtime: 0 })
  await b.file('times/before-1970', 'x', { mtime: -86_400 })
  await b.file('times/y2038-last', 'x', { mtime: 2 ** 31 - 1 })
  await b.file('times/y2038-first', 'x', { mtime: 2 ** 31 })
  await b.file('times/y2100', 'x', { mtime: 4_102_444_800 })
  await b.file('times/y2106-wrap', 'x', { mtime: 2 ** 32 })
  await b.file('times/y2242', 'x', { mtime: 2 ** 33 + 12345 })
  await b.file('times/y2446-max', 'x', { mtime: EXT4_TIME_MAX })
  await b.file('times/beyond-max', 'x', { mtime: 2 ** 40 })
  b.dir('names', { mtime: 2 ** 31 + 7 })
  await b.file('names/with space', 'a')
  await b.file('names/quote"inside', 'b')
  await b.file('names/"', 'c')
  await b.file("names/single'quote", 'd')
  await b.file('names/tab\there', 'e')
  await b.file('names/<2>', 'f')
  await b.file('names/\ufeffbom-first', 'g')
  await b.file('names/ünï 文件 😀', 'h')
  await b.file('names/e\u0301-combining', 'i')
  const shared = await b.file('names/linked', 'shared', { mode: 0o640, uid: 7, gid: 8, mtime: 1_234_567_890 })
  b.link('bin/linked-too', shared)
  b.link('tmp/and-here', shared)
  b.symlink('lib', 'usr/lib', { uid: 3, gid: 4, mtime: 2 ** 32 + 1 })
  b.symlink('names/long link', `../${'x/'.repeat(60)}target`, { mode: 0o777 })
  b.dir('wide')
  for (let i = 0; i < 400; i++) await b.file(`wide/${'n'.repeat(100)}-${i}`, `${i}`, { mode: 0o600 + (i % 64), uid: i * 1000, mtime: 1_000_000_000 + i * 10_000_000 })
  return b
}

/** The plain tree plus what debugfs still does: devices, fifos, linked symlinks and devices, xattrs. */
async function mixedTree(staging: string): Promise<TreeBuilder> {
  const b = await plainTree(staging)
  b.dir('dev', { mode: 0o755 })
  const nul = b.device('dev/null', 'char', 1, 3, { mode: 0o666, mtime: 2 ** 32 + 99 })
  b.link('dev/null-again', nul)
  b.device('dev/sda', 'block', 8, 0, { mode: 0o660, gid: 70_006 })
  b.fifo('dev/initctl', { mode: 0o4600 })
  b.fifo('names/fifo "q"')
  const sl = b.symlink('names/sl1', 'a')
  b.link('names/sl2', sl)
  await b.file('bin/ping', 'cap\n', { mode: 0o755, xattrs: { 'security.capability': Buffer.from('0100000200200000000000000000000000000000', 'hex'), 'user.z': 'last' } })
  b.dir('xdir', { xattrs: { 'user.on-a-dir': 'value' }, mode: 0o2775 })
  return b
}

describe('inode patcher vs the full debugfs script', () => {
  for (const [label, opts] of [['timestamp 2023', OPTS], ['timestamp after 2038', { ...OPTS, timestamp: 2 ** 32 + 3 }]] as const) {
    it(`no debugfs left (${label}): every inode and the rest of the image identical`, async () => {
      const tree = await plainTree(path.join(work, `plain-${opts.timestamp}`))
      const oldImg = path.join(work, `plain-old-${opts.timestamp}.ext4`)
      const newImg = path.join(work, `plain-new-${opts.timestamp}.ext4`)
      await buildOldWay(tree.tree, oldImg, opts)
      await buildExt4(tree.tree, newImg, opts)
      expect(differingInodes(oldImg, newImg)).toEqual([])
      e2fsckClean(newImg)
      // The patcher did change things: a sample read back through debugfs.
      expect(stat(newImg, '/names/linked')).toMatchObject({ uid: 7, gid: 8, mode: 0o640, links: 3 })
      expect(stat(newImg, '/bin/all-special').mode).toBe(0o7777)
      expect(differingBytes(oldImg, newImg)).toEqual([])
    })
  }

  it('with devices, fifos, links and xattrs left to debugfs: every inode and the rest of the image identical', async () => {
    const tree = await mixedTree(path.join(work, 'mixed'))
    const oldImg = path.join(work, 'mixed-old.ext4')
    const newImg = path.join(work, 'mixed-new.ext4')
    await buildOldWay(tree.tree, oldImg, OPTS)
    await buildExt4(tree.tree, newImg, OPTS)
    expect(differingInodes(oldImg, newImg)).toEqual([])
    e2fsckClean(newImg)
    expect(stat(newImg, '/dev/sda')).toMatchObject({ type: 'block', gid: 70_006, device: [8, 0] })
    expect(differingBytes(oldImg, newImg)).toEqual([])
  })
})
