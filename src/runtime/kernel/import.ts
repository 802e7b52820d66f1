import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { removeQuietly } from '../../lib/atomic.js'
import { registerCleanup } from '../../lib/cleanup.js'
import { BaleError } from '../../lib/errors.js'
import { sha256File } from '../../lib/hash.js'
import { extractVmlinux } from './bzimage.js'
import { readDebFields, unpackDeb, type DebFields } from './deb.js'
import { buildInitramfs } from './initramfs.js'
import { GUEST_MODULES, resolveModules, type ModuleResolution } from './modules.js'
import {
  commitKernel,
  defaultStore,
  INITRAMFS,
  KERNEL_FORMAT_VERSION,
  KERNEL_JSON,
  makeStaging,
  readKernelInfo,
  setDefault,
  validateRef,
  VMLINUX,
  type KernelInfo,
  type KernelStore,
} from './store.js'

export type KernelSource = { kind: 'deb'; deb: string } | { kind: 'vmlinuz'; vmlinuz: string; modulesDir: string }

export interface ImportKernelOptions {
  source: KernelSource
  /** The stage-1 program for /init (guest/out/bale-init by default, chosen by the command). */
  init: string
  /** kernel_ref to store under; derived from the kernel release when absent. */
  ref?: string
  /** Point the `default` kernel_ref at this kernel. */
  makeDefault?: boolean
  /** Rebuild even when the same inputs were already imported under this ref. */
  force?: boolean
  store?: KernelStore
  onProgress?: (e: ImportEvent) => void
}

export type ImportEvent =
  | { stage: 'unpack'; file: string }
  | { stage: 'vmlinux'; compression: string; size: number }
  | { stage: 'modules'; names: string[] }
  | { stage: 'initramfs'; size: number }
  | { stage: 'unchanged'; ref: string }

export interface ImportKernelResult {
  ref: string
  dir: string
  vmlinux: string
  initramfs: string
  info: KernelInfo
  /** True when the same inputs were already imported and nothing was rebuilt. */
  unchanged: boolean
  default: boolean
}

/**
 * Import a kernel: a Debian linux-image .deb, or a bzImage/vmlinux with its lib/modules/<release>
 * directory. Writes the PVH vmlinux, an initramfs with the guest's stage 1 and the virtio modules
 * in dependency order, and kernel.json, all in a staging directory that is swapped into place.
 */
