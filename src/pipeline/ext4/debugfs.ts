/**
 * The debugfs half of the ext4 stage: what only debugfs can do to the image mke2fs -d made —
 * create devices and fifos (mknod needs root on the host, so they cannot be staged), set xattrs
 * (mke2fs would copy the staging host's own), and link the extra names mke2fs -d cannot
 * (hard-linked symlinks, devices, fifos) — and the reading of debugfs's output, since debugfs
 * exits 0 when its commands fail.
 *
 * Owner, mode and times of the inodes mke2fs made are no longer debugfs's job: image.ts writes
 * them straight into the inode tables (six `sif` lines per inode at 0.1–0.2 ms each were most of
 * the stage), and the script generated here with `patched` leaves them out. Without `patched`
 * it is still the whole script (every inode's attributes), which the tests use as the reference
 * the patcher must match byte for byte. Most images have no devices, fifos or xattrs left to
 * set, and then debugfs does not run at all.
 *
 * debugfs (e2fsprogs 1.47.0) facts this relies on, each pinned by a test:
 * - a script line is read with fgets(buf, BUFSIZ = 8192): at most 8190 bytes before the '\n',
 *   longer lines are split and the rest runs as another command;
 * - tokens split on spaces and tabs only; "…" quotes, "" inside quotes is one '"';
 * - `<N>` names inode N, so every path is absolute (a file named `<2>` is then just a name);
 * - mknod and ln link the *bare* name into the current directory (`cd` to the parent first);
 * - `sif PATH mode` writes the whole i_mode, type bits included; times take `@EPOCH`, and only
 *   0 ≤ EPOCH < 2^34 - 2^31 parses correctly (no negative values, silent wrap above);
 * - each command is echoed as `debugfs: <line>` before it runs, errors follow on their own
 *   lines in order (stdout and stderr to one file keep the order), mknod prints `Allocated inode: N`;
 * - a path is looked up by iterating over each directory's blocks, so commands by path in a
 *   wide directory are slow (measured: 30k `sif` lines on 5000 names of one directory, 27 s by
 *   path, 0.55 s by inode number). The inodes mke2fs made are therefore addressed by the number
 *   image.ts read for them; only devices, fifos and extra symlink names, which debugfs itself
 *   creates, are addressed by path.
 */
import path from 'node:path'
import { BaleError } from '../../lib/errors.js'
import { linkCounts, parentOf, type FlatTree, type Inode, type NodeKind } from '../tree.js'

/** fgets(buf, BUFSIZ) with glibc's BUFSIZ of 8192 keeps 8191 bytes including the '\n'. */
export const MAX_DEBUGFS_LINE_BYTES = 8190

/** Latest time `sif … @EPOCH` stores correctly: ext4's 32-bit signed seconds plus a 2-bit epoch (year 2446). */
export const EXT4_TIME_MAX = 2 ** 34 - 2 ** 31 - 1

/** The S_IFMT type bits `sif mode` needs alongside the permission bits. */
export const TYPE_BITS: Record<NodeKind, number> = {
  file: 0o100000,
  dir: 0o040000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
  fifo: 0o010000,
}

export interface DebugfsScriptOptions {
  /** Epoch seconds for each inode's ctime (the build's own change time), through fsTimestamp(). */
  timestamp: number
  /** Directory holding the xattr value files, named by xattrValueFile(). */
  xattrDir: string
  /**
   * Inode numbers of the entries mke2fs made, by tree path (from Ext4Image.treeInodes()). With
   * it, those inodes are addressed as `<N>`; without it every command takes an absolute path.
   */
  inodes?: ReadonlyMap<string, number>
  /**
   * The inodes mke2fs made already have their owner, mode and times (Ext4Image.patchInodes()):
   * leave out their `sif` lines, keeping only what debugfs alone can do.
   */
  patched?: boolean
}

/** One script line and the image path it concerns, for naming the path when it fails. */
export interface ScriptLine {
  cmd: string
  path: string
}

