import { BaleError } from '../../lib/errors.js'
import { hostfwd, type PortMapping } from '../net/publish.js'
import type { Accel } from './accel.js'

/**
 * The QEMU command line of one VM, built from a fully resolved spec by a pure function so that
 * it can be tested without QEMU and recorded verbatim: the exact argv is part of the VM's
 * identity (state/identity.ts), so it must not depend on anything but the spec.
 */
export const QEMU_BINARY = 'qemu-system-x86_64'

/** The virtio-serial port name stage 2 looks for in /sys/class/virtio-ports/*\/name. */
export const AGENT_PORT_NAME = 'org.bale.agent'

/**
 * x86 Linux keeps at most COMMAND_LINE_SIZE = 2048 bytes of command line, NUL included, and
 * silently truncates the rest: a cut `bale.run=` would reach stage 2 as broken base64.
 */
export const KERNEL_CMDLINE_MAX = 2047

export interface QemuSpec {
  /** The VM id (random hex): its own argv element, `bale-<id>`, so `pgrep -f <id>` finds exactly this VM. */
  readonly id: string
  readonly accel: Accel
  readonly cpus: number
  readonly memoryMiB: number
  readonly vmlinux: string
  readonly initramfs: string
  /** The per-VM qcow2 overlay used as the root disk. */
  readonly overlay: string
  /** Channel 0 is the port named AGENT_PORT_NAME, channel i the port `AGENT_PORT_NAME.i`. */
  readonly agentSockets: readonly string[]
  readonly qmpSocket: string
  readonly consoleLog: string
  readonly ports: readonly PortMapping[]
  /** Kernel command line, already joined (see kernelCmdline). */
  readonly cmdline: string
}

export interface CmdlineSpec {
  readonly accel: Accel
  readonly hostname: string
  /** Host TSC frequency for TCG guests (see accel.ts tscKhzFromCpuinfo). */
  readonly tscKhz?: number
  /** Overrides for stage 2 (`-e`, `--entrypoint`, `-- CMD…`), or undefined for the image's own config. */
  readonly run?: RunOverlay
}

/** The shape of /.bale/config.json that stage 2 overlays from `bale.run=` (guest/src/stage2.c config_overlay). */
export interface RunOverlay {
  readonly entrypoint?: readonly string[]
  readonly cmd?: readonly string[]
  readonly env?: readonly string[]
}

const HOSTNAME_RE = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/

export function kernelCmdline(spec: CmdlineSpec): string {
  const parts = [
    // The microvm's only UART; the console log is where the entrypoint's output and stage 2's
    // `bale-init: exit status N` land.
    'console=ttyS0',
    'root=/dev/vda',
    'rw',
    // Kernel messages below warning level would bury the entrypoint's output in the console log.
    'quiet',
    // A panic ends the VM at once (with -no-reboot QEMU exits) instead of hanging until a timeout.
    'panic=-1',
    // The crypto self-tests run at every boot and were the largest single initcall: ~0.3 s of a
    // 1.5 s kernel start under TCG (initcall_debug), tens of ms on KVM. They check the kernel's own
    // cipher implementations, which do not change between boots of the same kernel; Kata
    // Containers boots its guests with the same switch.
    'cryptomgr.notests',
  ]
  if (spec.accel === 'tcg' && spec.tscKhz !== undefined) parts.push(`tsc_early_khz=${spec.tscKhz}`)
  // The hostname must be one token of the command line and a valid host name; VM names may hold
  // '_' and '.', which are not.
  const host = spec.hostname.replace(/[^A-Za-z0-9-]/g, '-').replace(/^-+|-+$/g, '').slice(0, 63)
  if (HOSTNAME_RE.test(host)) parts.push(`bale.hostname=${host}`)
  if (spec.run !== undefined) {
    // Base64url: the command line is split on spaces and the JSON has them.
    const json = JSON.stringify(spec.run)
    parts.push(`bale.run=${Buffer.from(json, 'utf8').toString('base64url')}`)
  }
  const line = parts.join(' ')
  if (Buffer.byteLength(line) > KERNEL_CMDLINE_MAX) {
    throw new BaleError(
      'E_USAGE',
      `-e/--entrypoint/-- CMD: the kernel command line would be ${Buffer.byteLength(line)} bytes, over the kernel's ${KERNEL_CMDLINE_MAX}; pass less, or run it with \`bale runtime exec\``,
      { subject: 'bale.run' },
    )
  }
  return line
}

