import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import lockfile from 'proper-lockfile'
import { z } from 'zod'
import { removeQuietly } from '../../lib/atomic.js'
import { BaleError } from '../../lib/errors.js'
import { kernelsDir } from '../../lib/paths.js'

/**
 * Imported kernels on disk:
 *
 *   <kernelsDir>/<kernel_ref>            → symlink to .<kernel_ref>@<id> (so a re-import swaps
 *                                          vmlinux, initramfs and kernel.json in one rename)
 *   <kernelsDir>/.<kernel_ref>@<id>/     vmlinux, initramfs.cpio.gz, kernel.json
 *   <kernelsDir>/default                 → symlink to <kernel_ref> (`bale kernel import --default`)
 *   <kernelsDir>/.staging-<pid>-<rand>/  an import in progress
 *
 * `<kernelsDir>/<kernel_ref>/vmlinux` therefore always names a complete kernel: rename(2) over a
 * symlink is atomic, while replacing a non-empty directory is not possible in one step.
 */

export const KERNEL_JSON = 'kernel.json'
export const VMLINUX = 'vmlinux'
export const INITRAMFS = 'initramfs.cpio.gz'
export const DEFAULT_REF = 'default'
/** Bumped when the initramfs layout or kernel.json changes, so `import` rebuilds instead of skipping. */
export const KERNEL_FORMAT_VERSION = 1

/** A directory name under kernelsDir: no separators, no dot-files, not the `default` alias. */
const REF_RE = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/

export function validateRef(ref: string, what = 'kernel_ref'): string {
  if (!REF_RE.test(ref) || ref === DEFAULT_REF) {
    throw new BaleError('E_USAGE', `${what} ${JSON.stringify(ref)}: use letters, digits, '.', '_', '+', '-' (at most 128, not "default")`, { subject: ref })
  }
  return ref
}

const hex64 = z.string().regex(/^[0-9a-f]{64}$/)

export const KernelInfoSchema = z.object({
  schema_version: z.literal(KERNEL_FORMAT_VERSION),
  kernel_ref: z.string(),
  /** `uname -r` in the guest, e.g. 6.1.0-56-cloud-amd64. */
  release: z.string(),
  /** The bzImage's kernel_version string, when the kernel came as a bzImage. */
  version: z.string().nullable(),
  source: z.object({
    kind: z.enum(['deb', 'vmlinuz']),
    /** File name of the .deb or the vmlinuz given. */
    file: z.string(),
    sha256: hex64,
    package: z.string().nullable(),
    package_version: z.string().nullable(),
    /** The modules directory given with --modules (vmlinuz imports). */
    modules_dir: z.string().nullable(),
  }),
  vmlinux: z.object({ file: z.string(), sha256: hex64, size: z.number().int().nonnegative(), payload_compression: z.string(), pvh_entry: z.string() }),
  initramfs: z.object({ file: z.string(), sha256: hex64, size: z.number().int().nonnegative(), compression: z.literal('gzip') }),
  init: z.object({ file: z.string(), sha256: hex64 }),
  /** In load order, as in the initramfs's modules.order. */
  modules: z.array(z.object({ name: z.string(), file: z.string(), sha256: hex64, depends: z.array(z.string()) })),
  builtin_modules: z.array(z.string()),
  /** Digest of everything the import read; a re-import with the same inputs is a no-op. */
  input_digest: hex64,
  created: z.string(),
})

export type KernelInfo = z.infer<typeof KernelInfoSchema>

export interface KernelStore {
  dir: string
}

export function defaultStore(env: NodeJS.ProcessEnv = process.env): KernelStore {
  return { dir: kernelsDir(env) }
}

export async function readKernelInfo(dir: string): Promise<KernelInfo> {
  const file = path.join(dir, KERNEL_JSON)
  let raw: unknown
  try {
    raw = JSON.parse(await fs.readFile(file, 'utf8'))
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new BaleError('E_NOT_FOUND', `${file}: no such file`, { subject: file, cause: e })
    throw new BaleError('E_STATE', `${file}: unreadable (${(e as Error).message})`, { subject: file, cause: e })
  }
  const parsed = KernelInfoSchema.safeParse(raw)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new BaleError('E_STATE', `${file}: ${issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'invalid'}; re-import the kernel`, { subject: file })
  }
  return parsed.data
}

/** The kernel_ref `default` points at, or undefined. */
export async function readDefaultRef(store: KernelStore): Promise<string | undefined> {
  const target = await fs.readlink(path.join(store.dir, DEFAULT_REF)).catch(() => undefined)
  return target !== undefined && REF_RE.test(target) ? target : undefined
}

