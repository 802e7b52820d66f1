/**
 * The flattened image: the contract between flatten, inject and ext4.
 *
 * Paths are normalized image paths: relative to the image root, '/'-separated, no leading
 * slash, no '.' or '..' components, no empty components; the root itself is ''. Names are
 * valid UTF-8 (flatten rejects others by name) and never contain NUL, '\n' or '\r'.
 *
 * Hard links are modelled as shared Inode objects: two entries whose `inode` is the same
 * object are links to one file. Regular-file contents live in the staging directory, written
 * only by this process; flatten never writes anywhere else: each file's own blob
 * `<staging>/blobs/<ino>`, or, in a packed tree, a slice of a spool file per layer (no file is
 * created per image file; see `Inode.content`).
 */
import { constants, promises as fs, readSync } from 'node:fs'
import { BaleError } from '../lib/errors.js'

export type NodeKind = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo'

export interface Inode {
  /** Unique per tree; also the name of the content blob for regular files. */
  readonly ino: number
  kind: NodeKind
  /** Permission and special bits only (0o7777: setuid, setgid, sticky, rwx). No type bits. */
  mode: number
  uid: number
  gid: number
  /** Modification time, integer seconds since the epoch. */
  mtime: number
  /** Size in bytes of the content (regular files) or of the link target (symlinks); 0 otherwise. */
  size: number
  /** Extended attributes by full name (e.g. 'security.capability', 'user.foo'). */
  xattrs: Map<string, Buffer>
  /** Symlink target, exactly as in the archive. */
  linkTarget?: string
  devMajor?: number
  devMinor?: number
  /** Where a regular file's `size` bytes are when not in its own blob (packed trees). */
  content?: ContentSlice
}

/** `size` bytes at `offset` of `path`, a spool file under the staging directory. */
export interface ContentSlice {
  readonly path: string
  readonly offset: number
}

export interface FlatTree {
  /** Staging directory; contents of regular files are in `${staging}/blobs/${ino}` or spools. */
  readonly staging: string
  /**
   * Flatten writes regular files' contents into one spool file per layer instead of a blob per
   * file: for an ext4 stage that streams the tree to mkfs as a tar and never needs the files.
   */
  readonly packed: boolean
  /** Every entry by normalized path, including '' for the root directory. */
  readonly entries: Map<string, Inode>
  /** Next free inode number (for stages that add entries, e.g. inject). */
  nextIno: number
}

/** Path of a regular file's own blob in staging (where its content is unless `inode.content` says otherwise). */
export function blobPath(tree: FlatTree, inode: Inode): string {
  return `${tree.staging}/blobs/${inode.ino}`
}

/** Where a regular file's content is, whichever way it was stored. */
export function contentOf(tree: FlatTree, inode: Inode): ContentSlice {
  return inode.content ?? { path: blobPath(tree, inode), offset: 0 }
}

/**
 * `size` bytes at `offset` of the open file `fd`, `chunkBytes` at a time, each in a fresh buffer
 * (a consumer may keep it); a file that ends first is E_INPUT naming `where`, the image path.
 */
export function* contentChunks(fd: number, offset: number, size: number, where: string, chunkBytes: number): Generator<Buffer> {
  for (let done = 0; done < size; ) {
    const buf = Buffer.allocUnsafe(Math.min(chunkBytes, size - done))
    const n = readSync(fd, buf, 0, buf.length, offset + done)
    if (n === 0) throw new BaleError('E_INPUT', `${where}: its content ends after ${done} of ${size} bytes`, { subject: where })
    done += n
    yield n === buf.length ? buf : buf.subarray(0, n)
  }
}

/** A regular file's whole content, for the few small files a stage looks into (os-release). */
export async function readContent(tree: FlatTree, inode: Inode): Promise<Buffer> {
  const { path, offset } = contentOf(tree, inode)
  const fh = await fs.open(path, constants.O_RDONLY | constants.O_NOFOLLOW)
  try {
    const buf = Buffer.alloc(inode.size)
    let done = 0
    while (done < buf.length) {
      const { bytesRead } = await fh.read(buf, done, buf.length - done, offset + done)
      if (bytesRead === 0) throw new Error(`${path}: ${inode.size} bytes expected at ${offset}, the file ends first`)
      done += bytesRead
    }
    return buf
  } finally {
    await fh.close()
  }
}

/** Number of names that refer to each inode (the ext4 link count for non-directories). */
export function linkCounts(tree: FlatTree): Map<Inode, number> {
  const counts = new Map<Inode, number>()
  for (const inode of tree.entries.values()) counts.set(inode, (counts.get(inode) ?? 0) + 1)
  return counts
}

/** Parent of a normalized path ('' for top-level names). */
export function parentOf(p: string): string {
  const i = p.lastIndexOf('/')
  return i < 0 ? '' : p.slice(0, i)
}

export function baseName(p: string): string {
  return p.slice(p.lastIndexOf('/') + 1)
}
