import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import { BaleError } from '../../lib/errors.js'
import type { ImageConfig } from '../source/types.js'
import { blobPath, type FlatTree, type Inode, type NodeKind } from '../tree.js'

/**
 * Guest injection: puts the guest init/agent and the image config into the tree at /.bale,
 * so they go through the same ext4/debugfs path as every other file (root-owned, exact modes,
 * fixed mtime) rather than being patched into the image afterwards.
 */
export const GUEST_DIR = '.bale'
export const GUEST_INIT = '.bale/init'
export const GUEST_CONFIG = '.bale/config.json'

/** The config stage 2 reads from /.bale/config.json (see docs/agent-protocol.md and guest/README.md). */
export interface GuestConfig {
  entrypoint: string[]
  cmd: string[]
  env: string[]
  user: string
  workdir: string
  hostname: string
}

export interface InjectOptions {
  /** The static guest binary (guest/out/bale-init). */
  initBinary: string
  config: ImageConfig
  hostname?: string
  /** mtime for the injected entries and any mount points created (reproducible builds). */
  mtime: number
}

export interface InjectResult {
  initSha256: string
  initSize: number
  config: GuestConfig
}

/**
 * Mount points stage 2 needs. A distroless image may lack them, and the root disk is not
 * guaranteed to be writable before stage 2 runs, so they are created at build time.
 */
const MOUNT_POINTS: Array<[string, number]> = [
  ['dev', 0o755],
  ['proc', 0o555],
  ['sys', 0o555],
  ['run', 0o755],
  ['tmp', 0o1777],
  ['etc', 0o755],
]

export async function injectGuest(tree: FlatTree, opts: InjectOptions): Promise<InjectResult> {
  let init: Buffer
  try {
    init = await fs.readFile(opts.initBinary)
  } catch {
    throw new BaleError('E_NOT_FOUND', `guest init ${opts.initBinary} not found: build it with \`npm run build:guest\``, {
      subject: opts.initBinary,
    })
  }
  const config: GuestConfig = {
    entrypoint: opts.config.entrypoint ?? [],
    cmd: opts.config.cmd ?? [],
    env: opts.config.env ?? [],
    user: opts.config.user ?? '',
    workdir: opts.config.workingDir ?? '',
    hostname: opts.hostname ?? 'bale',
  }

  for (const [name, mode] of MOUNT_POINTS) {
    const existing = tree.entries.get(name)
    if (existing === undefined) addNode(tree, name, 'dir', mode, opts.mtime)
    // A symlinked /tmp or /run (e.g. -> /var/tmp) is fine; stage 2 mounts over what it finds.
  }

  // /.bale is ours: whatever an image put there is replaced.
  for (const p of [...tree.entries.keys()]) {
    if (p === GUEST_DIR || p.startsWith(`${GUEST_DIR}/`)) tree.entries.delete(p)
  }
  addNode(tree, GUEST_DIR, 'dir', 0o755, opts.mtime)
  await addFile(tree, GUEST_INIT, init, 0o755, opts.mtime)
  await addFile(tree, GUEST_CONFIG, Buffer.from(`${JSON.stringify(config)}\n`), 0o644, opts.mtime)

  return { initSha256: createHash('sha256').update(init).digest('hex'), initSize: init.length, config }
}

function addNode(tree: FlatTree, p: string, kind: NodeKind, mode: number, mtime: number): Inode {
  const inode: Inode = { ino: tree.nextIno++, kind, mode, uid: 0, gid: 0, mtime, size: 0, xattrs: new Map() }
  tree.entries.set(p, inode)
  return inode
}

async function addFile(tree: FlatTree, p: string, data: Buffer, mode: number, mtime: number): Promise<void> {
  const inode = addNode(tree, p, 'file', mode, mtime)
  inode.size = data.length
  // 'wx': exclusive create, like every staging write, so nothing can redirect it.
  await fs.writeFile(blobPath(tree, inode), data, { flag: 'wx', mode: 0o600 })
}
