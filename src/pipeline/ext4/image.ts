/**
 * The finished image, read and patched directly: the inode numbers mke2fs -d gave the tree, and
 * every one of those inodes' owner, mode and times written in place.
 *
 * Both used to be debugfs passes (an `ls -p` of every directory, then six `sif` lines per inode):
 * two more processes, a script as long as the tree written and its output parsed back. On the
 * 6.6k-entry Debian benchmark image they took 0.4–0.6 s together on a busy 2-core machine; this
 * takes 0.1–0.2 s there, and the inode bytes are the same (test/integration/ext4-patch-oracle).
 * debugfs still does what only it can (devices, fifos, xattrs, extra names: debugfs.ts), and
 * e2fsck -fn still checks the whole image afterwards.
 *
 * Only the layout bale's own mke2fs configuration makes is understood (tools.ts: 4 KiB blocks,
 * extents, 64bit, flex_bg, metadata_csum, 256-byte inodes). Anything else — another block size,
 * inline_data, meta_bg, a journal to replay, quota files that an owner change would invalidate —
 * is refused as E_TOOL rather than half-read. On-disk layouts: the kernel's Documentation/
 * filesystems/ext4 and e2fsprogs's lib/ext2fs/ext2_fs.h.
 *
 * All I/O is synchronous and positioned: each step has nothing else to do meanwhile, and a
 * thread-pool round trip per directory block would cost more than the read. Memory is bounded by
 * one inode-table chunk and one directory chunk, whatever the image size.
 */
import { closeSync, constants, fstatSync, openSync, readSync, writeSync } from 'node:fs'
import { crc32cRaw } from '../../lib/crc32c.js'
import { BaleError } from '../../lib/errors.js'
import { baseName, parentOf, type FlatTree, type Inode } from '../tree.js'
import { TYPE_BITS, ext4Time, fsTimestamp, madeByMkfs, sortedPaths } from './debugfs.js'
import { BLOCK_SIZE } from './geometry.js'

/** The primary superblock starts 1024 bytes into the device (the boot sector area before it). */
const SUPERBLOCK_OFFSET = 1024
const SUPERBLOCK_SIZE = 1024
const EXT4_MAGIC = 0xef53
/** s_rev_level 1 (EXT2_DYNAMIC_REV) is the first with a variable inode size and feature flags. */
const DYNAMIC_REV = 1
/** The root directory is always inode 2 (1 holds bad blocks). */
const ROOT_INO = 2
/** s_checksum_type 1 is crc32c, the only checksum ext4 defines. */
const CSUM_CRC32C = 1

// Feature flags (ext2_fs.h). compat features are, by ext4's rules, safe to ignore when reading
// and writing inodes; incompat and ro_compat ones are checked against what is understood here.
const INCOMPAT_FILETYPE = 0x2
const INCOMPAT_EXTENTS = 0x40
const INCOMPAT_64BIT = 0x80
const INCOMPAT_FLEX_BG = 0x200
const INCOMPAT_CSUM_SEED = 0x2000
const INCOMPAT_NAMES: Record<number, string> = {
  0x1: 'compression', 0x4: 'needs_recovery', 0x8: 'journal_dev', 0x10: 'meta_bg', 0x100: 'mmp', 0x400: 'ea_inode',
  0x1000: 'dirdata', 0x4000: 'large_dir', 0x8000: 'inline_data', 0x10000: 'encrypt', 0x20000: 'casefold',
}
const INCOMPAT_KNOWN = INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG | INCOMPAT_CSUM_SEED
const RO_COMPAT_METADATA_CSUM = 0x400
/** sparse_super, large_file, huge_file, gdt_csum, dir_nlink, extra_isize, metadata_csum: none changes inode or directory layout as read here. */
const RO_COMPAT_KNOWN = 0x1 | 0x2 | 0x8 | 0x10 | 0x20 | 0x40 | RO_COMPAT_METADATA_CSUM
const RO_COMPAT_NAMES: Record<number, string> = {
  0x4: 'btree_dir', 0x80: 'has_snapshot', 0x100: 'quota', 0x200: 'bigalloc', 0x800: 'replica', 0x1000: 'read-only',
  0x2000: 'project', 0x4000: 'shared_blocks', 0x8000: 'verity', 0x10000: 'orphan_present',
}

