import { setTimeout as sleep } from 'node:timers/promises'
import { AgentClient } from '../agent/client.js'
import { BaleError } from '../../lib/errors.js'
import { acquireLock, type HeldLock } from '../state/lock.js'
import type { VmPaths } from '../state/store.js'

/**
 * A connection to one of a VM's agent channels (state/store.ts AGENT_CHANNELS), held with that
 * channel's lock so that no other bale process connects to the same socket meanwhile: QEMU would
 * queue the second connection until the first ends. A killed holder's lock is stale at once.
 */
export interface AgentChannel {
  readonly client: AgentClient
  readonly channel: number
  close(): Promise<void>
}

export interface OpenAgentOptions {
  /** How long to wait for a free channel and the guest's hello, in total. */
  readonly timeoutMs: number
  readonly requestTimeoutMs?: number
}

/** Poll interval while every channel is in use. */
const BUSY_POLL_MS = 50

export async function openAgent(paths: VmPaths, opts: OpenAgentOptions): Promise<AgentChannel> {
  const deadline = Date.now() + opts.timeoutMs
  for (;;) {
    for (let i = 0; i < paths.agentSockets.length; i++) {
      const lock = await tryChannel(paths, i)
      if (lock === undefined) continue
      try {
        const client = await AgentClient.connect(paths.agentSockets[i] as string, {
          timeoutMs: Math.max(1, deadline - Date.now()),
          requestTimeoutMs: opts.requestTimeoutMs,
        })
        return {
          client,
          channel: i,
          close: async () => {
            client.close()
            await lock.release()
          },
        }
      } catch (e) {
        await lock.release()
        throw e
      }
    }
    if (Date.now() >= deadline) {
      throw new BaleError('E_VM', `VM ${paths.name}: all ${paths.agentSockets.length} agent channels stayed in use for ${opts.timeoutMs} ms`, { subject: paths.name })
    }
    await sleep(BUSY_POLL_MS)
  }
}

/** The channel's lock, or undefined when another live process holds it. */
export async function tryChannel(paths: VmPaths, i: number): Promise<HeldLock | undefined> {
  try {
    return await acquireLock(paths.agentLocks[i] as string, { waitMs: 0, what: `agent channel ${i} of VM ${paths.name}` })
  } catch (e) {
    if (e instanceof BaleError && e.code === 'E_STATE') return undefined
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new BaleError('E_NOT_FOUND', `no VM named ${paths.name} (it was removed)`, { subject: paths.name })
    }
    throw e
  }
}
