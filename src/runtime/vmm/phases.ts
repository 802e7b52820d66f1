import { BaleError } from '../../lib/errors.js'
import type { VmStatus } from '../state/record.js'

/**
 * What may be done to a VM in which phase, as one closed table (after Firecracker's
 * rpc_interface.rs, where each action names the phases that accept it and the others refuse it
 * by name). A VM is `starting` from spawn until the agent's hello, `running` after it, and
 * `stopped` once its QEMU is gone.
 */
export type VmAction = 'exec' | 'signal-main' | 'stop' | 'remove' | 'force-remove' | 'logs'

const ACCEPTS: Readonly<Record<VmAction, readonly VmStatus[]>> = {
  // The agent may already answer while the record still says starting (the booting bale was
  // killed before it wrote `running`); the connection's hello decides.
  exec: ['starting', 'running'],
  'signal-main': ['running'],
  // Stopping a stopped VM is a no-op, as `docker stop` is.
  stop: ['starting', 'running', 'stopped'],
  remove: ['stopped'],
  'force-remove': ['starting', 'running', 'stopped'],
  logs: ['starting', 'running', 'stopped'],
}

const HINT: Partial<Record<VmAction, string>> = {
  exec: 'boot it again with bale runtime boot',
  remove: 'stop it first, or use --force',
}

export function accepts(action: VmAction, status: VmStatus): boolean {
  return ACCEPTS[action].includes(status)
}

export function requirePhase(action: VmAction, name: string, status: VmStatus): void {
  if (accepts(action, status)) return
  const hint = HINT[action]
  throw new BaleError('E_STATE', `VM ${name} is ${status}: ${action} needs it ${ACCEPTS[action].join(' or ')}${hint ? ` (${hint})` : ''}`, { subject: name })
}