// Inode fields (struct ext2_inode_large).
const I_MODE = 0x00
const I_UID = 0x02
const I_ATIME = 0x08
const I_CTIME = 0x0c
const I_MTIME = 0x10
const I_GID = 0x18
const I_FLAGS = 0x20
const I_BLOCK = 0x28
/** i_block is 15 32-bit words: the extent tree's root node when EXTENTS_FL is set. */
const I_BLOCK_BYTES = 60
const I_GENERATION = 0x64
const I_UID_HIGH = 0x78
const I_GID_HIGH = 0x7a
const I_CHECKSUM_LO = 0x7c
/** The large-inode part starts after the 128 bytes of the original inode, with its own length. */
const GOOD_OLD_INODE_SIZE = 128
const I_EXTRA_ISIZE = 0x80
const I_CHECKSUM_HI = 0x82
const I_CTIME_EXTRA = 0x84
const I_MTIME_EXTRA = 0x88
const I_ATIME_EXTRA = 0x8c
/** i_extra_isize must reach past i_atime_extra (0x8c + 4 - 0x80) for the times to hold post-2038 epochs. */
const MIN_EXTRA_ISIZE = 16
/** What a 16-bit checksum field counts as while the checksum is computed. */
const ZERO16 = Buffer.alloc(2)
/** The smallest power-of-two inode size that holds the fields up to i_atime_extra (0x90 bytes). */
const MIN_INODE_SIZE = 256
/** i_checksum_hi exists when i_extra_isize covers it (0x82 + 2 - 0x80). */
const CHECKSUM_HI_EXTRA_END = 4
/** The low two bits of an *_extra time field extend the 32-bit seconds (epochs); the rest is nanoseconds. */
const EPOCH_MASK = 3
const S_IFMT = 0o170000
const S_IFDIR = 0o040000
const EXTENTS_FL = 0x80000

// Extent tree (ext4_extents.h): a 12-byte header, then 12-byte entries.
const EXTENT_MAGIC = 0xf30a
const EXTENT_HEADER = 12
const EXTENT_ENTRY = 12
/** The kernel refuses deeper trees (EXT4_MAX_EXTENT_DEPTH); it also bounds a corrupt tree's recursion. */
const MAX_EXTENT_DEPTH = 5
/** An extent length above 32768 marks an uninitialized extent (length − 32768), which reads as zeros. */
const EXTENT_INIT_MAX = 32768

/** Directory blocks are read this many at a time (256 KiB): few syscalls, bounded memory. */
const DIR_CHUNK_BLOCKS = 64
/** Inode tables are read, patched and written back in chunks of at most 4 MiB (a 1 GiB image's group is 2 MiB). */
const ITABLE_CHUNK_BYTES = 4 << 20
/** A directory entry's header: inode u32, rec_len u16, name_len u8, file_type u8. */
const DIRENT_HEADER = 8

interface Superblock {
  blockSize: number
  blocksCount: number
  inodesCount: number
  inodesPerGroup: number
  inodeSize: number
  descSize: number
  groupCount: number
  firstDataBlock: number
  /** The metadata_csum seed (crc32c of the UUID, or s_checksum_seed); undefined without metadata_csum. */
  csumSeed: number | undefined
}

/** One directory entry as stored: its inode and its name's bytes (a view, valid until the next entry). */
interface Dirent {
  ino: number
  name: Buffer
}

