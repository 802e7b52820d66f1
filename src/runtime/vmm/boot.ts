import { setTimeout as sleep } from 'node:timers/promises'
import { AgentClient } from '../agent/client.js'
import { registerCleanup } from '../../lib/cleanup.js'
import { BaleError } from '../../lib/errors.js'
import { readBundleManifest } from '../../pipeline/bundle/reader.js'
import { resolveKernel } from '../kernel/index.js'
import { formatMapping, type PortMapping } from '../net/publish.js'
import { writeRecord, RECORD_SCHEMA_VERSION, type VmRecord } from '../state/record.js'
import { exitCodeFromConsole, lockVm, newVmId, reconcile, reconcileAll, reconcileLocked, reserveName, type VmPaths } from '../state/store.js'
import { chooseAccel, hostTscKhz, type Accel, type AccelRequest } from './accel.js'
import { buildQemuArgv, kernelCmdline, type RunOverlay } from './argv.js'
import { ConsoleFilter, exitCodeOfGuestLine, tailFile } from './console.js'
import { defaultRuntimeEnv, type RuntimeEnv } from './env.js'
import { createOverlay, ensureBaseImage } from './image.js'
import type { Interrupts } from './interrupts.js'
import { killAndReap, lastQemuMessage, spawnQemu, type SpawnedQemu } from './qemu.js'
import { stopVm } from './stop.js'
import { openAgent, tryChannel } from './channel.js'
import { removeQuietly } from '../../lib/atomic.js'

/** `bale runtime boot`, resolved once by the command (STYLE.md item 1). */
export interface BootOptions {
  readonly bundle: string
  readonly name: string | undefined
  readonly cpus: number
  readonly memoryMiB: number
  readonly ports: readonly PortMapping[]
  readonly detach: boolean
  readonly accel: AccelRequest
  /** `--kernel`; undefined: the bundle's kernel_ref. */
  readonly kernel: string | undefined
  /** `-e KEY=VAL`, merged over the image's env by stage 2. */
  readonly env: readonly string[]
  /** `--entrypoint`: replaces the image's entrypoint (and, as in Docker, its cmd). */
  readonly entrypoint: readonly string[] | undefined
  /** `-- CMD…`: replaces the image's cmd. */
  readonly cmd: readonly string[] | undefined
  /** How long to wait for the agent's hello; undefined: by accelerator (BOOT_TIMEOUT_MS). */
  readonly bootTimeoutMs: number | undefined
}

export interface BootIO {
  /** One-line notices for the user (the TCG fallback). */
  readonly warn: (message: string) => void
  /** Foreground: where the entrypoint's console output goes. */
  readonly stdout: NodeJS.WritableStream
  /** Foreground: guest init messages and bale's own notices. */
  readonly stderr: NodeJS.WritableStream
  readonly interrupts: Interrupts
}

export interface BootResult {
  readonly name: string
  readonly id: string
  readonly accel: Accel
  readonly ports: readonly string[]
  readonly detached: boolean
  /** Milliseconds from QEMU's spawn to the agent's hello; null when the guest ended before answering. */
  readonly helloMs: number | null
  /** Foreground: the entrypoint's exit code (128+N for signal N). Detached: null. */
  readonly exitCode: number | null
}

/**
 * How long a boot may take before it is declared failed. A TCG boot of the Debian cloud kernel
 * takes ~2.5 s on an idle machine and up to 4x that on a loaded 2-core CI machine running other
 * emulated VMs; 60 s leaves room for that without hanging forever on a guest that never comes
 * up. KVM boots in well under a second; 20 s only guards against a stuck host.
 */
export const BOOT_TIMEOUT_MS: Readonly<Record<Accel, number>> = { tcg: 60_000, kvm: 20_000 }

/** A forwarded signal must not hang the terminal: the agent answers in ms when it can. */
const SIGNAL_CONNECT_MS = 3_000
/** Second Ctrl-C: the entrypoint gets this long after TERM before it is killed. */
const INTERRUPT_GRACE_MS = 3_000

