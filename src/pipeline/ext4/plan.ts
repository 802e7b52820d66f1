import { BaleError } from '../../lib/errors.js'
import { baseName, parentOf, type FlatTree, type Inode } from '../tree.js'
import {
  BLOCK_SIZE,
  FAST_SYMLINK_MAX,
  LOST_FOUND_BLOCKS,
  RESERVED_INODES,
  dirBlocks,
  direntBytes,
  fileBlocks,
  journalBlocks,
  keptBlocks,
  metadataBlocks,
  minBlocksForInodes,
} from './geometry.js'

export interface Ext4Plan {
  sizeBytes: number
  inodes: number
  blockSize: number
}

/** What the tree itself occupies: blocks of data, directories, long symlinks and xattrs; inodes in use. */
export interface Ext4Usage {
  blocks: number
  inodes: number
}

/** Free space left for the running VM (logs, caches, package installs): a quarter of the tree, at least 64 MiB. */
const FREE_RATIO = 0.25
const FREE_MIN_BLOCKS = (64 * 1024 * 1024) / BLOCK_SIZE

/** Spare inodes for the running VM: a quarter of those in use, at least 1024. */
const INODE_HEADROOM_RATIO = 0.25
const INODE_HEADROOM_MIN = 1024

/** mke2fs's default inode_ratio: one inode per 16 KiB, so a large --size is not starved of inodes. */
const BYTES_PER_INODE = 16384

/**
 * Slack on top of the estimate for a --size at the minimum: 1% of the tree plus 1 MiB covers
 * directory blocks packed less densely than estimated and files split at group boundaries.
 */
const SLACK_RATIO = 0.01
const SLACK_MIN_BLOCKS = 256

/** Planned sizes are rounded up to 1 MiB: whole qcow2 clusters (64 KiB) and readable numbers. */
const ROUND_BLOCKS = (1024 * 1024) / BLOCK_SIZE

/** debugfs mknod parses major and minor with a 65535 limit (e2fsprogs 1.47.0 do_mknod). */
const MAX_DEV_NUMBER = 65535

/** ext4 stores uid and gid in 32 bits; 2^32-1 is (uid_t)-1, "no owner", which chown refuses. */
const MAX_ID = 2 ** 32 - 2

/** ext4 names are at most 255 bytes (ext4_dir_entry_2.name_len is a byte). */
const MAX_NAME_BYTES = 255

/**
 * Check the tree for what ext4 or debugfs cannot represent, in one pass, before any work:
 * a root directory, every parent a directory, no hard-linked directory, lost+found a directory,
 * symlinks with targets, device numbers debugfs can write, ids ext4 can store, names of at most
 * 255 bytes without NUL, newline or carriage return.
 */
export function validateTree(tree: FlatTree): void {
  const root = tree.entries.get('')
  if (root?.kind !== 'dir') throw new BaleError('E_INPUT', 'image root: the tree has no root directory', { subject: '/' })
  const dirPaths = new Map<Inode, string>()
  for (const [p, inode] of tree.entries) {
    const where = `/${p}`
    if (p !== '') {
      const name = baseName(p)
      if (/[\0\n\r]/.test(name)) throw new BaleError('E_UNSAFE_PATH', `${JSON.stringify(where)}: name contains NUL, newline or carriage return`, { subject: where })
      if (Buffer.byteLength(name) > MAX_NAME_BYTES) throw new BaleError('E_UNSAFE_PATH', `${where}: name longer than ${MAX_NAME_BYTES} bytes`, { subject: where })
      const parent = tree.entries.get(parentOf(p))
      if (parent?.kind !== 'dir') throw new BaleError('E_INPUT', `${where}: parent is not a directory in the tree`, { subject: where })
    }
    if (inode.kind === 'dir') {
      const other = dirPaths.get(inode)
      if (other !== undefined) throw new BaleError('E_INPUT', `${where}: a directory cannot be hard-linked (also at /${other})`, { subject: where })
      dirPaths.set(inode, p)
    }
    if (p === 'lost+found' && inode.kind !== 'dir') {
      throw new BaleError('E_INPUT', `${where}: must be a directory in an ext4 image (mke2fs creates it)`, { subject: where })
    }
    if (inode.kind === 'symlink' && !inode.linkTarget) throw new BaleError('E_INPUT', `${where}: symlink without a target`, { subject: where })
    if (inode.kind === 'char' || inode.kind === 'block') {
      const { devMajor, devMinor } = inode
      if (!isIntIn(devMajor, 0, MAX_DEV_NUMBER) || !isIntIn(devMinor, 0, MAX_DEV_NUMBER)) {
        throw new BaleError('E_INPUT', `${where}: device number ${devMajor ?? '?'}:${devMinor ?? '?'} is outside 0..${MAX_DEV_NUMBER}`, { subject: where })
      }
    }
    if (!isIntIn(inode.uid, 0, MAX_ID) || !isIntIn(inode.gid, 0, MAX_ID)) {
      throw new BaleError('E_INPUT', `${where}: owner ${inode.uid}:${inode.gid} cannot be stored in ext4`, { subject: where })
    }
    if (!isIntIn(inode.mode, 0, 0o7777)) throw new BaleError('E_INPUT', `${where}: mode ${inode.mode} has bits outside 07777`, { subject: where })
  }
}

function isIntIn(n: number | undefined, lo: number, hi: number): n is number {
  return n !== undefined && Number.isInteger(n) && n >= lo && n <= hi
}

