import { promises as fs } from 'node:fs'
import path from 'node:path'
import { removeQuietly } from '../lib/atomic.js'
import { registerCleanup } from '../lib/cleanup.js'
import { BaleError } from '../lib/errors.js'
import { kernelsDir } from '../lib/paths.js'
import { digestFile, type FileDigests } from './integrity.js'
import { resolveKernel } from '../runtime/kernel/index.js'
import { commitKernel, makeStaging } from '../runtime/kernel/store.js'

/**
 * Kernels as the catalog moves them: the directory `bale kernel import` fills (`<kernels>/<ref>`,
 * a symlink to the current version's directory with vmlinux, initramfs.cpio.gz and kernel.json)
 * is carried as its set of regular files, byte for byte. Publishing checks the kernel with the
 * kernel store's resolveKernel (so a broken import is not published); installing commits with
 * the kernel store's own commitKernel.
 */
export interface KernelFile {
  readonly name: string
  readonly path: string
}

export function kernelDir(ref: string, env: NodeJS.ProcessEnv = process.env): string {
  return path.join(kernelsDir(env), ref)
}

/** The files of an imported kernel, sorted by name; `neededBy` names the bundle in the error. */
export async function kernelFiles(ref: string, neededBy: string, env: NodeJS.ProcessEnv = process.env): Promise<KernelFile[]> {
  if (!(await kernelInstalled(ref, env))) {
    throw new BaleError('E_NOT_FOUND', `kernel ${ref} (needed by ${neededBy}) is not in the kernel store ${kernelsDir(env)} (bale kernel import)`, { subject: ref })
  }
  // Validates kernel.json and the files it names; the dir it returns is the version directory.
  const resolved = await resolveKernel(ref, { dir: kernelsDir(env) })
  const dir = path.dirname(resolved.vmlinux)
  const files: KernelFile[] = []
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    if (e.name.startsWith('.')) continue
    if (!e.isFile()) throw new BaleError('E_INPUT', `kernel ${ref}: ${path.join(dir, e.name)} is not a regular file`, { subject: path.join(dir, e.name) })
    files.push({ name: e.name, path: path.join(dir, e.name) })
  }
  return files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
}

/** Whether a kernel is imported (its directory exists and holds files). */
export async function kernelInstalled(ref: string, env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  try {
    return (await fs.readdir(kernelDir(ref, env))).some((n) => !n.startsWith('.'))
  } catch {
    return false
  }
}

export interface StagedKernel {
  /** Temporary directory in the kernel store, to put verified files in. */
  readonly dir: string
  /** Move the staged directory into place as `<kernels>/<ref>` (the kernel store's own commit). */
  commit(): Promise<'installed' | 'unchanged'>
  /** Remove the staged directory (after a failure; harmless after commit). */
  discard(): Promise<void>
}

/**
 * Stage a kernel's files in the kernel store's own staging area and commit them with the
 * kernel store's commitKernel (a versioned directory behind an atomically swapped symlink), so
 * an installed kernel is laid out exactly as `bale kernel import` lays it out and a reader never
 * sees half of one. If the kernel is already installed with the same files (by SHA-256) nothing
 * changes; with different files the install is refused: a kernel ref names one kernel, and
 * silently swapping it under installed bundles would change what they boot.
 */
export async function stageKernel(ref: string, env: NodeJS.ProcessEnv = process.env): Promise<StagedKernel> {
  const store = { dir: kernelsDir(env) }
  const dir = await makeStaging(store)
  const unregister = registerCleanup(dir)
  const discard = async (): Promise<void> => {
    unregister()
    await removeQuietly(dir)
  }
  const commit = async (): Promise<'installed' | 'unchanged'> => {
    if (await kernelInstalled(ref, env)) {
      const dest = kernelDir(ref, env)
      const same = await sameFiles(dir, dest)
      await discard()
      if (same) return 'unchanged'
      throw new BaleError('E_STATE', `kernel ${ref} is already installed at ${dest} with different files (remove it first to replace it)`, { subject: dest })
    }
    await commitKernel(store, ref, dir, false)
    unregister()
    return 'installed'
  }
  return { dir, commit, discard }
}

async function digestsOf(dir: string): Promise<Map<string, FileDigests>> {
  const out = new Map<string, FileDigests>()
  for (const name of (await fs.readdir(dir)).sort()) {
    if (name.startsWith('.')) continue
    out.set(name, await digestFile(path.join(dir, name), 'sha256'))
  }
  return out
}

async function sameFiles(a: string, b: string): Promise<boolean> {
  const [da, db] = await Promise.all([digestsOf(a), digestsOf(b)])
  if (da.size !== db.size) return false
  for (const [name, d] of da) if (db.get(name)?.sha256 !== d.sha256) return false
  return true
}