export async function importKernel(opts: ImportKernelOptions): Promise<ImportKernelResult> {
  const store = opts.store ?? defaultStore()
  const progress = opts.onProgress ?? (() => undefined)
  if (opts.ref !== undefined) validateRef(opts.ref, '--ref')
  const initSha = await checkedSha256(opts.init, 'init').catch((e: unknown) => {
    if (e instanceof BaleError && e.code === 'E_NOT_FOUND') {
      throw new BaleError('E_NOT_FOUND', `guest init ${opts.init} not found: build it with \`npm run build:guest\` (or give --init)`, { subject: opts.init, cause: e })
    }
    throw e
  })

  let debFields: DebFields | undefined
  let sourceSha: string
  if (opts.source.kind === 'deb') {
    sourceSha = await checkedSha256(opts.source.deb, '--deb')
    debFields = await readDebFields(opts.source.deb)
  } else {
    sourceSha = await checkedSha256(opts.source.vmlinuz, '--vmlinuz')
    await assertDir(opts.source.modulesDir, '--modules')
  }

  // A Debian kernel package is named for its release (linux-image-<release>), so a re-import of
  // the same .deb can be recognised before the 100 MB unpack.
  const debRelease = debFields ? /^linux-image-(.+?)(-unsigned)?$/.exec(debFields.package)?.[1] : undefined
  if (opts.source.kind === 'deb' && debRelease !== undefined && !opts.force) {
    const ref = opts.ref ?? `debian-${debRelease}`
    const done = await unchangedImport(store, ref, inputDigest(sourceSha, initSha, []))
    if (done) return finishUnchanged(store, done, opts, progress)
  }

  const staging = await makeStaging(store)
  const unregister = registerCleanup(staging)
  try {
    let vmlinuzPath: string
    let modulesDir: string
    let config: string | undefined
    if (opts.source.kind === 'deb') {
      progress({ stage: 'unpack', file: opts.source.deb })
      const unpacked = await unpackDeb(opts.source.deb, path.join(staging, 'deb'), debFields!)
      vmlinuzPath = unpacked.vmlinuz
      modulesDir = unpacked.modulesDir
      config = unpacked.config
    } else {
      vmlinuzPath = opts.source.vmlinuz
      modulesDir = opts.source.modulesDir
      // Beside an installed kernel's modules there may be its config (../../../boot/config-<release>).
      const guess = path.resolve(modulesDir, '..', '..', '..', 'boot', `config-${path.basename(path.resolve(modulesDir))}`)
      config = (await fs.stat(guess).then((s) => s.isFile(), () => false)) ? guess : undefined
    }
    const release = path.basename(path.resolve(modulesDir))
    if (config !== undefined) await checkConfig(config)

    const resolution = await resolveModules(modulesDir, GUEST_MODULES)
    for (const m of resolution.modules) {
      const built = m.vermagic?.split(' ')[0]
      if (built !== undefined && built !== release) {
        throw new BaleError('E_INPUT', `${m.source}: module built for kernel ${built}, not ${release}`, { subject: m.source })
      }
    }
    progress({ stage: 'modules', names: resolution.modules.map((m) => m.name) })

    const digest = inputDigest(sourceSha, initSha, opts.source.kind === 'deb' ? [] : resolution.modules.map((m) => m.sha256))
    const out = path.join(staging, 'out')
    await fs.mkdir(out, { mode: 0o755 })

    const vm = await extractVmlinux(vmlinuzPath, path.join(out, VMLINUX))
    progress({ stage: 'vmlinux', compression: vm.compression, size: vm.size })
    const vmRelease = vm.kernelVersion?.split(' ')[0]
    if (vmRelease !== undefined && vmRelease !== release) {
      throw new BaleError('E_INPUT', `${vmlinuzPath} is kernel ${vmRelease} but the modules in ${modulesDir} are for ${release}`, { subject: vmlinuzPath })
    }
    const isDebian = opts.source.kind === 'deb' || /\bDebian\b/.test(vm.kernelVersion ?? '')
    const ref = opts.ref ?? validateRef(`${isDebian ? 'debian' : 'linux'}-${release}`)
    if (opts.source.kind === 'vmlinuz' && !opts.force) {
      const done = await unchangedImport(store, ref, digest)
      if (done) return finishUnchanged(store, done, opts, progress)
    }

    const ird = await buildInitramfs({
      init: opts.init,
      modules: resolution.modules.map((m) => ({ file: m.file, source: m.source })),
      output: path.join(out, INITRAMFS),
    })
    progress({ stage: 'initramfs', size: ird.size })

    const info: KernelInfo = {
      schema_version: KERNEL_FORMAT_VERSION,
      kernel_ref: ref,
      release,
      version: vm.kernelVersion ?? null,
      source:
        opts.source.kind === 'deb'
          ? { kind: 'deb', file: path.basename(opts.source.deb), sha256: sourceSha, package: debFields!.package, package_version: debFields!.version, modules_dir: null }
          : { kind: 'vmlinuz', file: path.basename(opts.source.vmlinuz), sha256: sourceSha, package: null, package_version: null, modules_dir: path.resolve(modulesDir) },
      vmlinux: { file: VMLINUX, sha256: vm.sha256, size: vm.size, payload_compression: vm.compression, pvh_entry: `0x${vm.pvhEntry.toString(16)}` },
      initramfs: { file: INITRAMFS, sha256: ird.sha256, size: ird.size, compression: 'gzip' },
      init: { file: path.resolve(opts.init), sha256: initSha },
      modules: moduleRecords(resolution),
      builtin_modules: resolution.builtin,
      input_digest: digest,
      created: new Date().toISOString(),
    }
    await fs.writeFile(path.join(out, KERNEL_JSON), `${JSON.stringify(info, null, 2)}\n`, { mode: 0o644, flag: 'wx' })
    await syncFiles(out, [VMLINUX, INITRAMFS, KERNEL_JSON])
    const dir = await commitKernel(store, ref, out, opts.makeDefault ?? false)
    return { ref, dir, vmlinux: path.join(dir, VMLINUX), initramfs: path.join(dir, INITRAMFS), info, unchanged: false, default: opts.makeDefault ?? false }
  } finally {
    await removeQuietly(staging)
    unregister()
  }
}

