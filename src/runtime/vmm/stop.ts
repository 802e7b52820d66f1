import { BaleError } from '../../lib/errors.js'
import type { VmRecord } from '../state/record.js'
import { lockVm, reconcileLocked, vmPaths, type StateStore, type VmPaths } from '../state/store.js'
import { openAgent, type AgentChannel } from './channel.js'
import { defaultRuntimeEnv, type RuntimeEnv } from './env.js'
import { killRecorded, waitGone } from './qemu.js'
import { QmpClient } from './qmp.js'

/**
 * Stopping a VM, gentlest first, each step bounded:
 *   1. agent shutdown: TERM to the entrypoint, KILL after the grace period, then the guest's
 *      own teardown (TERM all, sync, unmount, power off);
 *   2. QMP quit: QEMU exits at once (the guest gets no say, the overlay may miss unsynced writes);
 *   3. SIGKILL of the QEMU process, if it is still the recorded one.
 */
export interface StopOptions {
  /** Grace period for the entrypoint after TERM, ms (`--timeout`, default 10 s like `docker stop`). */
  readonly graceMs: number
}

export type StopStep = 'already-stopped' | 'agent' | 'qmp' | 'kill'

export interface StopResult {
  readonly name: string
  /** Which step ended it. */
  readonly stoppedBy: StopStep
  readonly exitCode: number | null
}

/** Connecting to the agent or QMP: both answer in milliseconds when they can; 3 s covers a loaded TCG host. */
const CONNECT_MS = 3_000
/** The guest's teardown after the entrypoint is gone (TERM all, sync, unmount, power off) plus QEMU's exit. */
const TEARDOWN_MS = 10_000
/** QEMU exiting after QMP quit, or the kernel reaping it after SIGKILL. */
const QUIT_MS = 5_000

export const DEFAULT_GRACE_MS = 10_000

export async function stopVm(name: string, opts: StopOptions, rt: RuntimeEnv = defaultRuntimeEnv()): Promise<StopResult> {
  const paths = vmPaths(rt.store, name)
  // Wait for the lock as long as a stop may take: another `stop` of the same VM is the usual holder.
  const lock = await lockVm(paths, opts.graceMs + TEARDOWN_MS + 2 * QUIT_MS)
  try {
    const view = await reconcileLocked(rt.store, paths, true)
    if (!view.alive) return { name, stoppedBy: 'already-stopped', exitCode: view.record.exit_code }
    const step = await stopRecorded(view.record, paths, opts.graceMs, rt.store)
    const after = await reconcileLocked(rt.store, paths, true)
    return { name, stoppedBy: step, exitCode: after.record.exit_code }
  } finally {
    await lock.release()
  }
}

/** The three steps against a running VM; the caller holds its lock. */
export async function stopRecorded(rec: VmRecord, paths: VmPaths, graceMs: number, store: StateStore): Promise<Exclude<StopStep, 'already-stopped'>> {
  if (await agentShutdown(paths, graceMs)) {
    if (await waitGone(rec, graceMs + TEARDOWN_MS, store.procfs)) return 'agent'
  }
  if (await qmpQuit(paths)) {
    if (await waitGone(rec, QUIT_MS, store.procfs)) return 'qmp'
  }
  if (await killRecorded(rec, QUIT_MS, store.procfs)) return 'kill'
  throw new BaleError('E_VM', `VM ${rec.name}: QEMU pid ${rec.pid} survived SIGKILL for ${QUIT_MS} ms`, { subject: rec.name })
}

async function agentShutdown(paths: VmPaths, graceMs: number): Promise<boolean> {
  let chan: AgentChannel | undefined
  try {
    // Any free channel: execs running on the others do not hold up a clean shutdown. With all
    // of them busy (or a guest that does not answer), QMP quit takes over.
    chan = await openAgent(paths, { timeoutMs: CONNECT_MS, requestTimeoutMs: CONNECT_MS })
    await chan.client.shutdown({ timeoutMs: graceMs })
    return true
  } catch {
    return false
  } finally {
    await chan?.close()
  }
}

async function qmpQuit(paths: VmPaths): Promise<boolean> {
  let qmp: QmpClient | undefined
  try {
    qmp = await QmpClient.connect(paths.qmpSocket, CONNECT_MS)
    await qmp.perform({ kind: 'quit' })
    return true
  } catch {
    return false
  } finally {
    qmp?.close()
  }
}