export function buildQemuArgv(spec: QemuSpec): string[] {
  const sockets: Array<[string, string]> = [...spec.agentSockets.map((p): [string, string] => ['agent socket', p]), ['QMP socket', spec.qmpSocket]]
  for (const [what, p] of sockets) {
    // sun_path is 108 bytes including the NUL; QEMU refuses longer paths at start-up with a
    // message that does not say which one.
    if (Buffer.byteLength(p) > 107) {
      throw new BaleError('E_STATE', `${what} ${p} is longer than a unix socket path may be (107 bytes); set BALE_DATA_DIR to a shorter directory`, {
        subject: p,
      })
    }
    if (p.includes(',')) throw new BaleError('E_STATE', `${what} ${p}: a ',' cannot be passed to QEMU in a path`, { subject: p })
  }
  for (const p of [spec.vmlinux, spec.initramfs, spec.overlay, spec.consoleLog]) {
    // QEMU option values are comma-separated; ",," escapes a comma. Paths are ours (data dir),
    // so refuse rather than escape: a comma there means a misconfigured data dir.
    if (p.includes(',')) throw new BaleError('E_STATE', `${p}: a ',' in a path cannot be passed to QEMU`, { subject: p })
  }
  const netdev = ['user', 'id=net0', ...spec.ports.map((m) => `hostfwd=${hostfwd(m)}`)].join(',')
  return [
    QEMU_BINARY,
    '-name',
    `bale-${spec.id}`,
    // microvm: no PCI, no firmware. pit/pic off: the guest uses the LAPIC timer and the TSC (a
    // PIT under TCG costs timer interrupts and makes TSC calibration fail on a busy host).
    // rtc on: without it the guest waits ~1 s twice for a CMOS clock that never answers.
    // x-option-roms off: no BIOS option ROM scan. isa-serial: the console.
    '-M',
    'microvm,x-option-roms=off,pit=off,pic=off,rtc=on,isa-serial=on',
    '-accel',
    spec.accel,
    // KVM: the host CPU as is. TCG: every feature QEMU emulates (the Debian kernel needs x86-64-v1 at least).
    '-cpu',
    spec.accel === 'kvm' ? 'host' : 'max',
    '-smp',
    String(spec.cpus),
    '-m',
    `${spec.memoryMiB}M`,
    '-nodefaults',
    '-no-user-config',
    '-nographic',
    // The guest powers off (or resets) when its entrypoint exits; either ends QEMU.
    '-no-reboot',
    '-kernel',
    spec.vmlinux,
    '-initrd',
    spec.initramfs,
    '-append',
    spec.cmdline,
    '-drive',
    `id=root,file=${spec.overlay},format=qcow2,if=none,discard=unmap`,
    '-device',
    'virtio-blk-device,drive=root',
    '-netdev',
    netdev,
    '-device',
    'virtio-net-device,netdev=net0',
    '-device',
    'virtio-rng-device',
    '-device',
    // max_ports: as many as there are agent channels, plus port 0, which QEMU keeps for a
    // console. The default, 31, makes the guest driver set up 64 virtqueues at probe time:
    // virtio_console's probe took 81 ms of the boot under TCG with it, 53 ms without.
    `virtio-serial-device,max_ports=${spec.agentSockets.length + 1}`,
    ...spec.agentSockets.flatMap((sock, i) => [
      '-chardev',
      `socket,id=agent${i},path=${sock},server=on,wait=off`,
      '-device',
      `virtserialport,chardev=agent${i},name=${i === 0 ? AGENT_PORT_NAME : `${AGENT_PORT_NAME}.${i}`}`,
    ]),
    '-chardev',
    `file,id=console,path=${spec.consoleLog}`,
    '-serial',
    'chardev:console',
    '-qmp',
    `unix:${spec.qmpSocket},server=on,wait=off`,
  ]
}