export async function bootVm(opts: BootOptions, io: BootIO, rt: RuntimeEnv = defaultRuntimeEnv()): Promise<BootResult> {
  await reconcileAll(rt.store)
  const choice = await chooseAccel(opts.accel, rt.probe)
  if (choice.warning !== undefined) io.warn(choice.warning)
  const accel = choice.accel

  // Everything that can refuse the bundle does so before QEMU exists: manifest schema, kernel,
  // and the bundle's bytes (hashed every boot; read through and verified unless these exact
  // bytes were verified before, see image.ts).
  const manifest = await readBundleManifest(opts.bundle)
  const kernel = await resolveKernel(opts.kernel ?? manifest.kernel_ref, rt.kernels)
  const base = await ensureBaseImage(rt.imagesRoot, opts.bundle, manifest)
  const run = runOverlay(opts)
  const tscKhz = accel === 'tcg' ? await hostTscKhz(rt.probe) : undefined

  const paths = await reserveName(rt.store, opts.name, manifest.name)
  // Until QEMU exists, a signal's default handling (remove registered paths, exit) is right.
  const unregister = registerCleanup(paths.dir)
  const lock = await lockVm(paths, 0)
  let qemu: SpawnedQemu | undefined
  let fg: ForegroundTail | undefined
  let helloMs: number | null = null
  let vmId = ''
  let offInterrupt: (() => void) | undefined
  let interrupted: NodeJS.Signals | undefined
  try {
    await createOverlay(base.path, paths.overlay)
    const id = newVmId()
    const cmdline = kernelCmdline({ accel, hostname: paths.name, tscKhz, run })
    const argv = buildQemuArgv({
      id,
      accel,
      cpus: opts.cpus,
      memoryMiB: opts.memoryMiB,
      vmlinux: kernel.vmlinux,
      initramfs: kernel.initramfs,
      overlay: paths.overlay,
      agentSockets: paths.agentSockets,
      qmpSocket: paths.qmpSocket,
      consoleLog: paths.consoleLog,
      ports: opts.ports,
      cmdline,
    })
    let rec: VmRecord = {
      schema_version: RECORD_SCHEMA_VERSION,
      name: paths.name,
      id,
      created: new Date().toISOString(),
      status: 'starting',
      bundle: { path: opts.bundle, sha256: base.bundleSha256, name: manifest.name, version: manifest.version, rootfs_sha256: manifest.rootfs.sha256 },
      kernel: { ref: kernel.ref, vmlinux: kernel.vmlinux, initramfs: kernel.initramfs },
      accel,
      cpus: opts.cpus,
      memory_mib: opts.memoryMiB,
      ports: opts.ports.map((p) => ({ host_ip: p.hostIp, host_port: p.hostPort, guest_port: p.guestPort, protocol: p.protocol })),
      argv,
      pid: null,
      start_time: null,
      stopped_at: null,
      exit_code: null,
    }
    // The record exists before QEMU does: a bale killed right after the spawn leaves a record
    // whose argv (with the VM id) finds the orphan (state/store.ts observe).
    await writeRecord(paths.record, rec)
    const t0 = Date.now()
    qemu = await spawnQemu(argv, paths.qemuLog)
    rec = { ...rec, pid: qemu.pid, start_time: qemu.startTime }
    await writeRecord(paths.record, rec)
    const spawned = qemu
    offInterrupt = io.interrupts.on((sig) => {
      interrupted = sig
      // Abort the boot: the wait below sees QEMU exit and cleans up.
      void killAndReap(spawned)
    })
    // QEMU exists now: its state must not be removed by the default signal handling.
    unregister()
    await lock.release()

    // Foreground: stream the console from the first byte, so output printed before the
    // agent answers is not lost.
    fg = opts.detach ? undefined : startForegroundTail(paths, io, qemu)
    // Channel 0 is ours until the hello is done; a new VM's channel is free.
    const channel0 = await tryChannel(paths, 0)
    let hello: AgentClient | 'exited'
    try {
      hello = await waitForHello(paths, qemu, opts.bootTimeoutMs ?? BOOT_TIMEOUT_MS[accel], () => interrupted !== undefined)
      helloMs = hello === 'exited' ? null : Date.now() - t0
      if (hello !== 'exited') hello.close()
    } finally {
      await channel0?.release()
    }
    offInterrupt()
    offInterrupt = undefined
    if (interrupted !== undefined) {
      throw new BaleError('E_INTERRUPTED', `boot of VM ${paths.name} interrupted by ${interrupted}; VM removed`, { subject: paths.name })
    }
    if (hello === 'exited') {
      // The guest may have run its entrypoint to the end before we got through (a command that
      // exits at once): that is a boot, not a failure, if stage 2 reported an exit status.
      await fg?.done
      if ((fg?.exitCode() ?? (await exitCodeFromConsole(paths.consoleLog))) === null) {
        const why = (await lastQemuMessage(paths.qemuLog)) ?? `the guest stopped before its agent answered; see ${paths.consoleLog}`
        throw publishConflict(why, opts.ports) ?? new BaleError('E_VM', `VM ${paths.name}: QEMU exited during boot (${describeExit(await qemu.exited)}): ${why}`, { subject: paths.name })
      }
    } else {
      await markRunning(paths, rt)
    }
    vmId = id
  } catch (e) {
    offInterrupt?.()
    if (qemu !== undefined) await killAndReap(qemu)
    await lock.release()
    await removeQuietly(paths.dir)
    unregister()
    throw e
  }

  const result = { name: paths.name, id: vmId, accel, ports: opts.ports.map(formatMapping), detached: opts.detach, helloMs }
  if (fg === undefined) {
    // Detached: the VM outlives this process.
    qemu.child.unref()
    return { ...result, exitCode: null }
  }
  // From here on the VM has booted: whatever happens, its state stays for `ls`, `logs` and `rm`.
  const exitCode = await runForeground(paths, qemu, fg, io, rt)
  return { ...result, exitCode }
}