/** A name from the image for a message: UTF-8 if it is, else with its bytes escaped as \xNN. */
function showName(name: Buffer): string {
  try {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(name)
  } catch {
    let s = ''
    for (const b of name) s += b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`
    return s
  }
}

/** A tree name's bytes as a string key (latin1 maps each byte to one char): compared as bytes, never decoded. */
function nameKey(name: string | Buffer): string {
  return (typeof name === 'string' ? Buffer.from(name, 'utf8') : name).toString('latin1')
}

function where(p: string): string {
  return `/${p}`
}

/** ext4's time encoding: the low 32 bits as a signed value in i_*time, the epoch (upper bits) in *_extra. */
export function encodeTime(t: number): { low: number; epoch: number } {
  const low = t % 2 ** 32
  // (t - (s32)t) >> 32, as the kernel and debugfs's parse_time compute it: a low half ≥ 2^31 reads as negative.
  const epoch = (Math.floor(t / 2 ** 32) + (low >= 2 ** 31 ? 1 : 0)) & EPOCH_MASK
  return { low, epoch }
}

/** An ext4 image opened for reading its directories and patching its inodes in place. */
export class Ext4Image {
  private readonly sb: Superblock
  /** Scratch for an inode number in little-endian, as the checksum takes it. */
  private readonly le32 = Buffer.alloc(4)
  /** Inode table block of each group. */
  private readonly itables: number[]

  private constructor(
    private readonly fd: number,
    readonly file: string,
  ) {
    this.sb = this.readSuperblock()
    this.itables = this.readGroupDescriptors()
  }

  /**
   * Open `file` (never through a symlink; it must be a regular file), read-only unless `write`.
   * The superblock and group descriptors are checked here: anything not understood is E_TOOL.
   */
  static open(file: string, write: boolean): Ext4Image {
    let fd: number
    try {
      fd = openSync(file, (write ? constants.O_RDWR : constants.O_RDONLY) | constants.O_NOFOLLOW)
    } catch (e) {
      throw new BaleError('E_TOOL', `${file}: cannot open the image: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, { subject: file, cause: e })
    }
    try {
      if (!fstatSync(fd).isFile()) throw new BaleError('E_TOOL', `${file}: the image is not a regular file`, { subject: file })
      return new Ext4Image(fd, file)
    } catch (e) {
      closeSync(fd)
      throw e
    }
  }

  close(): void {
    closeSync(this.fd)
  }

  /** Inodes in the image (numbered 1 to this). */
  get inodeCount(): number {
    return this.sb.inodesCount
  }

  private fail(what: string): never {
    throw new BaleError('E_TOOL', `${this.file}: ${what}`, { subject: this.file })
  }

  private read(buf: Buffer, pos: number): void {
    let done = 0
    while (done < buf.length) {
      const n = readSync(this.fd, buf, done, buf.length - done, pos + done)
      if (n === 0) this.fail(`short read at byte ${pos + done}: the image ends early`)
      done += n
    }
  }

  private write(buf: Buffer, pos: number): void {
    let done = 0
    while (done < buf.length) done += writeSync(this.fd, buf, done, buf.length - done, pos + done)
  }

  private readSuperblock(): Superblock {
    const s = Buffer.alloc(SUPERBLOCK_SIZE)
    this.read(s, SUPERBLOCK_OFFSET)
    if (s.readUInt16LE(0x38) !== EXT4_MAGIC) this.fail('not an ext4 image (no superblock magic)')
    const incompat = s.readUInt32LE(0x60)
    const roCompat = s.readUInt32LE(0x64)
    const refuse = (flags: number, known: number, names: Record<number, string>, kind: string): void => {
      const extra = flags & ~known
      if (extra === 0) return
      const bit = extra & -extra
      this.fail(`ext4 ${kind} feature ${names[bit] ?? `0x${bit.toString(16)}`} is not supported by bale's image reader`)
    }
    refuse(incompat, INCOMPAT_KNOWN, INCOMPAT_NAMES, 'incompat')
    refuse(roCompat, RO_COMPAT_KNOWN, RO_COMPAT_NAMES, 'ro_compat')
    for (const [bit, name] of [[INCOMPAT_FILETYPE, 'filetype'], [INCOMPAT_EXTENTS, 'extent']] as const) {
      if ((incompat & bit) === 0) this.fail(`ext4 feature ${name} is missing; bale's image reader needs it`)
    }
    if (s.readUInt32LE(0x4c) < DYNAMIC_REV) this.fail('ext2 revision 0 is not supported by bale\'s image reader')
    const logBlock = s.readUInt32LE(0x18)
    const blockSize = logBlock < 7 ? 1024 << logBlock : 0
    if (blockSize !== BLOCK_SIZE) this.fail(`block size ${blockSize || `2^(10+${logBlock})`}: bale's image reader handles ${BLOCK_SIZE} only`)
    const is64 = (incompat & INCOMPAT_64BIT) !== 0
    const inodeSize = s.readUInt16LE(0x58)
    if (inodeSize < MIN_INODE_SIZE || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) {
      this.fail(`inode size ${inodeSize}: bale's image reader needs a power of two from ${MIN_INODE_SIZE} to the block size`)
    }
    const descSize = is64 ? s.readUInt16LE(0xfe) : 32
    if (descSize < (is64 ? 64 : 32) || descSize > blockSize || (descSize & (descSize - 1)) !== 0) this.fail(`group descriptor size ${descSize} is not valid`)
    const blocksCount = s.readUInt32LE(0x04) + (is64 ? s.readUInt32LE(0x150) * 2 ** 32 : 0)
    const firstDataBlock = s.readUInt32LE(0x14)
    const blocksPerGroup = s.readUInt32LE(0x20)
    const inodesPerGroup = s.readUInt32LE(0x28)
    const inodesCount = s.readUInt32LE(0x00)
    if (blocksPerGroup === 0 || inodesPerGroup === 0 || blocksCount <= firstDataBlock) this.fail('superblock geometry is not valid (zero blocks or inodes per group)')
    const groupCount = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup)
    if (inodesCount !== groupCount * inodesPerGroup) this.fail(`superblock says ${inodesCount} inodes, ${groupCount} groups of ${inodesPerGroup}`)
    let csumSeed: number | undefined
    if ((roCompat & RO_COMPAT_METADATA_CSUM) !== 0) {
      if (s.readUInt8(0x175) !== CSUM_CRC32C) this.fail(`metadata checksum type ${s.readUInt8(0x175)} is not crc32c`)
      // The superblock's own checksum covers everything before it (s_checksum at 0x3fc).
      if (crc32cRaw(0xffffffff, s.subarray(0, 0x3fc)) !== s.readUInt32LE(0x3fc)) this.fail('superblock checksum does not match')
      csumSeed = (incompat & INCOMPAT_CSUM_SEED) !== 0 ? s.readUInt32LE(0x270) : crc32cRaw(0xffffffff, s.subarray(0x68, 0x78))
    }
    return { blockSize, blocksCount, inodesCount, inodesPerGroup, inodeSize, descSize, groupCount, firstDataBlock, csumSeed }
  }

  /** The inode table block of every group (bg_inode_table_lo at 0x08, _hi at 0x28 in 64-byte descriptors). */
  private readGroupDescriptors(): number[] {
    const { blockSize, descSize, groupCount, firstDataBlock, inodesPerGroup, inodeSize, blocksCount } = this.sb
    // Without meta_bg (refused above) the descriptors follow the superblock's block.
    const gdt = Buffer.alloc(groupCount * descSize)
    this.read(gdt, (firstDataBlock + 1) * blockSize)
    const tableBlocks = Math.ceil((inodesPerGroup * inodeSize) / blockSize)
    const tables: number[] = []
    for (let g = 0; g < groupCount; g++) {
      const d = g * descSize
      const block = gdt.readUInt32LE(d + 0x08) + (descSize >= 64 ? gdt.readUInt32LE(d + 0x28) * 2 ** 32 : 0)
      if (block <= firstDataBlock || block + tableBlocks > blocksCount) this.fail(`group ${g}: inode table at block ${block} is outside the image`)
      tables.push(block)
    }
    return tables
  }

  /** Byte offset of inode `ino` (1-based) in the image. */
  private inodeOffset(ino: number): number {
    const { inodesPerGroup, inodeSize, blockSize, inodesCount } = this.sb
    if (!Number.isInteger(ino) || ino < 1 || ino > inodesCount) this.fail(`inode ${ino} is out of range (1..${inodesCount})`)
    const group = Math.floor((ino - 1) / inodesPerGroup)
    return (this.itables[group] ?? 0) * blockSize + ((ino - 1) % inodesPerGroup) * inodeSize
  }

  readInode(ino: number): Buffer {
    const buf = Buffer.alloc(this.sb.inodeSize)
    this.read(buf, this.inodeOffset(ino))
    return buf
  }

  /**
   * The metadata_csum checksum of an on-disk inode: crc32c chained from the filesystem seed over
   * the inode number and i_generation (both little-endian), then over the whole inode with its
   * checksum fields read as zero. Undefined without metadata_csum.
   */
  private inodeChecksum(ino: number, raw: Buffer): number | undefined {
    if (this.sb.csumSeed === undefined) return undefined
    this.le32.writeUInt32LE(ino)
    let crc = crc32cRaw(this.sb.csumSeed, this.le32)
    crc = crc32cRaw(crc, raw.subarray(I_GENERATION, I_GENERATION + 4))
    // In pieces around the checksum fields rather than on a zeroed copy: no allocation per inode.
    crc = crc32cRaw(crc, raw.subarray(0, I_CHECKSUM_LO))
    crc = crc32cRaw(crc, ZERO16)
    if (!this.hasChecksumHi(raw)) return crc32cRaw(crc, raw.subarray(I_CHECKSUM_LO + 2))
    crc = crc32cRaw(crc, raw.subarray(I_CHECKSUM_LO + 2, I_CHECKSUM_HI))
    crc = crc32cRaw(crc, ZERO16)
    return crc32cRaw(crc, raw.subarray(I_CHECKSUM_HI + 2))
  }

  private hasChecksumHi(raw: Buffer): boolean {
    return this.sb.inodeSize > GOOD_OLD_INODE_SIZE && raw.readUInt16LE(I_EXTRA_ISIZE) >= CHECKSUM_HI_EXTRA_END
  }

  private storedChecksum(raw: Buffer): number {
    const lo = raw.readUInt16LE(I_CHECKSUM_LO)
    return this.hasChecksumHi(raw) ? (lo | (raw.readUInt16LE(I_CHECKSUM_HI) << 16)) >>> 0 : lo
  }

  /** Whether the inode's stored checksum matches its bytes (always true without metadata_csum). */
  checksumMatches(ino: number, raw: Buffer): boolean {
    const crc = this.inodeChecksum(ino, raw)
    if (crc === undefined) return true
    return this.storedChecksum(raw) === (this.hasChecksumHi(raw) ? crc : crc & 0xffff)
  }

  private setChecksum(ino: number, raw: Buffer): void {
    const crc = this.inodeChecksum(ino, raw)
    if (crc === undefined) return
    raw.writeUInt16LE(crc & 0xffff, I_CHECKSUM_LO)
    if (this.hasChecksumHi(raw)) raw.writeUInt16LE(crc >>> 16, I_CHECKSUM_HI)
  }

  /** The leaf extents (logical block, length, physical block) of an inode's extent tree, in order. */
  private *extents(ino: number, node: Buffer, depth: number | undefined): Generator<{ lblk: number; len: number; pblk: number }> {
    const bad = (why: string): never => this.fail(`inode ${ino}: extent tree ${why}`)
    if (node.readUInt16LE(0) !== EXTENT_MAGIC) bad('node has no magic (0xf30a)')
    const entries = node.readUInt16LE(2)
    const max = node.readUInt16LE(4)
    const d = node.readUInt16LE(6)
    if (max > (node.length - EXTENT_HEADER) / EXTENT_ENTRY || entries > max) bad(`node claims ${entries} of ${max} entries`)
    if (d > MAX_EXTENT_DEPTH || (depth !== undefined && d !== depth)) bad(`node has depth ${d}${depth === undefined ? '' : `, expected ${depth}`}`)
    for (let i = 0; i < entries; i++) {
      const e = EXTENT_HEADER + i * EXTENT_ENTRY
      if (d === 0) {
        const rawLen = node.readUInt16LE(e + 4)
        const pblk = node.readUInt16LE(e + 6) * 2 ** 32 + node.readUInt32LE(e + 8)
        if (rawLen > EXTENT_INIT_MAX) bad('has an uninitialized extent in a directory')
        if (rawLen === 0 || pblk + rawLen > this.sb.blocksCount) bad(`extent at block ${pblk} (${rawLen} blocks) is outside the image`)
        yield { lblk: node.readUInt32LE(e), len: rawLen, pblk }
      } else {
        const child = node.readUInt32LE(e + 4) + node.readUInt16LE(e + 8) * 2 ** 32
        if (child <= this.sb.firstDataBlock || child >= this.sb.blocksCount) bad(`index points at block ${child}, outside the image`)
        const buf = Buffer.alloc(this.sb.blockSize)
        this.read(buf, child * this.sb.blockSize)
        yield* this.extents(ino, buf, d - 1)
      }
    }
  }

  /**
   * Every live entry of directory inode `ino`, block by block in logical order. A plain walk
   * along rec_len yields exactly the real entries: htree (dir_index) interior blocks are one
   * empty entry (inode 0) spanning the block, the htree root hides inside '..''s rec_len, and
   * metadata_csum's 12-byte tail is an entry with inode 0. Names are raw bytes.
   */
  *dirEntries(ino: number, raw: Buffer, dirPath: string): Generator<Dirent> {
    const { blockSize } = this.sb
    if ((raw.readUInt32LE(I_FLAGS) & EXTENTS_FL) === 0) this.fail(`${dirPath} (inode ${ino}): directory without an extent tree is not supported by bale's image reader`)
    let next = 0
    for (const ext of this.extents(ino, raw.subarray(I_BLOCK, I_BLOCK + I_BLOCK_BYTES), undefined)) {
      if (ext.lblk < next) this.fail(`${dirPath} (inode ${ino}): extents overlap or are out of order at block ${ext.lblk}`)
      next = ext.lblk + ext.len
      // Sized to the extent: most directories are one block.
      const chunk = Buffer.allocUnsafe(Math.min(DIR_CHUNK_BLOCKS, ext.len) * blockSize)
      for (let done = 0; done < ext.len; done += DIR_CHUNK_BLOCKS) {
        const n = Math.min(DIR_CHUNK_BLOCKS, ext.len - done)
        const view = chunk.subarray(0, n * blockSize)
        this.read(view, (ext.pblk + done) * blockSize)
        for (let b = 0; b < n; b++) {
          const base = b * blockSize
          let off = 0
          while (off < blockSize) {
            const at = base + off
            const corrupt = (): never => this.fail(`${dirPath} (inode ${ino}): corrupt directory entry in block ${ext.lblk + done + b} at offset ${off}`)
            if (off + DIRENT_HEADER > blockSize) corrupt()
            const entIno = view.readUInt32LE(at)
            const recLen = view.readUInt16LE(at + 4)
            const nameLen = view.readUInt8(at + 6)
            if (recLen < DIRENT_HEADER || recLen % 4 !== 0 || off + recLen > blockSize) corrupt()
            if (entIno !== 0) {
              if (nameLen === 0 || DIRENT_HEADER + nameLen > recLen) corrupt()
              yield { ino: entIno, name: view.subarray(at + DIRENT_HEADER, at + DIRENT_HEADER + nameLen) }
            }
            off += recLen
          }
        }
      }
    }
  }

  /**
   * The inode number of every entry mke2fs made, by tree path, checked against the tree: each
   * name present, the names of one tree Inode sharing one inode number (hard links kept), no two
   * Inodes sharing one, nothing extra but mke2fs's own lost+found. Any difference is E_TOOL
   * naming the path. Entry types are checked by patchInodes, which reads every inode anyway
   * (directories are checked here, where they are opened).
   */
  treeInodes(tree: FlatTree): Map<string, number> {
    const firstName = new Map<Inode, string>()
    const children = new Map<string, Map<string, string>>()
    for (const p of sortedPaths(tree)) {
      const inode = tree.entries.get(p)
      if (inode === undefined) continue
      if (!firstName.has(inode)) firstName.set(inode, p)
      if (p === '') continue
      const dir = parentOf(p)
      let names = children.get(dir)
      if (names === undefined) children.set(dir, (names = new Map()))
      names.set(nameKey(baseName(p)), p)
    }
    const made = (p: string, inode: Inode): boolean => madeByMkfs(inode, firstName.get(inode) === p)
    const fail = (p: string, what: string): never => {
      throw new BaleError('E_TOOL', `mkfs.ext4 -d: ${where(p)}: ${what}`, { subject: where(p) })
    }
    const inos = new Map<string, number>([['', ROOT_INO]])
    const byInode = new Map<Inode, number>()
    const owner = new Map<number, Inode>()
    const root = tree.entries.get('')
    if (root !== undefined) {
      byInode.set(root, ROOT_INO)
      owner.set(ROOT_INO, root)
    }
    const dot = nameKey('.')
    const dotdot = nameKey('..')
    const lostFound = nameKey('lost+found')
    const todo: Array<[string, number]> = [['', ROOT_INO]]
    for (let next = todo.pop(); next !== undefined; next = todo.pop()) {
      const [dir, dirIno] = next
      const raw = this.readInode(dirIno)
      const mode = raw.readUInt16LE(I_MODE)
      if ((mode & S_IFMT) !== S_IFDIR) fail(dir, `has mode ${mode.toString(8)}, expected a dir`)
      const names = children.get(dir)
      for (const ent of this.dirEntries(dirIno, raw, where(dir))) {
        const key = ent.name.toString('latin1')
        if (key === dot || key === dotdot) continue
        if (dir === '' && key === lostFound && !tree.entries.has('lost+found')) continue
        const p = names?.get(key)
        const inode = p === undefined ? undefined : tree.entries.get(p)
        if (p === undefined || inode === undefined || !made(p, inode)) {
          return fail(dir === '' ? showName(ent.name) : `${dir}/${showName(ent.name)}`, 'in the image but not made from the tree')
        }
        if (inos.has(p)) fail(p, 'listed twice in its directory')
        const known = byInode.get(inode)
        if (known !== undefined && known !== ent.ino) fail(p, `hard link not kept (inode ${ent.ino}, expected ${known})`)
        const other = owner.get(ent.ino)
        if (other !== undefined && other !== inode) fail(p, `shares inode ${ent.ino} with an unrelated entry`)
        byInode.set(inode, ent.ino)
        owner.set(ent.ino, inode)
        inos.set(p, ent.ino)
        if (inode.kind === 'dir') todo.push([p, ent.ino])
      }
      for (const p of names?.values() ?? []) {
        const inode = tree.entries.get(p)
        if (inode !== undefined && !inos.has(p) && made(p, inode)) fail(p, 'missing from the image')
      }
    }
    return inos
  }

  /**
   * Give every inode in `inodes` (from treeInodes) its tree owner, permission bits, times: what
   * debugfs's `sif` lines used to write, byte for byte. uid and gid are split in low and high
   * 16 bits; i_mode keeps its type bits, which must match the tree's kind; atime = mtime = the
   * tree's mtime and ctime = the build time, with the epoch bits of each *_extra field replaced
   * and its nanoseconds kept, as debugfs's parse_time does (mke2fs 1.47.0 leaves them zero).
   * Each inode's checksum is verified before (so no corruption is laundered) and recomputed after.
   * Inode tables are read, patched and written back a contiguous run at a time.
   */
  patchInodes(tree: FlatTree, inodes: ReadonlyMap<string, number>, timestamp: number): void {
    const { inodesPerGroup, inodeSize } = this.sb
    const byIno = new Map<number, [string, Inode]>()
    for (const [p, ino] of inodes) {
      const inode = tree.entries.get(p)
      if (inode !== undefined && !byIno.has(ino)) byIno.set(ino, [p, inode])
    }
    const ctime = encodeTime(fsTimestamp(timestamp))
    const order = [...byIno.keys()].sort((a, b) => a - b)
    const perChunk = Math.max(1, Math.floor(ITABLE_CHUNK_BYTES / inodeSize))
    for (let i = 0; i < order.length; ) {
      const first = order[i] ?? 0
      const group = Math.floor((first - 1) / inodesPerGroup)
      // The run: every wanted inode of this group within one chunk of the table.
      const limit = Math.min((group + 1) * inodesPerGroup, first + perChunk - 1)
      let j = i
      while (j + 1 < order.length && (order[j + 1] ?? Infinity) <= limit) j++
      const last = order[j] ?? first
      const pos = this.inodeOffset(first)
      const buf = Buffer.alloc((last - first + 1) * inodeSize)
      this.read(buf, pos)
      for (let k = i; k <= j; k++) {
        const ino = order[k] ?? 0
        const entry = byIno.get(ino)
        if (entry === undefined) continue
        const raw = buf.subarray((ino - first) * inodeSize, (ino - first + 1) * inodeSize)
        this.patchOne(ino, raw, entry[0], entry[1], ctime)
      }
      this.write(buf, pos)
      i = j + 1
    }
  }

  private patchOne(ino: number, raw: Buffer, p: string, inode: Inode, ctime: { low: number; epoch: number }): void {
    if (!this.checksumMatches(ino, raw)) this.fail(`inode ${ino} (${where(p)}): checksum does not match before patching`)
    const mode = raw.readUInt16LE(I_MODE)
    if ((mode & S_IFMT) !== TYPE_BITS[inode.kind]) {
      throw new BaleError('E_TOOL', `mkfs.ext4 -d: ${where(p)}: has mode ${mode.toString(8)}, expected a ${inode.kind}`, { subject: where(p) })
    }
    if (raw.readUInt16LE(I_EXTRA_ISIZE) < MIN_EXTRA_ISIZE) this.fail(`inode ${ino} (${where(p)}): no room for extended times (i_extra_isize ${raw.readUInt16LE(I_EXTRA_ISIZE)})`)
    // uid and gid are 32 bits (validateTree checked them): 16 in the original inode, 16 more in osd2.
    raw.writeUInt16LE((mode & S_IFMT) | (inode.mode & 0o7777), I_MODE)
    raw.writeUInt16LE(inode.uid & 0xffff, I_UID)
    raw.writeUInt16LE(Math.floor(inode.uid / 0x10000) & 0xffff, I_UID_HIGH)
    raw.writeUInt16LE(inode.gid & 0xffff, I_GID)
    raw.writeUInt16LE(Math.floor(inode.gid / 0x10000) & 0xffff, I_GID_HIGH)
    const mtime = encodeTime(ext4Time(inode.mtime))
    const setTime = (field: number, extra: number, t: { low: number; epoch: number }): void => {
      raw.writeUInt32LE(t.low, field)
      raw.writeUInt32LE(((raw.readUInt32LE(extra) & ~EPOCH_MASK) | t.epoch) >>> 0, extra)
    }
    setTime(I_MTIME, I_MTIME_EXTRA, mtime)
    setTime(I_ATIME, I_ATIME_EXTRA, mtime)
    setTime(I_CTIME, I_CTIME_EXTRA, ctime)
    this.setChecksum(ino, raw)
  }
}
