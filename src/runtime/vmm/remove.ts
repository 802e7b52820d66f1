import { promises as fs } from 'node:fs'
import { BaleError } from '../../lib/errors.js'
import { lockVm, reconcileLocked, vmPaths } from '../state/store.js'
import { defaultRuntimeEnv, type RuntimeEnv } from './env.js'
import { requirePhase } from './phases.js'
import { killRecorded } from './qemu.js'

export interface RemoveOptions {
  readonly name: string
  /** `--force`: a running VM is killed first (SIGKILL, as `docker rm -f`). */
  readonly force: boolean
}

export interface RemoveResult {
  readonly name: string
  /** True when a running VM had to be killed. */
  readonly killed: boolean
}

/** How long the kernel may take to tear down a killed QEMU. */
const KILL_MS = 5_000

/** Remove a VM's state directory: record, overlay, logs, sockets. The base image stays (shared). */
export async function removeVm(opts: RemoveOptions, rt: RuntimeEnv = defaultRuntimeEnv()): Promise<RemoveResult> {
  const paths = vmPaths(rt.store, opts.name)
  // A `stop` of this VM may hold the lock for its whole run: with the default 10 s grace at most
  // 10 + 10 (guest teardown) + 5 (QMP quit) + 5 (SIGKILL) s.
  const lock = await lockVm(paths, 30_000)
  try {
    const view = await reconcileLocked(rt.store, paths, true)
    requirePhase(opts.force ? 'force-remove' : 'remove', opts.name, view.status)
    let killed = false
    if (view.alive) {
      if (!(await killRecorded(view.record, KILL_MS, rt.store.procfs))) {
        throw new BaleError('E_VM', `VM ${opts.name}: QEMU pid ${view.record.pid} survived SIGKILL; not removed`, { subject: opts.name })
      }
      killed = true
    }
    await fs.rm(paths.dir, { recursive: true, force: true })
    return { name: opts.name, killed }
  } finally {
    await lock.release()
  }
}