function runOverlay(opts: BootOptions): RunOverlay | undefined {
  const o: { entrypoint?: string[]; cmd?: string[]; env?: string[] } = {}
  if (opts.entrypoint !== undefined) o.entrypoint = [...opts.entrypoint]
  if (opts.cmd !== undefined) o.cmd = [...opts.cmd]
  if (opts.env.length > 0) o.env = [...opts.env]
  return Object.keys(o).length === 0 ? undefined : o
}

/**
 * Connect to the agent on channel 0 and complete its hello, retrying while the socket is not
 * there yet or the guest has not opened its port, until the deadline. 'exited' when QEMU ended
 * first (or the boot was interrupted, which kills QEMU).
 */
async function waitForHello(paths: VmPaths, qemu: SpawnedQemu, timeoutMs: number, aborted: () => boolean): Promise<AgentClient | 'exited'> {
  const deadline = Date.now() + timeoutMs
  const socket = paths.agentSockets[0] as string
  let last: unknown
  for (;;) {
    if (qemu.hasExited() || aborted()) return 'exited'
    const left = deadline - Date.now()
    if (left <= 0) break
    try {
      // Each attempt ends when QEMU exits (the socket closes), so this loop notices it at once.
      return await AgentClient.connect(socket, { timeoutMs: left })
    } catch (e) {
      last = e
      if (!(e instanceof BaleError) || !e.temporary) throw e
    }
    // 20 ms between attempts: the socket appears within QEMU's first milliseconds.
    await sleep(20)
  }
  const why = last instanceof Error ? last.message : 'no answer'
  throw new BaleError('E_VM', `VM ${paths.name}: the guest agent did not answer within ${timeoutMs} ms (${why}); console: ${paths.consoleLog}`, {
    subject: paths.name,
  })
}

/**
 * Others hold a VM's lock for milliseconds (reconciliation) or for a whole stop; 5 s covers the
 * former, and a stop of this VM meanwhile makes `running` moot anyway.
 */
const MARK_RUNNING_LOCK_MS = 5_000

async function markRunning(paths: VmPaths, rt: RuntimeEnv): Promise<void> {
  const lock = await lockVm(paths, MARK_RUNNING_LOCK_MS)
  try {
    const view = await reconcileLocked(rt.store, paths, true)
    if (view.alive && view.record.status === 'starting') await writeRecord(paths.record, { ...view.record, status: 'running' })
  } finally {
    await lock.release()
  }
}

