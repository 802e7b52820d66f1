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
import { closeSync, constants, openSync } from 'node:fs'
import { Readable } from 'node:stream'
import * as tarStream from 'tar-stream'
import { drained, type TarEntrySink } from '../../lib/tar-entry.js'
import { contentChunks, contentOf, type FlatTree, type Inode } from '../tree.js'
import { madeByMkfs } from './debugfs.js'
import { checkBlob } from './stage.js'

/** Bytes per read of a file's content. */
const READ_BYTES = 256 << 10
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
  const pack = tarStream.pack()
  write(tree, pack).then(
    () => pack.finalize(),
    (e: unknown) => pack.destroy(e instanceof Error ? e : new Error(String(e))),
  )
  // tar-stream's streams are streamx ones: Node's stream machinery does not see one end with an
  // error (the consumer would wait for ever), so it is read as an async iterable.
  return Readable.from(pack as unknown as AsyncIterable<Buffer>, { objectMode: false })
}

async function write(tree: FlatTree, pack: tarStream.Pack): Promise<void> {
  const firstName = new Map<Inode, string>()
  const fds = new Map<string, number>()
  try {
    for (const p of mkfsWalkOrder(tree)) {
      if (p === '') continue
      const inode = tree.entries.get(p) as Inode
      const first = firstName.get(inode)
      if (first === undefined) firstName.set(inode, p)
      if (!madeByMkfs(inode, first === undefined)) continue
      if (inode.kind === 'dir') {
        await entry(pack, { name: p, type: 'directory', mode: 0o755 })
      } else if (inode.kind === 'symlink') {
        await entry(pack, { name: p, type: 'symlink', linkname: inode.linkTarget ?? '', mode: 0o777 })
      } else if (first !== undefined) {
        await entry(pack, { name: p, type: 'link', linkname: first, mode: 0o644 })
      } else {
        await fileEntry(pack, tree, inode, p, fds)
      }
    }
  } finally {
    for (const fd of fds.values()) closeSync(fd)
  }
}

type Header = Pick<tarStream.Header, 'name' | 'type' | 'mode'> & Partial<tarStream.Header>

/** A header-only entry, or (a file's) with its whole `body`: an entry without one waits for its end. */
function entry(pack: tarStream.Pack, h: Header, body?: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error | null): void => (err ? reject(err) : resolve())
    const header = { ...PLACEHOLDERS, ...h }
    if (body === undefined) pack.entry(header, done)
    else pack.entry(header, body, done)
  })
}

async function fileEntry(pack: tarStream.Pack, tree: FlatTree, inode: Inode, p: string, fds: Map<string, number>): Promise<void> {
  const where = `/${p}`
  const header = { ...PLACEHOLDERS, name: p, type: 'file' as const, size: inode.size, mode: 0o644 }
  // Flatten writes no blob for an empty file (stage.ts makes one); there is nothing to read.
  if (inode.size === 0) return entry(pack, header, Buffer.alloc(0))
  const { path, offset } = contentOf(tree, inode)
  let fd = fds.get(path)
  if (fd === undefined) {
    // A blob is checked (and made readable) as for a staged directory; a slice is checked by its reads.
    if (inode.content === undefined) checkBlob(path, inode, where)
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW)
    // A packed tree reads from a few spools over and over; a blob is read once.
    if (inode.content !== undefined) fds.set(path, fd)
  }
  try {
    const fileFd = fd
    await new Promise<void>((resolve, reject) => {
      const sink = pack.entry(header, (err) => (err ? reject(err) : resolve()))
      // Its failures reach the callback above and the tar stream; tearing the stream down also
      // destroys the entry with the error, which must not be an unheard 'error' event.
      sink.on('error', () => undefined)
      feed(sink, contentChunks(fileFd, offset, inode.size, where, READ_BYTES)).then(
        () => sink.end(undefined),
        // The caller tears the whole tar stream down (treeTar).
        reject,
      )
    })
  } finally {
    if (inode.content === undefined) closeSync(fd)
  }
}

/** Write every chunk into the entry, waiting while it is full; stops if the tar stream is torn down. */
async function feed(sink: TarEntrySink, chunks: Iterable<Buffer>): Promise<void> {
  for (const chunk of chunks) {
    if (!sink.write(chunk) && !(await drained(sink))) throw new Error('the tar stream for mke2fs was closed')
  }
}
