/**
 * ext4 on-disk constants and the metadata arithmetic of mke2fs 1.47.0, for sizing an image
 * before it is made. Every figure mirrors what mke2fs does with the options bale always passes
 * (see mkfs.ts): 4 KiB blocks, 256-byte inodes, flex_bg, 64bit, metadata_csum, resize_inode,
 * sparse_super, an explicit journal size.
 */

/** Block size: the page size of x86_64 and arm64 guests, the largest block ext4 mounts everywhere. */
export const BLOCK_SIZE = 4096

/** Inode size: 256 bytes leaves room for the extra time fields (crtime, post-2038 epochs) and small in-inode xattrs. */
export const INODE_SIZE = 256

/** One block bitmap of 4096 bytes covers 8 × 4096 blocks: the blocks (and the most inodes) per group. */
export const BLOCKS_PER_GROUP = 8 * BLOCK_SIZE

/** Inodes 1–10 are reserved by ext4 and 11 is lost+found; the first inode of the tree's own files is 12. */
export const RESERVED_INODES = 11

/** mke2fs makes lost+found 16 KiB so that e2fsck can reconnect files without allocating blocks. */
export const LOST_FOUND_BLOCKS = 4

/** A symlink target shorter than the 60 bytes of i_block is stored in the inode ("fast" symlink); longer ones take a block. */
export const FAST_SYMLINK_MAX = 59

/** Group descriptors are 64 bytes with the 64bit feature. */
const GROUP_DESC_SIZE = 64

/** A directory entry: 8-byte header + name, padded to 4 bytes. */
export function direntBytes(nameBytes: number): number {
  return (8 + nameBytes + 3) & ~3
}

/** metadata_csum puts a 12-byte checksum tail in every directory block. */
const DIR_BLOCK_TAIL = 12

/** The longest entry (255-byte name) is 264 bytes; entries never straddle blocks, so each block may waste up to that much. */
const MAX_DIRENT = direntBytes(255)

/**
 * Blocks of a directory whose entries (including '.' and '..') take `bytes`. Entries are packed
 * first-fit by libext2fs; a block may waste up to one maximal entry. A directory of more than one
 * block gets one more for the htree root that the kernel or e2fsck -D may add later.
 */
export function dirBlocks(bytes: number): number {
  const usable = BLOCK_SIZE - DIR_BLOCK_TAIL - MAX_DIRENT
  const blocks = Math.max(1, Math.ceil(bytes / usable))
  return blocks > 1 ? blocks + 1 : blocks
}

/** Extents hold at most 32768 blocks (15-bit length); four fit in the inode, 340 in each 4 KiB extent block. */
const MAX_EXTENT_BLOCKS = 32768
const INODE_EXTENTS = 4
const EXTENTS_PER_BLOCK = (BLOCK_SIZE - 12) / 12

/** Data plus extent-tree blocks of a regular file of `size` bytes. */
export function fileBlocks(size: number): number {
  const data = Math.ceil(size / BLOCK_SIZE)
  // A file may be split once more at every group it crosses (backup superblocks, flex_bg metadata),
  // so count twice the minimum number of extents, plus one.
  const extents = 2 * Math.ceil(data / MAX_EXTENT_BLOCKS) + 1
  const index = extents > INODE_EXTENTS ? Math.ceil(extents / EXTENTS_PER_BLOCK) + 1 : 0
  return data + index
}

/**
 * Journal size in blocks for a filesystem of `blocks` blocks: ext2fs_default_journal_size() of
 * e2fsprogs 1.47.0 up to its 16 GiB tier, capped at 64 MiB (a VM's root disk commits little at a
 * time). bale passes it to mke2fs explicitly (-J size=) so that the plan and the image agree.
 * The tiers are whole groups, so the blocks mke2fs keeps (keptBlocks) are in the same tier.
 */
export function journalBlocks(blocks: number): number {
  if (blocks < 32768) return 1024 // < 128 MiB: 4 MiB, the smallest journal mke2fs makes
  if (blocks < 256 * 1024) return 4096 // < 1 GiB: 16 MiB
  if (blocks < 512 * 1024) return 8192 // < 2 GiB: 32 MiB
  return 16384 // 64 MiB
}

