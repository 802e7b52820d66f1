import { promises as fs } from 'node:fs'
import { BaleError } from '../../lib/errors.js'
import { blobPath, type FlatTree, type Inode, parentOf } from '../tree.js'
import { showPath } from './names.js'

/**
 * What a member turns into: an Inode without its identity, which the editor assigns (regular
 * files come with theirs pre-allocated, since their blob is written while the layer is read).
 */
export type NodeSpec = Omit<Inode, 'ino'> & { ino?: number }

/** A member of the layer, read but not applied yet. */
export type LayerOp =
  | { op: 'node'; path: string; spec: NodeSpec }
  | { op: 'link'; path: string; target: string }
  | { op: 'whiteout'; path: string; shown: string }
  | { op: 'opaque'; dir: string; shown: string }

/**
 * Edits a FlatTree with an index of directory children (so removing a subtree costs its size,
 * not the tree's) and of link counts (so a blob is deleted when its inode loses its last name).
 * The index is rebuilt from `tree.entries` for every layer: that costs one pass over the tree,
 * and it keeps the tree itself the only state, whoever else edited it in between.
 */
export class TreeEditor {
  private readonly children = new Map<string, Set<string>>()
  private readonly nlink = new Map<Inode, number>()
  /** Inodes that lost a name during the current operation; their blobs go if nothing re-linked them. */
  private orphans = new Set<Inode>()

  constructor(
    private readonly tree: FlatTree,
    private readonly label: string,
  ) {
    for (const [p, inode] of tree.entries) {
      this.nlink.set(inode, (this.nlink.get(inode) ?? 0) + 1)
      if (p !== '') this.kids(parentOf(p)).add(p)
    }
  }

  private kids(dir: string): Set<string> {
    let s = this.children.get(dir)
    if (s === undefined) {
      s = new Set()
      this.children.set(dir, s)
    }
    return s
  }

  /**
   * Whiteouts first, against the tree as the lower layers left it (checked all before any is
   * applied, so their order does not matter either), then the other members in archive order.
   */
  async applyLayerOps(ops: readonly LayerOp[]): Promise<void> {
    const removals: string[] = []
    for (const op of ops) {
      if (op.op === 'whiteout') {
        if (this.lowerParentIsDir(op.path, op.shown)) removals.push(op.path)
      } else if (op.op === 'opaque') {
        // The opaque marker sits inside the directory it clears: the directory is its "parent".
        if (this.lowerParentIsDir(`${op.dir}/x`, op.shown) && this.tree.entries.get(op.dir)?.kind === 'dir') {
          removals.push(...this.kids(op.dir))
        }
      }
    }
    for (const p of removals) this.remove(p)
    await this.flushOrphans()

    for (const op of ops) {
      if (op.op === 'node') this.applyNode(op.path, op.spec)
      else if (op.op === 'link') this.applyLink(op.path, op.target)
      else continue
      await this.flushOrphans()
    }
  }

  /**
   * For a whiteout: true when every ancestor of `path` is a directory (something may be there to
   * remove), false when one is absent or not a directory (nothing can be). An ancestor that is a
   * symlink is refused like any member whose path crosses one.
   */
  private lowerParentIsDir(path: string, shown: string): boolean {
    const parts = path.split('/')
    for (let i = 0; i < parts.length - 1; i++) {
      const q = parts.slice(0, i + 1).join('/')
      const e = this.tree.entries.get(q)
      if (e === undefined) return false
      if (e.kind === 'symlink') throw this.crossesSymlink(shown, q)
      if (e.kind !== 'dir') return false
    }
    return true
  }

  private crossesSymlink(shown: string, q: string): BaleError {
    return new BaleError('E_UNSAFE_PATH', `${this.label}: ${shown}: parent ${showPath(q)} is a symlink`, { subject: shown })
  }

