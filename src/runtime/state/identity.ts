import { sameArgv, type ProcInfo } from './proc.js'

/**
 * Is the process a record points at still that VM's QEMU? Only if pid, start time AND argv all
 * match: a pid is reused after the process dies, a start time alone can collide across reboots
 * of the host (it counts from boot), and the argv carries the VM id. A zombie has exited: it is
 * not running, whoever has yet to reap it.
 */
export type IdentityVerdict =
  | { readonly alive: true }
  | { readonly alive: false; readonly why: 'no-pid' | 'gone' | 'zombie' | 'pid-reused' | 'argv-differs' }

export interface RecordIdentity {
  readonly pid: number | null
  readonly start_time: string | null
  readonly argv: readonly string[]
}

export function matchIdentity(rec: RecordIdentity, proc: ProcInfo | undefined): IdentityVerdict {
  if (rec.pid === null || rec.start_time === null) return { alive: false, why: 'no-pid' }
  if (proc === undefined || proc.pid !== rec.pid) return { alive: false, why: 'gone' }
  if (proc.state === 'Z' || proc.state === 'X') return { alive: false, why: 'zombie' }
  if (proc.startTime !== rec.start_time) return { alive: false, why: 'pid-reused' }
  if (!sameArgv(proc.argv, rec.argv)) return { alive: false, why: 'argv-differs' }
  return { alive: true }
}