/** One debugfs token for an absolute path or a bare name: always "…"-quoted, inner '"' doubled. */
export function debugfsQuote(p: string): string {
  if (/[\0\n\r]/.test(p)) {
    throw new BaleError('E_UNSAFE_PATH', `${JSON.stringify(p)}: debugfs cannot take a name with NUL, newline or carriage return`, { subject: p })
  }
  return `"${p.replaceAll('"', '""')}"`
}

/** ext4 (through debugfs) stores times from 1970 to 2446; times outside are clamped to the nearest one. */
export function ext4Time(t: number): number {
  return Math.min(Math.max(Math.floor(t), 0), EXT4_TIME_MAX)
}

/**
 * The filesystem-level time (superblock, crtime, ctime, lost+found) for a requested timestamp:
 * clamped like ext4Time, and at least 1, because libext2fs 1.47.0 takes E2FSPROGS_FAKE_TIME=0
 * as unset and writes the host's clock instead (images made with SOURCE_DATE_EPOCH=0 are common).
 */
export function fsTimestamp(t: number): number {
  return Math.max(1, ext4Time(t))
}

/** An inode's xattrs in name order (the order they are set in, so the image does not depend on Map order). */
export function sortedXattrs(inode: Inode): Array<[string, Buffer]> {
  return [...inode.xattrs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
}

/** File holding the value of the `index`-th xattr (in sortedXattrs order) of `inode`. */
export function xattrValueFile(xattrDir: string, inode: Inode, index: number): string {
  return path.join(xattrDir, `${inode.ino}.${index}`)
}

/** The tree's paths, parents before children (a prefix sorts before its extensions). */
export function sortedPaths(tree: FlatTree): string[] {
  return [...tree.entries.keys()].sort()
}

/**
 * Whether mke2fs -d makes this name from the staging tree (stage.ts): every directory and
 * regular file, and a symlink's first name in sortedPaths() order. debugfs makes the rest.
 */
export function madeByMkfs(inode: Inode, isFirstName: boolean): boolean {
  return inode.kind === 'dir' || inode.kind === 'file' || (inode.kind === 'symlink' && isFirstName)
}

function abs(p: string): string {
  return `/${p}`
}

function checked(cmd: string, where: string): ScriptLine {
  const bytes = Buffer.byteLength(cmd)
  if (bytes > MAX_DEBUGFS_LINE_BYTES) {
    throw new BaleError('E_UNSAFE_PATH', `${where}: path too long for a debugfs command (${bytes} bytes, limit ${MAX_DEBUGFS_LINE_BYTES})`, { subject: where })
  }
  return { cmd, path: where }
}

/**
 * The script's lines, in order. For each inode, at its first name (paths sorted): mknod for
 * devices and fifos, then uid, gid, full mode, mtime, atime (= mtime), ctime (= timestamp)
 * (with `patched`, only for the inodes debugfs makes) and every xattr. Further names of symlinks, devices and fifos are linked with `ln`, and their
 * link counts set at the end; further names of regular files were made by mke2fs -d from the
 * staging tree's hard links. crtime is not set here: mke2fs and debugfs both write
 * E2FSPROGS_FAKE_TIME (= fsTimestamp(timestamp)) there.
 */
export function* debugfsLines(tree: FlatTree, opts: DebugfsScriptOptions): Generator<ScriptLine> {
  const counts = linkCounts(tree)
  const firstName = new Map<Inode, string>()
  const ctime = fsTimestamp(opts.timestamp)
  /** The token naming the inode at tree path `p`: `<N>` when known, else the quoted absolute path. */
  const ref = (p: string): string => {
    const ino = opts.inodes?.get(p)
    return ino !== undefined ? `<${ino}>` : debugfsQuote(abs(p))
  }
  let cwd = ''
  function* cdTo(dir: string): Generator<ScriptLine> {
    if (dir === cwd) return
    yield checked(`cd ${ref(dir)}`, abs(dir))
    cwd = dir
  }
  for (const p of sortedPaths(tree)) {
    const inode = tree.entries.get(p)
    if (inode === undefined) continue
    const where = abs(p)
    const name = p.slice(p.lastIndexOf('/') + 1)
    const first = firstName.get(inode)
    if (first !== undefined) {
      if (!madeByMkfs(inode, false)) {
        yield* cdTo(parentOf(p))
        yield checked(`ln ${ref(first)} ${debugfsQuote(name)}`, where)
      }
      continue
    }
    firstName.set(inode, p)
    if (inode.kind === 'char' || inode.kind === 'block' || inode.kind === 'fifo') {
      yield* cdTo(parentOf(p))
      const spec = inode.kind === 'fifo' ? 'p' : `${inode.kind === 'char' ? 'c' : 'b'} ${inode.devMajor ?? 0} ${inode.devMinor ?? 0}`
      yield checked(`mknod ${debugfsQuote(name)} ${spec}`, where)
    }
    const q = ref(p)
    if (!(opts.patched === true && madeByMkfs(inode, true))) {
      const mtime = ext4Time(inode.mtime)
      yield checked(`sif ${q} uid ${inode.uid}`, where)
      yield checked(`sif ${q} gid ${inode.gid}`, where)
      yield checked(`sif ${q} mode 0${(TYPE_BITS[inode.kind] | inode.mode).toString(8)}`, where)
      yield checked(`sif ${q} mtime @${mtime}`, where)
      yield checked(`sif ${q} atime @${mtime}`, where)
      yield checked(`sif ${q} ctime @${ctime}`, where)
    }
    let i = 0
    for (const [xname] of sortedXattrs(inode)) {
      yield checked(`ea_set -f ${debugfsQuote(xattrValueFile(opts.xattrDir, inode, i++))} ${q} ${debugfsQuote(xname)}`, where)
    }
  }
  for (const [inode, p] of firstName) {
    const n = counts.get(inode) ?? 1
    if (n > 1 && !madeByMkfs(inode, false)) yield checked(`sif ${ref(p)} links_count ${n}`, abs(p))
  }
}

/** The whole script as text (lines joined by '\n', ending with one). */
export function debugfsScript(tree: FlatTree, opts: DebugfsScriptOptions): string {
  let s = ''
  for (const line of debugfsLines(tree, opts)) s += `${line.cmd}\n`
  return s
}

/** debugfs's version banner, printed on stderr when it starts. */
const BANNER = /^debugfs \d+\.\d+(\.\d+)* \(.*\)$/
const ALLOCATED = /^Allocated inode: \d+$/

/**
 * Walk debugfs's combined output against the script it ran: each script line must be echoed as
 * `debugfs: <line>`, in order. Blank lines and the banner are skipped; every other line goes to
 * `accept` with the command echoed last, and a line it refuses is a failure of that command:
 * E_TOOL naming the command's image path. A run that stops early or exits non-zero fails too.
 */
async function walkOutput(
  output: AsyncIterable<string>,
  script: Iterable<ScriptLine>,
  exitCode: number,
  accept: (line: string, current: ScriptLine) => boolean,
): Promise<void> {
  const expected = script[Symbol.iterator]()
  let next = expected.next()
  let current: ScriptLine | undefined
  for await (const line of output) {
    if (!next.done && line === `debugfs: ${next.value.cmd}`) {
      current = next.value
      next = expected.next()
      continue
    }
    if (line.trim() === '' || BANNER.test(line)) continue
    if (current !== undefined && accept(line, current)) continue
    const complaint = line.trim()
    if (current === undefined) throw new BaleError('E_TOOL', `debugfs could not start on the image: ${complaint}`, { subject: 'debugfs' })
    throw new BaleError('E_TOOL', `debugfs failed on ${current.path}: ${complaint}`, { subject: current.path })
  }
  if (!next.done) {
    const after = current === undefined ? 'before its first command' : `after: ${current.cmd}`
    throw new BaleError('E_TOOL', `debugfs stopped early (exit status ${exitCode}) ${after}`, { subject: next.value.path })
  }
  if (exitCode !== 0) throw new BaleError('E_TOOL', `debugfs exited with status ${exitCode}`, { subject: 'debugfs' })
}

/** Check the output of the attribute script: nothing but echoes and mknod's `Allocated inode: N`. */
export async function checkDebugfsOutput(output: AsyncIterable<string>, script: Iterable<ScriptLine>, exitCode: number): Promise<void> {
  await walkOutput(output, script, exitCode, (line, current) => current.cmd.startsWith('mknod ') && ALLOCATED.test(line))
}
