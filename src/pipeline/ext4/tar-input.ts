/**
 * The mke2fs -d input as a tar stream on its stdin (e2fsprogs >= 1.47.1, libarchive): the same
 * entries the staged directory would have (stage.ts), read straight from the tree's contents,
 * so a build creates no file per image file. Creating files is most of what a build waits on
 * (the Debian image's 6.6k: 0.3 to 3 s on the build machine's ext4, against 0.06 s on tmpfs).
 *
 * - the order is mke2fs's own walk of a directory: depth first, names in byte order, so parents
 *   come before their children (mke2fs's tar reader makes no directory implicitly) and inodes
 *   are numbered as the staged directory would have them;
 * - directories, regular files and a symlink's first name, as in stage.ts (madeByMkfs); a file's
 *   further names are tar hard links to its first, so mke2fs gives them one inode; devices,
 *   fifos and a symlink's further names are left to debugfs, as they are for a directory;
 * - owner, mode and times in the headers are placeholders (0:0, 0755 or 0644, time 0): the
 *   image's are written into its inodes afterwards (image.ts), whichever way mke2fs was fed;
 * - no xattrs: mke2fs's tar reader keeps security.capability only; debugfs sets them all.
 *
 * Names are UTF-8 (tree.ts); long ones go in PAX records, which libarchive converts from UTF-8 to
 * the locale's charset, so mke2fs runs under C.UTF-8 for this (tools.ts).
 */
import { closeSync, constants, openSync, readSync } from 'node:fs'
import { Readable } from 'node:stream'
import { Header, type HeaderData } from 'tar/header'
import { Pax } from 'tar/pax'
import { BaleError } from '../../lib/errors.js'
import { contentOf, type FlatTree, type Inode } from '../tree.js'
import { madeByMkfs } from './debugfs.js'
import { checkBlob } from './stage.js'

/**
 * The stream is made in batches of this many bytes: headers and contents go straight into one
 * buffer (contents by readSync from the spools), and mke2fs's stdin gets one write per batch.
 * Made an entry at a time through tar-stream's pack, the Debian image's 6.6k entries cost ~20k
 * socket writes, a promise and a stream object per entry and a buffer per read: the ext4 stage
 * took 1.3-1.5 s of Node's CPU beside mke2fs, now 0.85-1.1 s (A/B, five builds each, the same
 * bytes), and mke2fs finds its stdin empty ~350 times a build instead of ~800. mke2fs's own pace
 * (it reads 4 KiB at a time) sets the stage's wall time either way.
 *
 * Headers are node-tar's (`tar/header`, `tar/pax`): tar-stream, which reads every other tar in
 * bale, does not export its header encoder, only the streaming pack.
 */
export const TAR_BATCH_BYTES = 1 << 20
/** A tar block: headers are one, contents are padded to whole ones. */
const BLOCK = 512
/** The end of an archive: two zero blocks, written as the last entry's head. */
const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK)
/** Owner and time in every header: placeholders, the image's are patched into its inodes (image.ts). */
const PLACEHOLDERS = { uid: 0, gid: 0, mtime: new Date(0) }

/** Paths as mke2fs walks a directory tree: depth first, each directory's names in byte order. */
export function mkfsWalkOrder(tree: FlatTree): string[] {
  // With '/' as NUL (which no name contains), byte order of whole paths is that walk.
  const keyed = [...tree.entries.keys()].map((p) => ({ p, key: Buffer.from(p.replaceAll('/', '\0'), 'utf8') }))
  keyed.sort((a, b) => Buffer.compare(a.key, b.key))
  return keyed.map((k) => k.p)
}

/** The tar stream of `tree` for `mke2fs -d -`; it fails (with the path) if a file's content cannot be read. */
export function treeTar(tree: FlatTree): Readable {
  return new TreeTar(tree)
}

/** A file whose content is being copied into the batches. */
interface Copying {
  fd: number
  /** Where the next byte is, in `fd`. */
  at: number
  /** The file's size, for messages. */
  size: number
  /** Content bytes still to copy, then zero bytes to the next block. */
  left: number
  pad: number
  /** `/path`, for messages. */
  where: string
  /** Close `fd` when done (a blob is read once; a spool is kept open for its other files). */
  own: boolean
}

/** An entry's header blocks (or the end of the archive), and the regular file whose content follows them (if any). */
interface Pending {
  head: Buffer
  p: string
  inode: Inode | undefined
}

class TreeTar extends Readable {
  private readonly paths: string[]
  private next = 0
  private readonly firstName = new Map<Inode, string>()
  /** Open spools by path. */
  private readonly spools = new Map<string, number>()
  private copying: Copying | undefined
  /** A head made but not yet in a batch (it did not fit). */
  private pending: Pending | undefined
  private batch = Buffer.allocUnsafeSlow(TAR_BATCH_BYTES)
  private used = 0
  /** The end of the archive was handed out as the last head. */
  private ended = false

  constructor(private readonly tree: FlatTree) {
    super({ highWaterMark: TAR_BATCH_BYTES })
    this.paths = mkfsWalkOrder(tree)
  }