interface ForegroundTail {
  readonly done: Promise<unknown>
  exitCode(): number | undefined
}

/** Stream the console to the terminal until QEMU exits: output to stdout, guest init notices to stderr, kernel lines dropped. */
function startForegroundTail(paths: VmPaths, io: BootIO, qemu: SpawnedQemu): ForegroundTail {
  let exitCode: number | undefined
  const filter = new ConsoleFilter({
    output: (t) => io.stdout.write(t),
    guest: (line) => {
      const code = exitCodeOfGuestLine(line)
      // stage 2's exit report is what this command's exit code says; other notices are shown.
      if (code !== undefined) exitCode = code
      else io.stderr.write(`bale-init: ${line}\n`)
    },
  })
  const done = tailFile(paths.consoleLog, (b) => filter.push(b), qemu.exited).then(() => filter.end())
  return { done, exitCode: () => exitCode }
}

/** Foreground after the hello: forward signals, wait for QEMU to end, report the entrypoint's exit code. */
async function runForeground(paths: VmPaths, qemu: SpawnedQemu, fg: ForegroundTail, io: BootIO, rt: RuntimeEnv): Promise<number> {
  const off = io.interrupts.on((sig, count) => {
    if (count === 1) {
      io.stderr.write(`bale: ${sig} sent to the entrypoint of ${paths.name} (again to stop the VM)\n`)
      void signalMain(paths, sig).catch((e: unknown) => io.stderr.write(`bale: ${e instanceof Error ? e.message : String(e)}\n`))
    } else if (count === 2) {
      io.stderr.write(`bale: stopping VM ${paths.name}\n`)
      void stopVm(paths.name, { graceMs: INTERRUPT_GRACE_MS }, rt).catch(() => killAndReap(qemu))
    } else {
      void killAndReap(qemu)
    }
  })
  try {
    await qemu.exited
    await fg.done
  } finally {
    off()
  }
  // Best effort: the exit code is already known from the console in all but odd cases.
  const view = await reconcile(rt.store, paths.name, MARK_RUNNING_LOCK_MS).catch(() => undefined)
  const code = fg.exitCode() ?? view?.record.exit_code ?? undefined
  if (code === undefined || code === null) {
    throw new BaleError('E_VM', `VM ${paths.name} stopped without reporting its entrypoint's exit status (${describeExit(await qemu.exited)}); see bale runtime logs ${paths.name}`, {
      subject: paths.name,
    })
  }
  return code
}

async function signalMain(paths: VmPaths, sig: NodeJS.Signals): Promise<void> {
  const chan = await openAgent(paths, { timeoutMs: SIGNAL_CONNECT_MS, requestTimeoutMs: SIGNAL_CONNECT_MS })
  try {
    await chan.client.signalMain(sig)
  } finally {
    await chan.close()
  }
}

/**
 * QEMU's message for a host port it cannot bind (`Could not set up host forwarding rule
 * 'tcp:127.0.0.1:8080-:80'`), said in terms of the --publish flag that asked for it.
 */
export function publishConflict(qemuMessage: string, ports: readonly PortMapping[]): BaleError | undefined {
  const m = /Could not set up host forwarding rule '(tcp|udp):([^:']*):(\d+)-/.exec(qemuMessage)
  if (!m) return undefined
  const p = ports.find((x) => x.protocol === m[1] && x.hostIp === m[2] && String(x.hostPort) === m[3])
  const spec = p ? `${p.hostIp}:${p.hostPort}:${p.guestPort}/${p.protocol}` : `${m[2]}:${m[3]}`
  return new BaleError('E_STATE', `--publish ${spec}: host port ${m[2]}:${m[3]}/${m[1]} cannot be bound (already in use?)`, { subject: '--publish' })
}

function describeExit(e: { code: number | null; signal: NodeJS.Signals | null }): string {
  return e.signal !== null ? `killed by ${e.signal}` : `exit status ${e.code ?? '?'}`
}