/** Blocks and inodes the tree occupies in ext4 (each Inode counted once however many names it has). */
export function ext4Usage(tree: FlatTree): Ext4Usage {
  const seen = new Set<Inode>()
  const dirEntryBytes = new Map<string, number>()
  let blocks = LOST_FOUND_BLOCKS
  let inodes = 0
  for (const [p, inode] of tree.entries) {
    if (p !== '') {
      const parent = parentOf(p)
      dirEntryBytes.set(parent, (dirEntryBytes.get(parent) ?? 0) + direntBytes(Buffer.byteLength(baseName(p))))
    }
    if (seen.has(inode)) continue
    seen.add(inode)
    inodes++
    if (inode.kind === 'file') blocks += fileBlocks(inode.size)
    else if (inode.kind === 'symlink' && Buffer.byteLength(inode.linkTarget ?? '') > FAST_SYMLINK_MAX) blocks += 1
    // One xattr block per inode with xattrs: small ones fit in the inode, but counting a block is safe.
    if (inode.xattrs.size > 0) blocks += 1
  }
  // mke2fs's own lost+found entry in the root, when the tree does not bring one.
  if (!tree.entries.has('lost+found')) dirEntryBytes.set('', (dirEntryBytes.get('') ?? 0) + direntBytes('lost+found'.length))
  const dotEntries = direntBytes(1) + direntBytes(2)
  for (const [p, inode] of tree.entries) {
    if (inode.kind === 'dir') blocks += dirBlocks(dotEntries + (dirEntryBytes.get(p) ?? 0))
  }
  return { blocks, inodes }
}

/** Inode count for a filesystem of `blocks` blocks holding `used` inodes of the tree. */
export function inodeCount(used: number, blocks: number): number {
  const headroom = Math.max(Math.ceil(used * INODE_HEADROOM_RATIO), INODE_HEADROOM_MIN)
  return Math.max(used + RESERVED_INODES + headroom, Math.floor((blocks * BLOCK_SIZE) / BYTES_PER_INODE))
}

/**
 * Blocks a filesystem of `total` blocks needs to hold `usage` with `free` blocks to spare, or
 * more: its metadata, and enough free blocks when the journal is made (mke2fs refuses a journal
 * larger than half of the free blocks), and enough groups for its inodes.
 */
function blocksNeeded(usage: Ext4Usage, total: number, free: number): number {
  const inodes = inodeCount(usage.inodes, total)
  const kept = keptBlocks(total, inodes)
  const meta = metadataBlocks(kept, inodes)
  const journal = journalBlocks(kept)
  // Blocks mke2fs drops from a small last group are needed on top, since they hold nothing.
  return Math.max(usage.blocks + meta + free, meta + journal + 1, minBlocksForInodes(inodes)) + (total - kept)
}

/**
 * The smallest total, a multiple of `round` blocks, that holds `usage` with `free` spare blocks:
 * a fixed point, since metadata grows with the total (and the journal steps up at thresholds).
 */
function smallestTotal(usage: Ext4Usage, free: number, round = 1): number {
  let total = Math.ceil((usage.blocks + free) / round) * round
  // Each step only grows the total and the metadata grows far slower than the total, so this
  // settles in a few steps; 64 is a bound that is never reached.
  for (let i = 0; i < 64; i++) {
    const need = blocksNeeded(usage, total, free)
    if (need <= total) return total
    total = Math.ceil(need / round) * round
  }
  throw new Error(`ext4 sizing did not converge for ${usage.blocks} blocks, ${usage.inodes} inodes`)
}

function slack(usage: Ext4Usage): number {
  return Math.max(Math.ceil(usage.blocks * SLACK_RATIO), SLACK_MIN_BLOCKS)
}

/** Smallest image size in bytes that holds the tree: what `--size` must be at least. */
export function minimumExt4Size(tree: FlatTree): number {
  validateTree(tree)
  const usage = ext4Usage(tree)
  return smallestTotal(usage, slack(usage)) * BLOCK_SIZE
}

/**
 * Size and inode count of the image for this tree: the tree's blocks, metadata and journal,
 * plus free space for the running VM; or `sizeOverride` (--size, in bytes, rounded up to a
 * whole block) when it is large enough, else a BaleError naming --size and the minimum.
 */
export function planExt4(tree: FlatTree, sizeOverride?: number): Ext4Plan {
  validateTree(tree)
  const usage = ext4Usage(tree)
  if (sizeOverride !== undefined) {
    if (!Number.isSafeInteger(sizeOverride) || sizeOverride <= 0) {
      throw new BaleError('E_USAGE', `--size ${sizeOverride}: must be a positive number of bytes`, { subject: '--size' })
    }
    const total = Math.ceil(sizeOverride / BLOCK_SIZE)
    if (blocksNeeded(usage, total, slack(usage)) > total) {
      const min = smallestTotal(usage, slack(usage)) * BLOCK_SIZE
      throw new BaleError('E_USAGE', `--size ${sizeOverride}: too small for this image, which needs at least ${min} bytes (${Math.ceil(min / 2 ** 20)} MiB)`, { subject: '--size' })
    }
    return { sizeBytes: total * BLOCK_SIZE, inodes: inodeCount(usage.inodes, total), blockSize: BLOCK_SIZE }
  }
  const free = Math.max(Math.ceil(usage.blocks * FREE_RATIO), FREE_MIN_BLOCKS)
  const rounded = smallestTotal(usage, free + slack(usage), ROUND_BLOCKS)
  // When mke2fs would drop a small last group, leave it out of the file too (whole groups are whole MiB).
  const total = keptBlocks(rounded, inodeCount(usage.inodes, rounded))
  return { sizeBytes: total * BLOCK_SIZE, inodes: inodeCount(usage.inodes, total), blockSize: BLOCK_SIZE }
}
