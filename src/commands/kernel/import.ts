import { Flags } from '@oclif/core'
import path from 'node:path'
import { BaseCommand } from '../../lib/base-command.js'
import { BaleError } from '../../lib/errors.js'
import { defaultInitBinary } from '../../lib/guest.js'
import { importKernel, type ImportEvent, type ImportKernelOptions } from '../../runtime/kernel/index.js'

export interface KernelImportJson {
  ref: string
  release: string
  dir: string
  vmlinux: string
  initramfs: string
  modules: string[]
  unchanged: boolean
  default: boolean
}

export default class KernelImport extends BaseCommand {
  static override summary = 'Import a kernel for the runtime: PVH vmlinux + initramfs with the guest stage 1 and virtio modules.'
  static override description =
    'From a Debian linux-image package (--deb, fetched with `apt-get download`, never installed) or from a bzImage/vmlinux ' +
    'and its lib/modules/<release> directory (--vmlinuz with --modules). Stored as a kernel_ref (default: debian-<release>) ' +
    'that bundles name; re-importing the same inputs does nothing.'
  static override examples = [
    '<%= config.bin %> kernel import --deb linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb --default',
    '<%= config.bin %> kernel import --vmlinuz /boot/vmlinuz-$(uname -r) --modules /lib/modules/$(uname -r) --ref host',
  ]

  static override flags = {
    // Combinations are checked in resolveOptions: oclif's exclusive/dependsOn errors span several lines.
    deb: Flags.string({ summary: 'Debian linux-image-<release> package', helpValue: 'FILE' }),
    vmlinuz: Flags.string({ summary: 'bzImage (or ELF vmlinux) to import; needs --modules', helpValue: 'FILE' }),
    modules: Flags.string({ summary: 'Its lib/modules/<release> directory', helpValue: 'DIR' }),
    ref: Flags.string({ summary: 'kernel_ref to store it under (default: debian-<release>)' }),
    init: Flags.string({ summary: 'Stage-1 program for /init (default: guest/out/bale-init)', helpValue: 'FILE' }),
    default: Flags.boolean({ summary: 'Make it the kernel that kernel_ref "default" names' }),
    force: Flags.boolean({ summary: 'Rebuild even if the same inputs were imported already' }),
    quiet: Flags.boolean({ char: 'q', summary: 'No progress on stderr' }),
  }

  public async run(): Promise<KernelImportJson> {
    const { flags } = await this.parse(KernelImport)
    const opts = resolveOptions(flags, process.env)
    const quiet = flags.quiet || this.jsonEnabled()
    const res = await importKernel({ ...opts, onProgress: quiet ? undefined : (e) => process.stderr.write(`${describe(e)}\n`) })
    this.log(`${res.unchanged ? 'unchanged' : 'imported'} ${res.ref}${res.default ? ' (default)' : ''}: ${res.info.release}, ${res.info.modules.length} modules`)
    return {
      ref: res.ref,
      release: res.info.release,
      dir: res.dir,
      vmlinux: res.vmlinux,
      initramfs: res.initramfs,
      modules: res.info.modules.map((m) => m.name),
      unchanged: res.unchanged,
      default: res.default,
    }
  }
}

type ParsedFlags = Awaited<ReturnType<KernelImport['parse']>>['flags'] & { deb?: string; vmlinuz?: string; modules?: string }

function resolveOptions(flags: ParsedFlags, env: NodeJS.ProcessEnv): ImportKernelOptions {
  let source: ImportKernelOptions['source']
  if (flags.deb !== undefined && (flags.vmlinuz !== undefined || flags.modules !== undefined)) {
    throw new BaleError('E_USAGE', '--deb cannot be combined with --vmlinuz/--modules: give one kernel', { subject: '--deb' })
  } else if (flags.deb !== undefined) {
    source = { kind: 'deb', deb: path.resolve(flags.deb) }
  } else if (flags.vmlinuz !== undefined && flags.modules !== undefined) {
    source = { kind: 'vmlinuz', vmlinuz: path.resolve(flags.vmlinuz), modulesDir: path.resolve(flags.modules) }
  } else if (flags.vmlinuz !== undefined || flags.modules !== undefined) {
    const missing = flags.vmlinuz === undefined ? '--vmlinuz' : '--modules'
    throw new BaleError('E_USAGE', `${missing} is missing: --vmlinuz FILE and --modules DIR go together`, { subject: missing })
  } else {
    throw new BaleError('E_USAGE', 'no kernel: give --deb FILE, or --vmlinuz FILE with --modules DIR', { subject: '--deb' })
  }
  return Object.freeze({
    source,
    init: flags.init ? path.resolve(flags.init) : defaultInitBinary(env),
    ref: flags.ref,
    makeDefault: flags.default,
    force: flags.force,
  })
}

function describe(e: ImportEvent): string {
  switch (e.stage) {
    case 'unpack':
      return `unpacking ${path.basename(e.file)}`
    case 'modules':
      return `modules (load order): ${e.names.join(' ')}`
    case 'vmlinux':
      return `vmlinux: ${e.size} bytes (payload ${e.compression})`
    case 'initramfs':
      return `initramfs: ${e.size} bytes`
    case 'unchanged':
      return `${e.ref}: already imported from the same inputs`
  }
}
