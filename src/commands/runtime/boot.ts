import { promises as fs } from 'node:fs'
import { Args, Flags } from '@oclif/core'
import path from 'node:path'
import { BaseCommand } from '../../lib/base-command.js'
import { BaleError } from '../../lib/errors.js'
import { parseSize } from '../../lib/size.js'
import { bootVm, Interrupts, parsePublishes, resolveEnv, validateName, type BootOptions, type BootResult } from '../../runtime/index.js'
import { resolveInstalled } from '../../catalog/store.js'

export type RuntimeBootJson = BootResult

/** The Debian cloud kernel with the guest's initramfs needs ~100 MiB to reach stage 2; below 128 MiB boots fail oddly. */
const MIN_MEMORY_MIB = 128

export default class RuntimeBoot extends BaseCommand {
  static override summary = 'Boot a bundle as a microVM.'
  static override description =
    'Verifies the bundle, boots it with QEMU microvm and waits for the guest agent. In the foreground the entrypoint\'s ' +
    'output is streamed, Ctrl-C is forwarded to it (twice stops the VM), and the exit code is the entrypoint\'s. ' +
    'With --detach the VM name is printed once the agent answers. Arguments after -- replace the image\'s cmd.'
  static override examples = [
    '<%= config.bin %> runtime boot demo.tar.zst --publish 8080:8080 --detach',
    '<%= config.bin %> runtime boot demo.tar.zst -e GREETING=hi --entrypoint /usr/local/bin/hello',
    '<%= config.bin %> runtime boot demo.tar.zst --entrypoint /bin/sh -- -c "exit 3"',
  ]

  static override args = {
    bundle: Args.string({ description: 'bundle.tar.zst to boot, or NAME[@VERSION] of an installed bundle (bale install/fetch)', required: true }),
  }

  static override flags = {
    name: Flags.string({ summary: 'VM name (default: <bundle name>-<4 hex>)' }),
    cpus: Flags.integer({ summary: 'Virtual CPUs', default: 1, min: 1 }),
    memory: Flags.string({ summary: 'Guest memory, e.g. 512M, 2G', default: '512M', helpValue: 'SIZE' }),
    publish: Flags.string({
      char: 'p',
      summary: 'Forward a host port into the guest (host side on 127.0.0.1 unless IP is given)',
      helpValue: '[IP:]HOST:GUEST[/tcp|/udp]',
      multiple: true,
      multipleNonGreedy: true,
      default: [],
    }),
    detach: Flags.boolean({ char: 'd', summary: 'Print the VM name once it has booted and return' }),
    accel: Flags.string({ summary: 'Accelerator: kvm when usable under auto, else TCG emulation', options: ['auto', 'kvm', 'tcg'], default: 'auto' }),
    kernel: Flags.string({ summary: "Kernel to boot (see `bale kernel ls`; default: the bundle's kernel_ref)", helpValue: 'REF' }),
    env: Flags.string({
      char: 'e',
      summary: "Set an environment variable over the image's (KEY alone takes this shell's value)",
      helpValue: 'KEY=VAL',
      multiple: true,
      multipleNonGreedy: true,
      default: [],
    }),
    entrypoint: Flags.string({ summary: "Replace the image's entrypoint (and its cmd); '' clears it", helpValue: 'PROGRAM' }),
    'boot-timeout': Flags.integer({ summary: 'Seconds to wait for the guest agent (default: 60 under TCG, 20 under KVM)', min: 1 }),
  }

  private readonly interrupts = new Interrupts()

  public async run(): Promise<RuntimeBootJson> {
    // Arguments after `--` are the guest's, taken verbatim (oclif would reorder repeated tokens),
    // and before parse(), which replaces this.argv.
    const dd = this.argv.indexOf('--')
    const cmd = dd < 0 ? undefined : this.argv.slice(dd + 1)
    const { args, flags } = await this.parse(RuntimeBoot, dd < 0 ? this.argv : this.argv.slice(0, dd))
    const opts = resolveOptions(await bundleFile(args.bundle), flags, cmd, process.env)
    const json = this.jsonEnabled()
    const res = await bootVm(opts, {
      warn: (m) => process.stderr.write(`bale: warning: ${m}\n`),
      // With --json, stdout carries only the result.
      stdout: json ? process.stderr : process.stdout,
      stderr: process.stderr,
      interrupts: this.interrupts,
    })
    if (res.detached) this.log(res.name)
    if (res.exitCode !== null) process.exitCode = res.exitCode
    return res
  }

  protected override onSignal(sig: NodeJS.Signals): void {
    if (!this.interrupts.deliver(sig)) return super.onSignal(sig)
    // The base command listens once; the next Ctrl-C must reach the runtime too.
    process.once(sig, () => this.onSignal(sig))
  }
}

/**
 * A file that exists is booted as given; anything else is the NAME[@VERSION] of an installed
 * bundle (what `bale install --from` and `bale fetch` put in the local store).
 */
async function bundleFile(arg: string): Promise<string> {
  const isFile = await fs.stat(arg).then(
    (s) => s.isFile(),
    () => false,
  )
  if (isFile || arg.includes('/') || arg.endsWith('.tar.zst')) return arg
  return resolveInstalled(arg)
}

interface BootFlags {
  name?: string
  cpus: number
  memory: string
  publish: string[]
  detach: boolean
  accel: string
  kernel?: string
  env: string[]
  entrypoint?: string
  'boot-timeout'?: number
}

/** Flags → one validated, immutable options object, before any work starts. */
export function resolveOptions(bundle: string, flags: BootFlags, cmd: string[] | undefined, env: NodeJS.ProcessEnv): BootOptions {
  const memoryMiB = Math.floor(parseSize(flags.memory, '--memory') / (1024 * 1024))
  if (memoryMiB < MIN_MEMORY_MIB) {
    throw new BaleError('E_USAGE', `--memory ${flags.memory}: at least ${MIN_MEMORY_MIB}M is needed to boot`, { subject: '--memory' })
  }
  const accel = flags.accel
  if (accel !== 'auto' && accel !== 'kvm' && accel !== 'tcg') throw new BaleError('E_USAGE', `--accel ${accel}: expected auto, kvm or tcg`, { subject: '--accel' })
  return Object.freeze({
    bundle: path.resolve(bundle),
    name: flags.name === undefined ? undefined : validateName(flags.name),
    cpus: flags.cpus,
    memoryMiB,
    ports: parsePublishes(flags.publish),
    detach: flags.detach,
    accel,
    kernel: flags.kernel,
    env: Object.freeze(resolveEnv(flags.env, env)),
    entrypoint: flags.entrypoint === undefined ? undefined : Object.freeze(flags.entrypoint === '' ? [] : [flags.entrypoint]),
    cmd: cmd === undefined ? undefined : Object.freeze([...cmd]),
    bootTimeoutMs: flags['boot-timeout'] === undefined ? undefined : flags['boot-timeout'] * 1000,
  })
}