  /** Every ancestor must be a directory; missing ones are created (0755, 0:0, mtime 0). */
  private ensureParents(path: string): void {
    if (path === '') return
    const parts = path.split('/')
    let q = ''
    for (let i = 0; i < parts.length - 1; i++) {
      q = q === '' ? (parts[i] as string) : `${q}/${parts[i] as string}`
      const e = this.tree.entries.get(q)
      if (e === undefined) {
        this.put(q, this.newInode({ kind: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 0, size: 0, xattrs: new Map() }))
      } else if (e.kind === 'symlink') {
        throw this.crossesSymlink(showPath(path), q)
      } else if (e.kind !== 'dir') {
        const shown = showPath(path)
        throw new BaleError('E_INPUT', `${this.label}: ${shown}: parent ${showPath(q)} is not a directory (it is a ${e.kind})`, {
          subject: shown,
        })
      }
    }
  }

  private newInode(spec: NodeSpec): Inode {
    const inode: Inode = {
      ino: spec.ino ?? this.tree.nextIno++,
      kind: spec.kind,
      mode: spec.mode,
      uid: spec.uid,
      gid: spec.gid,
      mtime: spec.mtime,
      size: spec.size,
      xattrs: spec.xattrs,
    }
    if (spec.linkTarget !== undefined) inode.linkTarget = spec.linkTarget
    if (spec.devMajor !== undefined) inode.devMajor = spec.devMajor
    if (spec.devMinor !== undefined) inode.devMinor = spec.devMinor
    if (spec.content !== undefined) inode.content = spec.content
    return inode
  }

  private applyNode(path: string, spec: NodeSpec): void {
    this.ensureParents(path)
    const existing = this.tree.entries.get(path)
    if (existing?.kind === 'dir' && spec.kind === 'dir') {
      // A directory over a directory updates its metadata and keeps what is inside.
      existing.mode = spec.mode
      existing.uid = spec.uid
      existing.gid = spec.gid
      existing.mtime = spec.mtime
      existing.xattrs = spec.xattrs
      return
    }
    if (existing !== undefined) this.remove(path)
    this.put(path, this.newInode(spec))
  }

  private applyLink(path: string, target: string): void {
    this.ensureParents(path)
    const t = this.tree.entries.get(target)
    const shown = showPath(path)
    if (t === undefined || t.kind === 'dir') {
      const why = t === undefined ? 'is outside the image or absent' : 'is a directory'
      throw new BaleError('E_UNSAFE_PATH', `${this.label}: ${shown}: hard link target ${showPath(target)} ${why}`, { subject: shown })
    }
    const existing = this.tree.entries.get(path)
    if (existing === t) return
    // If `path` is a directory holding the target, the target loses its name here but keeps its
    // inode (and blob) through the new link: orphans are only deleted after put().
    if (existing !== undefined) this.remove(path)
    this.put(path, t)
  }

  private put(path: string, inode: Inode): void {
    this.tree.entries.set(path, inode)
    this.nlink.set(inode, (this.nlink.get(inode) ?? 0) + 1)
    if (path !== '') this.kids(parentOf(path)).add(path)
  }

  /** Remove `path` and everything under it. */
  private remove(path: string): void {
    const stack = [path]
    while (stack.length > 0) {
      const p = stack.pop() as string
      const inode = this.tree.entries.get(p)
      if (inode === undefined) continue
      const kids = this.children.get(p)
      if (kids !== undefined) {
        stack.push(...kids)
        this.children.delete(p)
      }
      this.tree.entries.delete(p)
      this.children.get(parentOf(p))?.delete(p)
      const n = (this.nlink.get(inode) ?? 1) - 1
      this.nlink.set(inode, n)
      if (n === 0) this.orphans.add(inode)
    }
  }

  /** Delete the blobs of files that have no name left, keeping staging as small as the tree. */
  private async flushOrphans(): Promise<void> {
    if (this.orphans.size === 0) return
    const gone = [...this.orphans].filter((i) => this.nlink.get(i) === 0)
    this.orphans = new Set()
    for (const inode of gone) {
      this.nlink.delete(inode)
      // A spooled file's slice stays: the spool is one file for the whole layer.
      if (inode.kind === 'file' && inode.content === undefined) await fs.rm(blobPath(this.tree, inode), { force: true })
    }
  }
}
