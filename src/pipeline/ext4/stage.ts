/**
 * The mke2fs -d input: `${staging}/root`, a directory tree built from the model, never by
 * following a symlink. It is made fresh in a directory only this process writes, parents before
 * children, and each parent is a directory of the model (validateTree), so no path component
 * can be a symlink; nothing of the tree's content is written anywhere else.
 *
 * - directories: mkdir 0755, ours, whatever the image's mode (the image mode is set by debugfs),
 *   so an unprivileged mke2fs can read a 0000 directory's children;
 * - regular files: the content blob itself. A file with one name is renamed from
 *   `${staging}/blobs/<ino>` into place and renamed back afterwards: mke2fs 1.47.0 looks every
 *   file with st_nlink > 1 up in a linear list of hard links (quadratic over a tree of blobs
 *   that are all linked twice). A file with several names is hard-linked from its blob under each
 *   name, and mke2fs -d gives those names one inode. Blobs are made readable by their owner (an
 *   image's mode 0000 file) — the image mode again comes from debugfs;
 * - symlinks: the first name only (mke2fs -d copies a hard-linked symlink as separate inodes;
 *   debugfs `ln` adds the others);
 * - devices and fifos: not at all (no mknod without root); debugfs makes them.
 */
import { constants, promises as fs } from 'node:fs'
import { BaleError, fromSystemError } from '../../lib/errors.js'
import { blobPath, linkCounts, type FlatTree, type Inode } from '../tree.js'
import { sortedPaths } from './debugfs.js'

/** Blobs must be readable for mke2fs; 0644 is what a plain file gets (its image mode is set later). */
const STAGED_FILE_MODE = 0o644
/** Staged directories: ours, listable and searchable so mke2fs can walk them unprivileged. */
const STAGED_DIR_MODE = 0o755

export interface StagedRoot {
  /** Rename single-name blobs back to `${staging}/blobs` and remove the staged root. */
  restore(): Promise<void>
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

/** The blob of a regular file, created empty when flatten wrote none for an empty file. */
async function ensureBlob(tree: FlatTree, inode: Inode, where: string): Promise<string> {
  const blob = blobPath(tree, inode)
  if (inode.size === 0) {
    // O_EXCL|O_NOFOLLOW: create if absent, never through a link; an existing blob is kept.
    const fh = await fs.open(blob, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, STAGED_FILE_MODE).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'EEXIST') return undefined
      throw e
    })
    await fh?.close()
  }
  const st = await fs.lstat(blob)
  if (!st.isFile()) throw new BaleError('E_INPUT', `${where}: content blob ${blob} is not a regular file`, { subject: where })
  if (st.size !== inode.size) throw new BaleError('E_INPUT', `${where}: content blob has ${st.size} bytes, the tree says ${inode.size}`, { subject: where })
  await fs.chmod(blob, STAGED_FILE_MODE)
  return blob
}

/** Build `rootDir` from the tree (see the module comment). `rootDir` must be inside the staging directory. */
export async function stageRoot(tree: FlatTree, rootDir: string): Promise<StagedRoot> {
  const counts = linkCounts(tree)
  const renamed: Array<[string, string]> = []
  const staged = new Set<Inode>()
  const restore = async (): Promise<void> => {
    let failure: unknown
    for (const [blob, dest] of renamed.splice(0)) {
      await fs.rename(dest, blob).catch((e: unknown) => {
        failure ??= stageError(e, dest)
      })
    }
    await fs.rm(rootDir, { recursive: true, force: true })
    if (failure !== undefined) throw failure
  }
  await fs.rm(rootDir, { recursive: true, force: true })
  await fs.mkdir(rootDir, { mode: STAGED_DIR_MODE })
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
            await fs.mkdir(dest, { mode: STAGED_DIR_MODE })
            // mkdir's mode is filtered by the umask; chmod is not.
            await fs.chmod(dest, STAGED_DIR_MODE)
            break
          case 'file': {
            const blob = await (staged.has(inode) ? blobPath(tree, inode) : ensureBlob(tree, inode, where))
            staged.add(inode)
            if ((counts.get(inode) ?? 1) === 1) {
              await fs.rename(blob, dest)
              renamed.push([blob, dest])
            } else {
              await fs.link(blob, dest)
            }
            break
          }
          case 'symlink':
            if (staged.has(inode)) break
            staged.add(inode)
            await fs.symlink(inode.linkTarget ?? '', dest)
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
    await restore().catch(() => undefined)
    throw e
  }
  return { restore }
}
