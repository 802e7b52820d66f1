import { promises as fs } from 'node:fs'
import type { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { BaleError, fromSystemError, isBaleError } from '../../lib/errors.js'
import { baseName, type ContentSlice, type FlatTree, type Inode, type NodeKind } from '../tree.js'
import { BlobWriter } from './blob-writer.js'
import { SpoolWriter } from './spool-writer.js'
import { checkName, decodeUtf8, MAX_PATH_BYTES, normalizeEntryName, showPath } from './names.js'
import { readTar, type TarHeader } from './tar-reader.js'
import { type LayerOp, type NodeSpec, TreeEditor } from './tree-editor.js'

export { normalizeEntryName } from './names.js'

/**
 * Flatten: apply image layers, in order, to a FlatTree (see tree.ts).
 *
 * Semantics of one layer L, defined so that the order of members inside L never matters for
 * whiteouts: first every whiteout of L is applied to the tree as it was before L (so a whiteout
 * only ever removes lower-layer content), then L's other members are applied in archive order.
 * The layer is read in one pass: regular-file contents stream straight into their blobs as they
 * arrive, while the members' metadata (small: the tree holds it all anyway) is kept until the
 * end of the layer and applied then. This gives the "whiteouts affect lower layers only,
 * wherever they sit" rule exactly, with no per-entry origin bookkeeping and no special cases for
 * a whiteout that follows a same-layer entry under the path it removes.
 */

export interface LayerStats {
  /** Members read from the layer (whiteouts included; PAX and GNU extended headers not counted). */
  entries: number
  /** Bytes of regular-file content written to staging. */
  bytes: number
}

/** The inode 1 of the tree is its root; numbering only has to be unique (it names blobs). */
const ROOT_INO = 1
/** OCI image spec, layer.md: these prefixes mark whiteouts and never appear in the tree. */
const WHITEOUT_PREFIX = '.wh.'
const OPAQUE_WHITEOUT = '.wh..wh..opq'
/** moby's WhiteoutMetaPrefix (pkg/archive/whiteouts.go). */
const AUFS_META_PREFIX = '.wh..wh.'
/** ext4 stores uid and gid as 32-bit numbers. */
const MAX_ID = 0xffffffff

/** `packed`: contents go to one spool per layer rather than a blob per file (see tree.ts). */
export async function createTree(staging: string, opts: { packed?: boolean } = {}): Promise<FlatTree> {
  // mkdir without recursive fails if it already exists, so a planted symlink cannot redirect it.
  await fs.mkdir(`${staging}/blobs`, { mode: 0o700 })
  if (opts.packed === true) await fs.mkdir(`${staging}/spool`, { mode: 0o700 })
  const root: Inode = { ino: ROOT_INO, kind: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 0, size: 0, xattrs: new Map() }
  return { staging, packed: opts.packed === true, entries: new Map([['', root]]), nextIno: ROOT_INO + 1 }
}

/** Where readLayer puts a layer's regular-file contents: a blob per file, or the layer's spool. */
interface ContentSink {
  /** Store a file's bytes; returns their slice when they are not in the inode's own blob. */
  add(ino: number, body: AsyncIterable<Buffer>): Promise<ContentSlice | undefined>
  flush(): Promise<void>
  close(): Promise<void>
}

function contentSink(tree: FlatTree): ContentSink {
  if (tree.packed) {
    // Named by a number of the tree's, so a spool is never reused, whichever layer is read again.
    const spool = new SpoolWriter(`${tree.staging}/spool/${tree.nextIno++}`)
    return { add: (_ino, body) => spool.add(body), flush: () => spool.flush(), close: () => spool.close() }
  }
  const blobs = new BlobWriter()
  return {
    // Same place blobPath() names once the inode exists.
    add: async (ino, body) => void (await blobs.write(`${tree.staging}/blobs/${ino}`, body)),
    flush: () => blobs.flush(),
    close: () => blobs.close(),
  }
}

const KINDS: Record<string, NodeKind | 'link'> = {
  '0': 'file',
  // Contiguous files are regular files everywhere but a few 1980s systems.
  '7': 'file',
  '1': 'link',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  '6': 'fifo',
}

export async function applyLayer(tree: FlatTree, tar: Readable, layer: { index: number; label: string }): Promise<LayerStats> {
  return applyReadLayer(tree, await readLayer(tree, tar, layer))
}

/** A layer read and checked, its contents in their blobs, its changes not yet made to the tree. */
export interface ReadLayer {
  readonly label: string
  readonly ops: readonly LayerOp[]
  readonly stats: LayerStats
}

/**
 * The first half of applyLayer: read the layer, write its regular files' contents to new blobs
 * and collect its changes. It does not look at the tree's entries (only takes inode numbers), so
 * the next layer can be read while this one is applied; layers must still be applied in order.
 */
export async function readLayer(tree: FlatTree, tar: Readable, layer: { index: number; label: string }): Promise<ReadLayer> {
  const { label } = layer
  const ops: LayerOp[] = []
  const stats: LayerStats = { entries: 0, bytes: 0 }
  const blobs = contentSink(tree)
  try {
    await pipeline(tar, async (source: AsyncIterable<unknown>) => {
      stats.entries = await readTar(source, label, async (h, body) => {
        const op = await readMember(tree, h, body, label, blobs)
        if (op === undefined) return
        if (op.op === 'node' && op.spec.kind === 'file') stats.bytes += op.spec.size
        ops.push(op)
      })
    })
    // Every blob of the layer written before the tree edits, which may remove some.
    await blobs.flush()
  } catch (e) {
    throw asBaleError(e, label)
  } finally {
    await blobs.close()
  }
  return { label, ops, stats }
}

/** The second half of applyLayer: make a read layer's changes to the tree (whiteouts first, see above). */
export async function applyReadLayer(tree: FlatTree, layer: ReadLayer): Promise<LayerStats> {
  try {
    await new TreeEditor(tree, layer.label).applyLayerOps(layer.ops)
  } catch (e) {
    throw asBaleError(e, layer.label)
  }
  return layer.stats
}

function asBaleError(e: unknown, label: string): BaleError {
  if (isBaleError(e)) return e
  const sys = fromSystemError(e, label)
  if (sys !== undefined) return sys
  const msg = e instanceof Error ? e.message : String(e)
  return new BaleError('E_INPUT', `${label}: ${msg}`, { subject: label, cause: e })
}

/** Builds the error for the member being read: `${label}: <its name>: <why>`. */
type Fail = (code: 'E_INPUT' | 'E_UNSAFE_PATH', why: string) => BaleError

/** Turn one tar member into an operation (undefined: skipped); regular-file contents go to their blob now. */
async function readMember(tree: FlatTree, h: TarHeader, body: AsyncIterable<Buffer>, label: string, blobs: ContentSink): Promise<LayerOp | undefined> {
  // Shown only in messages and whiteouts: made when needed (per member it was ~5 % of a layer's main thread).
  const shown = (): string => showPath(h.name)
  const fail: Fail = (code, why) => {
    const name = shown()
    return new BaleError(code, `${label}: ${name}: ${why}`, { subject: name })
  }

  const path = normalizeEntryName(h.name, label)
  if (h.typeflag === 'S' || [...h.pax.keys()].some((k) => k.startsWith('GNU.sparse.'))) {
    throw fail('E_INPUT', 'GNU sparse files are not supported (re-create the archive without --sparse)')
  }
  let kind = KINDS[h.typeflag]
  if (kind === undefined) throw fail('E_INPUT', `unsupported tar member type '${h.typeflag}'`)
  // Old tars marked directories as regular files with a trailing slash.
  if (kind === 'file' && h.name[h.name.length - 1] === 0x2f) kind = 'dir'

  const parts = path.split('/')
  // AUFS bookkeeping at the top of layers made on AUFS hosts (.wh..wh.aufs, .wh..wh.plnk/…):
  // Docker skips it, and so does bale.
  if ((parts[0] as string).startsWith(AUFS_META_PREFIX) && path !== OPAQUE_WHITEOUT) return undefined
  if (parts.slice(0, -1).some((c) => c.startsWith(WHITEOUT_PREFIX))) {
    throw fail('E_INPUT', 'a whiteout name is used as a directory')
  }
  const base = baseName(path)
  if (base.startsWith(WHITEOUT_PREFIX)) {
    if (base === OPAQUE_WHITEOUT) return { op: 'opaque', dir: path.slice(0, Math.max(0, path.length - base.length - 1)), shown: shown() }
    const target = base.slice(WHITEOUT_PREFIX.length)
    if (target === '' || target === '.' || target === '..') {
      throw fail('E_UNSAFE_PATH', "whiteout of '.', '..' or an empty name")
    }
    return { op: 'whiteout', path: path.slice(0, path.length - WHITEOUT_PREFIX.length - target.length) + target, shown: shown() }
  }

  if (kind === 'link') {
    const t = checkName(h.linkname)
    if (!t.ok) {
      throw fail('E_UNSAFE_PATH', `hard link target ${showPath(h.linkname)} is outside the image or absent (${t.reason})`)
    }
    if (path === '') throw fail('E_INPUT', 'a hard link cannot replace the image root')
    return { op: 'link', path, target: t.path }
  }
  if (path === '' && kind !== 'dir') throw fail('E_INPUT', `a ${kind} cannot replace the image root`)

  if (h.uid > MAX_ID || h.gid > MAX_ID || h.uid < 0 || h.gid < 0) throw fail('E_INPUT', `uid/gid ${h.uid}:${h.gid} out of range`)
  const spec: NodeSpec = {
    kind,
    // Keep permissions and setuid/setgid/sticky; drop any file-type bits the writer put in.
    mode: h.mode & 0o7777,
    uid: h.uid,
    gid: h.gid,
    mtime: h.mtime,
    size: 0,
    xattrs: readXattrs(h.pax, fail),
  }
  switch (kind) {
    case 'char':
    case 'block':
      spec.devMajor = h.devmajor
      spec.devMinor = h.devminor
      break
    case 'symlink':
      spec.linkTarget = symlinkTarget(h.linkname, fail)
      spec.size = Buffer.byteLength(spec.linkTarget, 'utf8')
      break
    case 'file': {
      spec.ino = tree.nextIno++
      spec.size = h.size
      const slice = await blobs.add(spec.ino, body)
      if (slice !== undefined) spec.content = slice
      break
    }
    default:
      break
  }
  return { op: 'node', path, spec }
}

function symlinkTarget(raw: Buffer, fail: Fail): string {
  // Stored exactly as written, but it must be representable: the tree keeps text, Linux refuses
  // empty targets, and debugfs cannot write a target with a line break.
  if (raw.length === 0) throw fail('E_INPUT', 'symlink with an empty target')
  if (raw.length > MAX_PATH_BYTES) throw fail('E_INPUT', `symlink target longer than ${MAX_PATH_BYTES} bytes`)
  if (raw.includes(0x0a) || raw.includes(0x0d) || raw.includes(0)) {
    throw fail('E_UNSAFE_PATH', `symlink target ${showPath(raw)} contains a NUL, newline or carriage return`)
  }
  const text = decodeUtf8(raw)
  if (text === undefined) throw fail('E_UNSAFE_PATH', `symlink target ${showPath(raw)} is not valid UTF-8`)
  return text
}

const SCHILY_XATTR = 'SCHILY.xattr.'
const LIBARCHIVE_XATTR = 'LIBARCHIVE.xattr.'

/**
 * xattrs from PAX records: `SCHILY.xattr.NAME` (GNU tar, Go, star; value is the raw bytes) and
 * `LIBARCHIVE.xattr.NAME` (bsdtar; NAME percent-encoded, value base64). bsdtar writes both for
 * the same attribute; its LIBARCHIVE form is the lossless one, so it wins.
 */
function readXattrs(pax: Map<string, Buffer>, fail: Fail): Map<string, Buffer> {
  const out = new Map<string, Buffer>()
  const xattrName = (name: string): string => {
    if (name === '' || name.includes('\0')) throw fail('E_INPUT', `invalid xattr name ${JSON.stringify(name)}`)
    return name
  }
  for (const [k, v] of pax) {
    if (k.startsWith(SCHILY_XATTR)) out.set(xattrName(k.slice(SCHILY_XATTR.length)), v)
  }
  for (const [k, v] of pax) {
    if (!k.startsWith(LIBARCHIVE_XATTR)) continue
    let name: string
    try {
      name = decodeURIComponent(k.slice(LIBARCHIVE_XATTR.length))
    } catch {
      throw fail('E_INPUT', `invalid percent-encoding in PAX key ${JSON.stringify(k)}`)
    }
    const text = v.toString('latin1')
    // Node's base64 decoder skips characters it does not know; refuse them instead of guessing.
    if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(text)) throw fail('E_INPUT', `PAX key ${JSON.stringify(k)} has a value that is not base64`)
    out.set(xattrName(name), Buffer.from(text, 'base64'))
  }
  return out
}
