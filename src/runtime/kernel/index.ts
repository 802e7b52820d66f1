import { promises as fs } from 'node:fs'
import path from 'node:path'
import { BaleError } from '../../lib/errors.js'
import { DEFAULT_REF, defaultStore, listStore, readDefaultRef, readKernelInfo, validateRef, type KernelInfo, type KernelStore, type ListedKernel } from './store.js'

export { importKernel, type ImportEvent, type ImportKernelOptions, type ImportKernelResult, type KernelSource } from './import.js'
export { buildInitramfs, INITRAMFS_DIRS, type BuildInitramfsOptions, type InitramfsModule, type InitramfsResult } from './initramfs.js'
export { type CpioEntry } from './cpio.js'
export { extractVmlinux, type VmlinuxResult } from './bzimage.js'
export { GUEST_MODULES, resolveModules, type ModuleResolution, type ResolvedModule } from './modules.js'
export { DEFAULT_REF, defaultStore, type KernelInfo, type KernelStore, type ListedKernel } from './store.js'

export interface ResolvedKernel {
  /** The kernel_ref the files belong to (`default` resolved to the ref it names). */
  ref: string
  vmlinux: string
  initramfs: string
  info: KernelInfo
}

const IMPORT_HINT = 'bale kernel import --deb <linux-image-…deb>'

/** Every imported kernel, sorted by ref; broken entries carry `error` instead of `info`. */
export async function listKernels(store: KernelStore = defaultStore()): Promise<ListedKernel[]> {
  return listStore(store)
}

/**
 * The files to boot for a bundle's kernel_ref (or `--kernel`). `default` means the kernel last
 * imported with `--default`. Paths point into the ref's current version directory, so the
 * vmlinux and initramfs handed to QEMU always belong together even if a re-import swaps the ref
 * meanwhile. Files are checked for presence and recorded size, not hashed (that would cost
 * ~0.1 s per boot for a 50 MB vmlinux).
 */
export async function resolveKernel(ref: string, store: KernelStore = defaultStore()): Promise<ResolvedKernel> {
  let name = ref
  if (ref === DEFAULT_REF) {
    const def = await readDefaultRef(store)
    if (def === undefined) {
      throw new BaleError('E_NOT_FOUND', `kernel ${ref} is not imported; run: ${IMPORT_HINT} --default`, { subject: ref })
    }
    name = def
  } else {
    try {
      validateRef(ref)
    } catch {
      throw new BaleError('E_INPUT', `kernel_ref ${JSON.stringify(ref)} is not a valid kernel reference`, { subject: ref })
    }
  }
  const dir = await fs.realpath(path.join(store.dir, name)).catch(() => undefined)
  if (dir === undefined) {
    throw new BaleError('E_NOT_FOUND', `kernel ${name} is not imported; run: ${IMPORT_HINT}${name === ref ? '' : ' --default'}`, { subject: name })
  }
  const info = await readKernelInfo(dir)
  const files = { vmlinux: path.join(dir, info.vmlinux.file), initramfs: path.join(dir, info.initramfs.file) }
  for (const [what, file, size] of [
    ['vmlinux', files.vmlinux, info.vmlinux.size],
    ['initramfs', files.initramfs, info.initramfs.size],
  ] as const) {
    const actual = await fs.stat(file).then((s) => s.size, () => -1)
    if (actual !== size) {
      throw new BaleError('E_STATE', `kernel ${name}: ${what} ${file} ${actual < 0 ? 'is missing' : `has ${actual} bytes, kernel.json says ${size}`}; re-import it`, { subject: file })
    }
  }
  return { ref: name, ...files, info }
}
