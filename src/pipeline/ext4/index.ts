/**
 * The ext4 stage: FlatTree → rootfs.ext4, without root and reproducibly.
 *
 * 1. plan the size and inode count from the tree (plan.ts);
 * 2. stage `${staging}/root`: directories, content blobs (hard links kept), symlinks (stage.ts),
 *    or, where mke2fs reads tars (1.47.1+), the same entries as a tar stream (tar-input.ts);
 * 3. mke2fs -d it into the output with a pinned UUID, hash seed, configuration and time (tools.ts);
 * 4. read the image's directories directly: the inode number of everything mke2fs made,
 *    checked against the tree (names, types, hard links) (image.ts);
 * 5. write every one of those inodes' owner, full mode and times straight into the inode
 *    tables, checksums recomputed (image.ts) — what debugfs `sif` did, byte for byte, without
 *    its per-command cost;
 * 6. only if the tree has any: one debugfs script makes devices, fifos and the hard links
 *    mke2fs cannot, and sets xattrs; its output is read for failures (debugfs.ts);
 * 7. e2fsck -fn must find nothing: the final check of all of the above.
 * (The image's SHA-256 is not taken here: the bundle writer hashes it as it compresses it.)
 *
 * The same tree and options give a bit-identical image: nothing in it comes from the host's
 * clock, staging inode times, owner, xattrs, mke2fs.conf or directory order.
 */
import { constants, promises as fs } from 'node:fs'
import path from 'node:path'
import { removeQuietly } from '../../lib/atomic.js'
import { BaleError, fromSystemError } from '../../lib/errors.js'
import type { FlatTree, Inode } from '../tree.js'
import {
  checkDebugfsOutput,
  fsTimestamp,
  debugfsLines,
  sortedXattrs,
  xattrValueFile,
  type ScriptLine,
} from './debugfs.js'
import { BLOCK_SIZE } from './geometry.js'
import { Ext4Image } from './image.js'
import { planExt4, type Ext4Plan } from './plan.js'
import { stageRoot, type StagedRoot } from './stage.js'
import { treeTar } from './tar-input.js'
import { MKE2FS_CONF, debugfs, e2fsck, mkfs } from './tools.js'

export { debugfsQuote, debugfsScript, MAX_DEBUGFS_LINE_BYTES } from './debugfs.js'
export { minimumExt4Size, planExt4, type Ext4Plan } from './plan.js'
export { mkfsReadsTar } from './tools.js'