  override _read(): void {
    try {
      for (;;) {
        if (!this.fill()) {
          if (this.used > 0) this.push(this.batch.subarray(0, this.used))
          this.push(null)
          this.closeAll()
          return
        }
        // Full, or with less room left than the next header needs (that is, the tail unused).
        const full = this.batch.subarray(0, this.used)
        this.batch = Buffer.allocUnsafeSlow(TAR_BATCH_BYTES)
        this.used = 0
        if (!this.push(full)) return
      }
    } catch (e) {
      this.destroy(e instanceof Error ? e : new Error(String(e)))
    }
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    try {
      this.closeAll()
    } finally {
      cb(err)
    }
  }

  private closeAll(): void {
    if (this.copying?.own === true) closeSync(this.copying.fd)
    this.copying = undefined
    for (const fd of this.spools.values()) closeSync(fd)
    this.spools.clear()
  }

  /** Fill the batch; true when it has no room for what comes next, false when the archive is complete. */
  private fill(): boolean {
    for (;;) {
      if (this.copying !== undefined) {
        if (!this.copy(this.copying)) return true
        if (this.copying.own) closeSync(this.copying.fd)
        this.copying = undefined
      }
      this.pending ??= this.nextEntry()
      if (this.pending === undefined) return false
      const { head, p, inode } = this.pending
      if (TAR_BATCH_BYTES - this.used < head.length) return true
      head.copy(this.batch, this.used)
      this.used += head.length
      this.pending = undefined
      if (inode !== undefined) this.copying = this.open(p, inode)
    }
  }

  /**
   * The next path's head (inode: a regular file whose content follows), skipping what mkfs does
   * not make; after the last path, the end of the archive; then nothing.
   */
  private nextEntry(): Pending | undefined {
    while (this.next < this.paths.length) {
      const p = this.paths[this.next++] as string
      const inode = this.tree.entries.get(p) as Inode
      const entry = p === '' ? undefined : this.entryOf(p, inode)
      if (entry !== undefined) return { head: encode(entry), p, inode: entry.type === 'File' ? inode : undefined }
    }
    if (this.ended) return undefined
    this.ended = true
    return { head: END_OF_ARCHIVE, p: '', inode: undefined }
  }

  /** The header of the entry at `p`, or undefined for what mkfs does not make (see madeByMkfs). */
  private entryOf(p: string, inode: Inode): HeaderData | undefined {
    const first = this.firstName.get(inode)
    if (first === undefined) this.firstName.set(inode, p)
    if (!madeByMkfs(inode, first === undefined)) return undefined
    if (inode.kind === 'dir') return { ...PLACEHOLDERS, path: `${p}/`, type: 'Directory', mode: 0o755, size: 0 }
    if (inode.kind === 'symlink') return { ...PLACEHOLDERS, path: p, type: 'SymbolicLink', linkpath: inode.linkTarget ?? '', mode: 0o777, size: 0 }
    if (first !== undefined) return { ...PLACEHOLDERS, path: p, type: 'Link', linkpath: first, mode: 0o644, size: 0 }
    return { ...PLACEHOLDERS, path: p, type: 'File', mode: 0o644, size: inode.size }
  }

  private open(p: string, inode: Inode): Copying | undefined {
    // Flatten writes no blob for an empty file (stage.ts makes one); there is nothing to read.
    if (inode.size === 0) return undefined
    const where = `/${p}`
    const pad = (BLOCK - (inode.size % BLOCK)) % BLOCK
    const { path, offset } = contentOf(this.tree, inode)
    const own = inode.content === undefined
    let fd = own ? undefined : this.spools.get(path)
    if (fd === undefined) {
      // A blob is checked (and made readable) as for a staged directory; a slice is checked by its reads.
      if (own) checkBlob(path, inode, where)
      fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW)
      if (!own) this.spools.set(path, fd)
    }
    return { fd, at: offset, size: inode.size, left: inode.size, pad, where, own }
  }

  /** Copy what fits of a file's content and padding; true when all of it is in. */
  private copy(c: Copying): boolean {
    while (c.left > 0) {
      const room = TAR_BATCH_BYTES - this.used
      if (room === 0) return false
      const n = readSync(c.fd, this.batch, this.used, Math.min(room, c.left), c.at)
      if (n === 0) throw new BaleError('E_INPUT', `${c.where}: its content ends after ${c.size - c.left} of ${c.size} bytes`, { subject: c.where })
      this.used += n
      c.at += n
      c.left -= n
    }
    const z = Math.min(c.pad, TAR_BATCH_BYTES - this.used)
    this.batch.fill(0, this.used, this.used + z)
    this.used += z
    c.pad -= z
    return c.pad === 0
  }
}

/** The entry's header block, after a PAX header where the name or link target does not fit ustar (or is not ASCII). */
function encode(entry: HeaderData): Buffer {
  // Zeroed: Header.encode writes only the fields it is given.
  const block = Buffer.alloc(BLOCK)
  if (!new Header(entry).encode(block, 0)) return block
  return Buffer.concat([new Pax({ path: entry.path, linkpath: entry.linkpath }).encode(), block])
}