function moduleRecords(r: ModuleResolution): KernelInfo['modules'] {
  return r.modules.map((m) => ({ name: m.name, file: m.file, sha256: m.sha256, depends: m.depends }))
}

function inputDigest(sourceSha: string, initSha: string, moduleShas: string[]): string {
  return createHash('sha256').update(JSON.stringify({ format: KERNEL_FORMAT_VERSION, sourceSha, initSha, moduleShas })).digest('hex')
}

interface Existing {
  ref: string
  dir: string
  info: KernelInfo
}

async function unchangedImport(store: KernelStore, ref: string, digest: string): Promise<Existing | undefined> {
  const dir = await fs.realpath(path.join(store.dir, ref)).catch(() => undefined)
  if (dir === undefined) return undefined
  const info = await readKernelInfo(dir).catch(() => undefined)
  if (info?.input_digest !== digest) return undefined
  // The files must still be whole: their sizes are checked, hashing 50 MB would defeat the point.
  for (const f of [info.vmlinux, info.initramfs]) {
    const size = await fs.stat(path.join(dir, f.file)).then((s) => s.size, () => -1)
    if (size !== f.size) return undefined
  }
  return { ref, dir, info }
}

async function finishUnchanged(store: KernelStore, e: Existing, opts: ImportKernelOptions, progress: (e: ImportEvent) => void): Promise<ImportKernelResult> {
  if (opts.makeDefault) await setDefault(store, e.ref)
  progress({ stage: 'unchanged', ref: e.ref })
  return {
    ref: e.ref,
    dir: e.dir,
    vmlinux: path.join(e.dir, e.info.vmlinux.file),
    initramfs: path.join(e.dir, e.info.initramfs.file),
    info: e.info,
    unchanged: true,
    default: opts.makeDefault ?? false,
  }
}

/**
 * What the guest needs from the kernel config, when the package carries it: an initramfs it can
 * decompress (gzip), and the PVH entry (also checked on the vmlinux itself, which is decisive).
 */
async function checkConfig(config: string): Promise<void> {
  const text = await fs.readFile(config, 'utf8')
  for (const opt of ['CONFIG_BLK_DEV_INITRD', 'CONFIG_RD_GZIP', 'CONFIG_DEVTMPFS']) {
    if (!new RegExp(`^${opt}=y$`, 'm').test(text)) {
      throw new BaleError('E_INPUT', `${config}: ${opt} is not =y; bale's gzip initramfs and stage 1 need it`, { subject: config })
    }
  }
}

async function checkedSha256(file: string, what: string): Promise<string> {
  const st = await fs.stat(file).catch((e: unknown) => {
    throw new BaleError('E_NOT_FOUND', `${what} ${file}: no such file`, { subject: file, cause: e })
  })
  if (!st.isFile()) throw new BaleError('E_INPUT', `${what} ${file}: not a regular file`, { subject: file })
  return sha256File(file)
}

async function assertDir(dir: string, what: string): Promise<void> {
  const st = await fs.stat(dir).catch((e: unknown) => {
    throw new BaleError('E_NOT_FOUND', `${what} ${dir}: no such directory`, { subject: dir, cause: e })
  })
  if (!st.isDirectory()) throw new BaleError('E_INPUT', `${what} ${dir}: not a directory`, { subject: dir })
}

/** fsync the new files before the rename makes them visible, so a crash never exposes empty ones. */
async function syncFiles(dir: string, names: string[]): Promise<void> {
  for (const n of [...names.map((f) => path.join(dir, f)), dir]) {
    const fh = await fs.open(n, 'r')
    try {
      await fh.sync()
    } finally {
      await fh.close()
    }
  }
}
