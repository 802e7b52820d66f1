import { reconcileAll } from '../state/store.js'
import type { VmStatus } from '../state/record.js'
import { defaultRuntimeEnv, type RuntimeEnv } from './env.js'

/** One row of `bale runtime ls`; also its `--json` shape. */
export interface VmSummary {
  readonly name: string
  readonly id: string
  readonly status: VmStatus
  readonly bundle: string
  readonly pid: number | null
  readonly accel: 'kvm' | 'tcg'
  readonly cpus: number
  readonly memoryMiB: number
  /** `127.0.0.1:8080->80/tcp` */
  readonly ports: readonly string[]
  readonly created: string
  readonly stoppedAt: string | null
  /** The entrypoint's exit code, once stopped and if the guest reported one. */
  readonly exitCode: number | null
}

/** Every VM, after reconciling each with /proc (dead ones are marked stopped on the way). */
export async function listVms(rt: RuntimeEnv = defaultRuntimeEnv(), onProblem?: (message: string) => void): Promise<VmSummary[]> {
  const views = await reconcileAll(rt.store, onProblem)
  return views.map(({ record: r, status, alive }) => ({
    name: r.name,
    id: r.id,
    status,
    bundle: `${r.bundle.name}:${r.bundle.version}`,
    pid: alive ? r.pid : null,
    accel: r.accel,
    cpus: r.cpus,
    memoryMiB: r.memory_mib,
    ports: r.ports.map((p) => `${p.host_ip}:${p.host_port}->${p.guest_port}/${p.protocol}`),
    created: r.created,
    stoppedAt: r.stopped_at,
    exitCode: r.exit_code,
  }))
}
