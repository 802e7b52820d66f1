/**
 * The mke2fs -d input: `${staging}/root`, a directory tree built from the model, never by
 * following a symlink. It is made fresh in a directory only this process writes, parents before
 * children, and each parent is a directory of the model (validateTree), so no path component
 * can be a symlink; nothing of the tree's content is written anywhere else.
 *
 * - directories: mkdir 0755, ours, whatever the image's mode (the image mode is set by debugfs),
 *   so an unprivileged mke2fs can read a 0000 directory's children;
 * - regular files: the content blob itself (a packed tree's spooled files are copied out into
 *   blobs first: mke2fs 1.47.0 reads files, not slices). A file with one name is renamed from
 *   `${staging}/blobs/<ino>` into place and renamed back afterwards: mke2fs 1.47.0 looks every
 *   file with st_nlink > 1 up in a linear list of hard links (quadratic over a tree of blobs
 *   that are all linked twice). A file with several names is hard-linked from its blob under each
 *   name, and mke2fs -d gives those names one inode. A blob its owner cannot read (an image's
 *   mode 0000 file) is made 0644 — the image mode again comes from debugfs;
 * - symlinks: the first name only (mke2fs -d copies a hard-linked symlink as separate inodes;
 *   debugfs `ln` adds the others);
 * - devices and fifos: not at all (no mknod without root); debugfs makes them.
 */
import { chmodSync, closeSync, constants, lstatSync, linkSync, mkdirSync, openSync, renameSync, rmSync, symlinkSync, writeSync } from 'node:fs'
import { BaleError, fromSystemError } from '../../lib/errors.js'
import { blobPath, contentChunks, type ContentSlice, linkCounts, type FlatTree, type Inode } from '../tree.js'
import { sortedPaths } from './debugfs.js'

/** Blobs must be readable by their owner for mke2fs; 0644 is what a plain file gets (its image mode is set later). */
const STAGED_FILE_MODE = 0o644
/** Bytes per read when a spooled file is copied out into its own blob. */
const COPY_BYTES = 1 << 20
/** Staged directories: ours, listable and searchable so mke2fs can walk them unprivileged. */
const STAGED_DIR_MODE = 0o755
/** What mke2fs needs of a staged directory (owner read, write for our own links, search). */
const OWNER_RWX = 0o700

export interface StagedRoot {
  /** Rename single-name blobs back to `${staging}/blobs` and remove the staged root. */
  restore(): void
}

function stageError(e: unknown, where: string): BaleError {
  if (e instanceof BaleError) return e
  const code = e instanceof Error && 'code' in e ? (e as NodeJS.ErrnoException).code : undefined
  if (code === 'ENAMETOOLONG') return new BaleError('E_UNSAFE_PATH', `${where}: path too long to stage on this host`, { subject: where, cause: e })
  const sys = fromSystemError(e, where)
  if (sys) return new BaleError(sys.code, `${where}: staging for mkfs: ${sys.message}`, { subject: where, cause: e })
  const msg = e instanceof Error ? e.message : String(e)
  return new BaleError('E_TOOL', `${where}: staging for mkfs: ${msg}`, { subject: where, cause: e })
}

/** Copy a spooled file's slice into its own blob (a packed tree staged as a directory). */
function unspool(inode: Inode, slice: ContentSlice, blob: string, where: string): void {
  const src = openSync(slice.path, constants.O_RDONLY | constants.O_NOFOLLOW)
  try {
    const dst = openSync(blob, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, STAGED_FILE_MODE)
    try {
      for (const chunk of contentChunks(src, slice.offset, inode.size, where, COPY_BYTES)) {
        for (let off = 0; off < chunk.length; ) off += writeSync(dst, chunk, off, chunk.length - off)
      }
    } finally {
      closeSync(dst)
    }
  } finally {
    closeSync(src)
  }
}

/**
 * Check that `blob` is a regular file of exactly the inode's size, and make it readable by its
 * owner (an image's mode 0000 file) so mke2fs can read it either way it is fed.
 */
export function checkBlob(blob: string, inode: Inode, where: string): void {
  const st = lstatSync(blob)
  if (!st.isFile()) throw new BaleError('E_INPUT', `${where}: content blob ${blob} is not a regular file`, { subject: where })
  if (st.size !== inode.size) throw new BaleError('E_INPUT', `${where}: content blob has ${st.size} bytes, the tree says ${inode.size}`, { subject: where })
  if ((st.mode & 0o400) === 0) chmodSync(blob, STAGED_FILE_MODE)
}

/** The blob of a regular file, checked and made readable; created empty when flatten wrote none for an empty file. */
function ensureBlob(tree: FlatTree, inode: Inode, where: string): string {
  const blob = blobPath(tree, inode)
  if (inode.content !== undefined) {
    unspool(inode, inode.content, blob, where)
  } else if (inode.size === 0) {
    // O_EXCL|O_NOFOLLOW: create if absent, never through a link; an existing blob is kept.
    try {
      closeSync(openSync(blob, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, STAGED_FILE_MODE))
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
    }
  }
  checkBlob(blob, inode, where)
  return blob
}

/**
 * Build `rootDir` from the tree (see the module comment). `rootDir` must be inside the staging
 * directory. The work is a few syscalls per entry, done synchronously: through the thread pool
 * each would cost a round trip, and the stage has nothing to do meanwhile.
 */
export function stageRoot(tree: FlatTree, rootDir: string): StagedRoot {
  const counts = linkCounts(tree)
  const renamed: Array<[string, string]> = []
  const staged = new Set<Inode>()
  const restore = (): void => {
    let failure: unknown
    for (const [blob, dest] of renamed.splice(0)) {
      try {
        renameSync(dest, blob)
      } catch (e) {
        failure ??= stageError(e, dest)
      }
    }
    rmSync(rootDir, { recursive: true, force: true })
    if (failure !== undefined) throw failure
  }
  rmSync(rootDir, { recursive: true, force: true })
  mkdirSync(rootDir, { mode: STAGED_DIR_MODE })
  // mkdir's mode passes through the umask: if it takes owner bits, every directory needs a chmod.
  const chmodDirs = (lstatSync(rootDir).mode & OWNER_RWX) !== OWNER_RWX
  if (chmodDirs) chmodSync(rootDir, STAGED_DIR_MODE)
  try {
    for (const p of sortedPaths(tree)) {
      if (p === '') continue
      const inode = tree.entries.get(p)
      if (inode === undefined) continue
      const where = `/${p}`
      const dest = `${rootDir}/${p}`
      try {
        switch (inode.kind) {
          case 'dir':
            mkdirSync(dest, { mode: STAGED_DIR_MODE })
            if (chmodDirs) chmodSync(dest, STAGED_DIR_MODE)
            break
          case 'file': {
            const blob = staged.has(inode) ? blobPath(tree, inode) : ensureBlob(tree, inode, where)
            staged.add(inode)
            if ((counts.get(inode) ?? 1) === 1) {
              renameSync(blob, dest)
              renamed.push([blob, dest])
            } else {
              linkSync(blob, dest)
            }
            break
          }
          case 'symlink':
            if (staged.has(inode)) break
            staged.add(inode)
            symlinkSync(inode.linkTarget ?? '', dest)
            break
          case 'char':
          case 'block':
          case 'fifo':
            break
        }
      } catch (e) {
        throw stageError(e, where)
      }
    }
  } catch (e) {
    try {
      restore()
    } catch {
      // The staging error is the one to report; staging is removed with the build anyway.
    }
    throw e
  }
  return { restore }
}