/** Groups 0 and 1 and the powers of 3, 5 and 7 carry superblock and descriptor backups (sparse_super). */
export function isBackupGroup(g: number): boolean {
  if (g <= 1) return true
  for (const base of [3, 5, 7]) {
    let n = base
    while (n < g) n *= base
    if (n === g) return true
  }
  return false
}

export function backupGroups(groups: number): number {
  let n = 0
  for (let g = 0; g < groups; g++) if (isBackupGroup(g)) n++
  return n
}

interface Layout {
  groups: number
  /** Superblock copy, group descriptors and descriptors reserved for online resize, in each backup group. */
  perBackup: number
  /** Inode-table blocks of each group. */
  tableBlocks: number
}

function layout(blocks: number, inodes: number): Layout {
  const groups = Math.ceil(blocks / BLOCKS_PER_GROUP)
  const descPerBlock = BLOCK_SIZE / GROUP_DESC_SIZE
  const descBlocks = Math.ceil(groups / descPerBlock)
  // calc_reserved_gdt_blocks(): room to grow to 1024× the size or 2^32 blocks, at most one block of pointers.
  const maxBlocks = Math.min(2 ** 32 - 1, blocks * 1024)
  const reservedDesc = Math.min(BLOCK_SIZE / 4, Math.ceil(Math.ceil(maxBlocks / BLOCKS_PER_GROUP) / descPerBlock) - descBlocks)
  // Inodes per group are rounded up to fill whole inode-table blocks.
  const inodesPerBlock = BLOCK_SIZE / INODE_SIZE
  const inodesPerGroup = Math.ceil(Math.ceil(inodes / groups) / inodesPerBlock) * inodesPerBlock
  return { groups, perBackup: 1 + descBlocks + reservedDesc, tableBlocks: (inodesPerGroup * INODE_SIZE) / BLOCK_SIZE }
}

/**
 * The blocks mke2fs keeps of `blocks`: ext2fs_initialize() drops a last, partial group too small
 * for its own bitmaps, inode table (and backups) plus 50 blocks, and lays out the rest again.
 */
export function keptBlocks(blocks: number, inodes: number): number {
  const rem = blocks % BLOCKS_PER_GROUP
  const l = layout(blocks, inodes)
  if (l.groups === 1 || rem === 0) return blocks
  const overhead = 2 + l.tableBlocks + (isBackupGroup(l.groups - 1) ? l.perBackup : 0)
  return rem < overhead + 50 ? blocks - rem : blocks
}

/**
 * Blocks mke2fs spends on metadata for a filesystem of `blocks` blocks (as kept, see keptBlocks)
 * and `inodes` inodes: superblocks, group descriptors and the descriptor blocks reserved for
 * online resize (in every backup group), block and inode bitmaps and inode tables (in every
 * group), the resize inode's indirect block, and the journal. Directory, file and lost+found
 * blocks are counted by the caller. Checked against mke2fs 1.47.0 from 9 MiB to 9 GiB: at most
 * 2 blocks over.
 */
export function metadataBlocks(blocks: number, inodes: number): number {
  const l = layout(blocks, inodes)
  // +1: the resize inode's double-indirect block; +2: spare (blocks this arithmetic may miss).
  return backupGroups(l.groups) * l.perBackup + l.groups * (2 + l.tableBlocks) + journalBlocks(blocks) + 3
}

/**
 * The fewest blocks that give `inodes` inodes: a group holds at most 32768 inodes (one bitmap
 * block), so more inodes need more groups, and mke2fs drops a last group too small for its own
 * inode table (2048 blocks for a full group) plus bitmaps and a little data.
 */
export function minBlocksForInodes(inodes: number): number {
  const groups = Math.ceil(inodes / BLOCKS_PER_GROUP)
  return groups > 1 ? (groups - 1) * BLOCKS_PER_GROUP + 4096 : 0
}