/** A fresh staging directory for an import, removed by the caller (and by cleanup on SIGINT). */
export async function makeStaging(store: KernelStore): Promise<string> {
  await fs.mkdir(store.dir, { recursive: true })
  await sweepDeadStaging(store)
  const dir = path.join(store.dir, `.staging-${process.pid}-${randomBytes(4).toString('hex')}`)
  await fs.mkdir(dir, { mode: 0o755 })
  return dir
}

/** Imports killed with SIGKILL leave their staging directory behind; their pid is gone. */
async function sweepDeadStaging(store: KernelStore): Promise<void> {
  for (const name of await fs.readdir(store.dir)) {
    const m = /^\.staging-(\d+)-[0-9a-f]+$/.exec(name)
    if (m && !pidAlive(Number(m[1]))) await removeQuietly(path.join(store.dir, name))
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'
  }
}

async function withStoreLock<T>(store: KernelStore, fn: () => Promise<T>): Promise<T> {
  await fs.mkdir(store.dir, { recursive: true })
  // Imports finish in seconds; 10 retries up to 1 s apart wait out a concurrent commit.
  const release = await lockfile.lock(store.dir, {
    lockfilePath: path.join(store.dir, '.lock'),
    realpath: false,
    retries: { retries: 10, minTimeout: 100, maxTimeout: 1000 },
  })
  try {
    return await fn()
  } finally {
    await release()
  }
}

/** Replace `link` by a symlink to `target` in one rename(2). */
async function swapSymlink(link: string, target: string): Promise<void> {
  const tmp = path.join(path.dirname(link), `.${path.basename(link)}.link-${process.pid}-${randomBytes(4).toString('hex')}`)
  await fs.symlink(target, tmp)
  try {
    await fs.rename(tmp, link)
  } catch (e) {
    await removeQuietly(tmp)
    throw e
  }
}

/**
 * Move a complete kernel directory (`built`, holding vmlinux, initramfs and kernel.json) into
 * place as `ref`, atomically replacing what was there, and optionally point `default` at it.
 * Older versions of the same ref are removed afterwards; a VM already running read its kernel
 * and initramfs when QEMU started, so removing them does not disturb it.
 */
export async function commitKernel(store: KernelStore, ref: string, built: string, makeDefault: boolean): Promise<string> {
  validateRef(ref)
  return withStoreLock(store, async () => {
    const versioned = `.${ref}@${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`
    await fs.rename(built, path.join(store.dir, versioned))
    const link = path.join(store.dir, ref)
    const st = await fs.lstat(link).catch(() => undefined)
    if (st !== undefined && !st.isSymbolicLink()) {
      // Not made by this code (a hand-made directory): move it aside, it is removed below.
      await fs.rename(link, path.join(store.dir, `.${ref}@replaced-${randomBytes(3).toString('hex')}`))
    }
    await swapSymlink(link, versioned)
    if (makeDefault) await swapSymlink(path.join(store.dir, DEFAULT_REF), ref)
    for (const name of await fs.readdir(store.dir)) {
      if (name.startsWith(`.${ref}@`) && name !== versioned) await removeQuietly(path.join(store.dir, name))
    }
    return path.join(store.dir, versioned)
  })
}

/** Point `default` at an already imported ref. */
export async function setDefault(store: KernelStore, ref: string): Promise<void> {
  await withStoreLock(store, () => swapSymlink(path.join(store.dir, DEFAULT_REF), validateRef(ref)))
}

export interface ListedKernel {
  ref: string
  default: boolean
  /** The directory holding the files (the symlink's target). */
  dir: string
  info?: KernelInfo
  /** Why the entry cannot be used (missing or invalid kernel.json). */
  error?: string
}

export async function listStore(store: KernelStore): Promise<ListedKernel[]> {
  const names = await fs.readdir(store.dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[]
    throw e
  })
  const def = await readDefaultRef(store)
  const out: ListedKernel[] = []
  for (const ref of names.sort()) {
    if (ref.startsWith('.') || ref === DEFAULT_REF || !REF_RE.test(ref)) continue
    const dir = await fs.realpath(path.join(store.dir, ref)).catch(() => path.join(store.dir, ref))
    try {
      out.push({ ref, default: ref === def, dir, info: await readKernelInfo(dir) })
    } catch (e) {
      out.push({ ref, default: ref === def, dir, error: (e as Error).message })
    }
  }
  return out
}
