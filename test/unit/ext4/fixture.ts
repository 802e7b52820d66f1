/**
 * Builds a FlatTree by hand for the ext4 tests: Inode objects in the model and content blobs
 * at `${staging}/blobs/<ino>`, the way flatten leaves them.
 */
import { promises as fs } from 'node:fs'
import path from 'node:path'
import type { FlatTree, Inode, NodeKind } from '../../../src/pipeline/tree.js'

export interface Attrs {
  mode?: number
  uid?: number
  gid?: number
  mtime?: number
  xattrs?: Record<string, Buffer | string>
}

export class TreeBuilder {
  readonly tree: FlatTree

  constructor(staging: string) {
    this.tree = { staging, packed: false, entries: new Map(), nextIno: 1 }
  }

  static async create(staging: string, rootAttrs: Attrs = {}): Promise<TreeBuilder> {
    await fs.mkdir(path.join(staging, 'blobs'), { recursive: true })
    const b = new TreeBuilder(staging)
    b.add('', b.inode('dir', { mode: 0o755, ...rootAttrs }))
    return b
  }

  inode(kind: NodeKind, a: Attrs, extra: Partial<Inode> = {}): Inode {
    const xattrs = new Map<string, Buffer>()
    for (const [k, v] of Object.entries(a.xattrs ?? {})) xattrs.set(k, Buffer.isBuffer(v) ? v : Buffer.from(v))
    return {
      ino: this.tree.nextIno++,
      kind,
      mode: a.mode ?? (kind === 'dir' ? 0o755 : kind === 'symlink' ? 0o777 : 0o644),
      uid: a.uid ?? 0,
      gid: a.gid ?? 0,
      mtime: a.mtime ?? 1_600_000_000,
      size: 0,
      xattrs,
      ...extra,
    }
  }

  add(p: string, inode: Inode): Inode {
    this.tree.entries.set(p, inode)
    return inode
  }

  dir(p: string, a: Attrs = {}): Inode {
    return this.add(p, this.inode('dir', a))
  }

  /** A regular file; `content` undefined means an empty file whose blob flatten did not write. */
  async file(p: string, content: Buffer | string | undefined, a: Attrs = {}): Promise<Inode> {
    const buf = content === undefined ? undefined : Buffer.isBuffer(content) ? content : Buffer.from(content)
    const inode = this.inode('file', a, { size: buf?.length ?? 0 })
    if (buf !== undefined) await fs.writeFile(path.join(this.tree.staging, 'blobs', String(inode.ino)), buf, { mode: 0o600 })
    return this.add(p, inode)
  }

  link(p: string, inode: Inode): Inode {
    return this.add(p, inode)
  }

  symlink(p: string, target: string, a: Attrs = {}): Inode {
    return this.add(p, this.inode('symlink', a, { linkTarget: target, size: Buffer.byteLength(target) }))
  }

  device(p: string, kind: 'char' | 'block', major: number, minor: number, a: Attrs = {}): Inode {
    return this.add(p, this.inode(kind, a, { devMajor: major, devMinor: minor }))
  }

  fifo(p: string, a: Attrs = {}): Inode {
    return this.add(p, this.inode('fifo', a))
  }

  /**
   * Turn the tree into a packed one, as flatten makes it for mke2fs's tar input: every blob's
   * bytes appended to one spool (with a gap between files, so offsets matter), the blobs gone.
   */
  async pack(): Promise<void> {
    const spoolDir = path.join(this.tree.staging, 'spool')
    await fs.mkdir(spoolDir, { mode: 0o700 })
    const spool = path.join(spoolDir, '1')
    const fh = await fs.open(spool, 'wx', 0o600)
    try {
      let offset = 0
      const done = new Set<Inode>()
      for (const inode of this.tree.entries.values()) {
        if (inode.kind !== 'file' || done.has(inode)) continue
        done.add(inode)
        const blob = path.join(this.tree.staging, 'blobs', String(inode.ino))
        const data = await fs.readFile(blob).catch(() => Buffer.alloc(0))
        await fh.write(Buffer.from('gap'), 0, 3, offset)
        offset += 3
        await fh.write(data, 0, data.length, offset)
        inode.content = { path: spool, offset }
        offset += data.length
        await fs.rm(blob, { force: true })
      }
    } finally {
      await fh.close()
    }
    ;(this.tree as { packed: boolean }).packed = true
  }
}
