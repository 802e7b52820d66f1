/**
 * Shared by the flatten unit tests and test/traps: run layers through the real flatten stage in
 * a fresh staging directory and describe the resulting tree in a form tests can compare exactly.
 */
import { lstat, mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { expect } from 'vitest'
import { isBaleError, type ErrorCode } from '../../../src/lib/errors.js'
import { applyLayer, createTree } from '../../../src/pipeline/flatten/index.js'
import { linkCounts, readContent, type FlatTree, type Inode } from '../../../src/pipeline/tree.js'
import { chunkedStream, tarStream, type BuildTarOptions, type ChunkOptions, type TarEntry } from '../../helpers/tar.js'

const stagings: string[] = []

export async function newStaging(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bale-flatten-'))
  stagings.push(dir)
  return dir
}

/** Call from afterEach. */
export async function removeStagings(): Promise<void> {
  for (const d of stagings.splice(0)) {
    // Staging blobs are always ours and 0600, so no chmod is needed before removing them.
    await rm(d, { recursive: true, force: true })
  }
}

export function label(i: number): string {
  return `layer ${i + 1} (sha256:test${i})`
}

/**
 * Apply each layer (a list of entries, or a ready archive) in order. After every layer, check
 * the staging invariant: staging holds only `blobs/`, and `blobs/` holds exactly one blob per
 * live regular-file inode, of the inode's size.
 */
export async function flatten(layers: Array<TarEntry[] | Buffer>, opts: BuildTarOptions & ChunkOptions & { packed?: boolean } = {}, staging?: string): Promise<FlatTree> {
  staging ??= await newStaging()
  const tree = await createTree(staging, { packed: opts.packed })
  for (const [i, layer] of layers.entries()) {
    const src = Buffer.isBuffer(layer) ? chunkedStream(layer) : tarStream(layer, opts)
    await applyLayer(tree, src, { index: i, label: label(i) })
    await expectStagingMatches(tree)
  }
  return tree
}

/**
 * Everything under staging, recursively, as `relative/path kind mode` lines (kind from lstat,
 * so a symlink shows as one), to prove nothing but blobs was ever written there.
 */
export async function listStaging(staging: string): Promise<string[]> {
  const out: string[] = []
  async function walk(rel: string): Promise<void> {
    for (const name of (await readdir(path.join(staging, rel))).sort()) {
      const r = rel === '' ? name : `${rel}/${name}`
      const st = await lstat(path.join(staging, r))
      const kind = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'other'
      out.push(`${r} ${kind} ${(st.mode & 0o7777).toString(8).padStart(4, '0')}`)
      if (st.isDirectory()) await walk(r)
    }
  }
  await walk('')
  return out
}

/** Staging holds `blobs` (0700) and, inside it, only 0600 regular files named by inode number. */
export async function expectOnlyBlobs(staging: string): Promise<void> {
  const lines = await listStaging(staging)
  expect(lines[0]).toBe('blobs dir 0700')
  for (const l of lines.slice(1)) expect(l).toMatch(/^blobs\/\d+ file 0600$/)
}

export async function expectStagingMatches(tree: FlatTree): Promise<void> {
  if (tree.packed) {
    // A packed tree: no blob at all, spools only (0600 files), and every live file's slice inside its spool.
    expect((await readdir(tree.staging)).sort()).toEqual(['blobs', 'spool'])
    expect(await readdir(path.join(tree.staging, 'blobs'))).toEqual([])
    for (const l of (await listStaging(tree.staging)).filter((x) => x.startsWith('spool/'))) expect(l).toMatch(/^spool\/\d+ file 0600$/)
    for (const inode of tree.entries.values()) {
      if (inode.kind === 'file') expect((await readContent(tree, inode)).length).toBe(inode.size)
    }
    return
  }
  expect(await readdir(tree.staging)).toEqual(['blobs'])
  const live = new Map<string, Inode>()
  for (const inode of tree.entries.values()) if (inode.kind === 'file') live.set(String(inode.ino), inode)
  const blobs = (await readdir(path.join(tree.staging, 'blobs'))).sort()
  expect(blobs).toEqual([...live.keys()].sort())
  for (const [name, inode] of live) {
    expect((await readFile(path.join(tree.staging, 'blobs', name))).length, `blob ${name}`).toBe(inode.size)
  }
}

/**
 * One line per entry: kind, octal mode, owner, then what identifies the content: file contents
 * (from the blob), symlink target, device numbers; `@mtime` when not 0, `nlink=N` when > 1.
 */
export async function view(tree: FlatTree): Promise<Record<string, string>> {
  const counts = linkCounts(tree)
  const out: Record<string, string> = {}
  for (const p of [...tree.entries.keys()].sort()) {
    const i = tree.entries.get(p) as Inode
    let s = `${i.kind} ${i.mode.toString(8).padStart(4, '0')} ${i.uid}:${i.gid}`
    if (i.kind === 'file') s += ` ${JSON.stringify((await readContent(tree, i)).toString('utf8'))}`
    if (i.kind === 'symlink') s += ` -> ${i.linkTarget ?? '?'}`
    if (i.kind === 'char' || i.kind === 'block') s += ` ${i.devMajor ?? '?'},${i.devMinor ?? '?'}`
    if (i.mtime !== 0) s += ` @${i.mtime}`
    const n = counts.get(i) ?? 0
    if (n > 1 && i.kind !== 'dir') s += ` nlink=${n}`
    out[p] = s
  }
  return out
}

export const ROOT = 'dir 0755 0:0'

/** Expect `flatten(layers)` to fail with `code` and a message that names `shownPath` (as shown, quoted). */
export async function expectFlattenError(
  layers: Array<TarEntry[] | Buffer>,
  code: ErrorCode,
  ...mustContain: string[]
): Promise<string> {
  let err: unknown
  const staging = await newStaging()
  try {
    await flatten(layers, {}, staging)
  } catch (e) {
    err = e
  }
  // Whatever the layers held, a failed flatten wrote nothing but blobs either.
  await expectOnlyBlobs(staging)
  expect(isBaleError(err), `expected a BaleError, got ${String(err)}`).toBe(true)
  if (!isBaleError(err)) throw new Error('unreachable')
  expect(err.code).toBe(code)
  expect(err.message).not.toContain('\n')
  for (const s of mustContain) expect(err.message).toContain(s)
  return err.message
}