export interface Ext4Options {
  /** --size override in bytes; otherwise planned from the tree. */
  sizeBytes?: number
  /** Filesystem UUID, derived by the caller from the content digest (reproducible). */
  uuid: string
  /** htree hash_seed UUID, same origin. */
  hashSeed: string
  /**
   * Epoch seconds for every filesystem-level time (superblock, crtime, ctime, lost+found);
   * clamped to what ext4 and e2fsprogs can write reproducibly, 1 (not 0) to year 2446.
   */
  timestamp: number
  label?: string
  /**
   * The tree's content blobs are not needed after this build (make-bundle): they are left where
   * mke2fs read them, under `${staging}/root`, for the caller's removal of the staging
   * directory, instead of being moved back one by one (a rename per file, ~0.15 s for the
   * Debian image's 6.6k). Without it the tree stays whole and can be built again.
   */
  consumeBlobs?: boolean
  /**
   * How mke2fs -d gets the tree: 'dir' stages it as a directory (any e2fsprogs); 'tar' streams
   * it as a tar on mke2fs's stdin (e2fsprogs >= 1.47.1, see mkfsReadsTar) and creates no file
   * per image file. The image is the same either way. Default 'dir'.
   */
  input?: 'dir' | 'tar'
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** The volume label is 16 bytes in the superblock; mke2fs would truncate a longer one with a warning. */
const MAX_LABEL_BYTES = 16

/** Debugfs script lines are written in chunks of about this many characters (a few syscalls, little memory). */
const SCRIPT_CHUNK = 1 << 16

function checkOptions(opts: Ext4Options): void {
  if (!UUID.test(opts.uuid)) throw new BaleError('E_USAGE', `ext4 uuid ${JSON.stringify(opts.uuid)}: not a UUID`, { subject: 'uuid' })
  if (!UUID.test(opts.hashSeed)) throw new BaleError('E_USAGE', `ext4 hash seed ${JSON.stringify(opts.hashSeed)}: not a UUID`, { subject: 'hashSeed' })
  if (!Number.isFinite(opts.timestamp)) throw new BaleError('E_USAGE', `ext4 timestamp ${opts.timestamp}: not a number of seconds`, { subject: 'timestamp' })
  if (opts.label !== undefined && (Buffer.byteLength(opts.label) > MAX_LABEL_BYTES || /[\0\n\r]/.test(opts.label))) {
    throw new BaleError('E_USAGE', `--label ${JSON.stringify(opts.label)}: at most ${MAX_LABEL_BYTES} bytes, one line`, { subject: '--label' })
  }
}

/** Write each xattr value to its own file for `ea_set -f` (binary values cannot go on the command line). */
async function writeXattrValues(tree: FlatTree, dir: string): Promise<void> {
  await fs.mkdir(dir, { mode: 0o700 })
  const done = new Set<Inode>()
  for (const inode of tree.entries.values()) {
    if (inode.xattrs.size === 0 || done.has(inode)) continue
    done.add(inode)
    let i = 0
    for (const [, value] of sortedXattrs(inode)) await fs.writeFile(xattrValueFile(dir, inode, i++), value, { flag: 'wx', mode: 0o600 })
  }
}

/** Run through a script's lines (each is checked as it is made); returns how many there are. */
function countLines(lines: Iterable<ScriptLine>): number {
  let n = 0
  for (const _line of lines) n++
  return n
}

/** Read the inode numbers mke2fs gave the tree and patch those inodes; returns the numbers by path. */
function patchImage(tree: FlatTree, out: string, timestamp: number): Map<string, number> {
  const image = Ext4Image.open(out, true)
  try {
    const inodes = image.treeInodes(tree)
    image.patchInodes(tree, inodes, timestamp)
    return inodes
  } finally {
    image.close()
  }
}

async function writeScript(file: string, lines: Iterable<ScriptLine>): Promise<void> {
  const fh = await fs.open(file, 'wx', 0o600)
  try {
    let chunk = ''
    for (const line of lines) {
      chunk += `${line.cmd}\n`
      if (chunk.length >= SCRIPT_CHUNK) {
        await fh.write(chunk)
        chunk = ''
      }
    }
    await fh.write(chunk)
  } finally {
    await fh.close()
  }
}

/**
 * Build the ext4 image of `tree` at `outPath` (a temporary path the caller renames into place;
 * it is created or truncated, never followed if it is a symlink, and removed on failure).
 * Scratch files live in `${staging}/root` and `${staging}/ext4`, both removed before returning
 * (the root is left for the caller with `consumeBlobs`).
 */
export async function buildExt4(tree: FlatTree, outPath: string, opts: Ext4Options): Promise<Ext4Plan> {
  checkOptions(opts)
  const time = fsTimestamp(opts.timestamp)
  const plan = planExt4(tree, opts.sizeBytes)
  // Absolute paths: a relative one starting with '-' would be an option to mke2fs or debugfs.
  const out = path.resolve(outPath)
  const staging = path.resolve(tree.staging)
  const scratch = path.join(staging, 'ext4')
  const rootDir = path.join(staging, 'root')
  const xattrDir = path.join(scratch, 'xattrs')
  await fs.rm(scratch, { recursive: true, force: true })
  await fs.mkdir(scratch, { mode: 0o700 })
  let created = false
  let staged: StagedRoot | undefined
  try {
    await writeXattrValues(tree, xattrDir)
    // Every line by path is the longest form of each command: a path debugfs will be given but
    // cannot take fails here, before any image is made.
    const debugfsWork = countLines(debugfsLines(tree, { timestamp: time, xattrDir, patched: true }))

    // A sparse file of the planned size: mke2fs writes into it and assumes its zeros.
    const fh = await fs.open(out, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, 0o644).catch((e: NodeJS.ErrnoException) => {
      throw new BaleError('E_INPUT', `${outPath}: cannot create the image: ${e.code ?? e.message}`, { subject: outPath, cause: e })
    })
    created = true
    try {
      await fh.truncate(plan.sizeBytes)
    } finally {
      await fh.close()
    }
    const conf = path.join(scratch, 'mke2fs.conf')
    await fs.writeFile(conf, MKE2FS_CONF, { flag: 'wx', mode: 0o600 })
    if (opts.input !== 'tar') staged = stageRoot(tree, rootDir)
    await mkfs({
      input: opts.input === 'tar' ? { tar: treeTar(tree) } : { dir: rootDir },
      out, blocks: plan.sizeBytes / BLOCK_SIZE, inodes: plan.inodes,
      uuid: opts.uuid, hashSeed: opts.hashSeed, timestamp: time, label: opts.label,
      conf, log: path.join(scratch, 'mkfs.log'),
    })
    if (!opts.consumeBlobs) staged?.restore()
    staged = undefined

    const inodes = patchImage(tree, out, time)

    if (debugfsWork > 0) {
      const scriptOpts = { timestamp: time, xattrDir, inodes, patched: true }
      const script = path.join(scratch, 'attrs.debugfs')
      await writeScript(script, debugfsLines(tree, scriptOpts))
      const run = await debugfs({ image: out, script, write: true, timestamp: time, log: path.join(scratch, 'attrs.log') })
      // The expected lines are generated again rather than kept: the script can be as long as the tree.
      await checkDebugfsOutput(run.output, debugfsLines(tree, scriptOpts), run.code)
    }

    // The image is final. (Its SHA-256 is taken as the bundle writer compresses it.)
    await e2fsck(out, path.join(scratch, 'e2fsck.log'))
    return plan
  } catch (e) {
    if (created) await removeQuietly(out)
    throw e instanceof BaleError ? e : (fromSystemError(e, staging) ?? e)
  } finally {
    try {
      staged?.restore()
    } catch {
      // Already failing: the first error is the one to report.
    }
    await removeQuietly(scratch)
  }
}
