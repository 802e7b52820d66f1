import { finished } from 'node:stream/promises'
import type { Readable } from 'node:stream'
import os from 'node:os'
import { AgentClient } from '../agent/client.js'
import { BaleError } from '../../lib/errors.js'
import { reconcile } from '../state/store.js'
import { defaultRuntimeEnv, type RuntimeEnv } from './env.js'
import type { Interrupts } from './interrupts.js'
import { requirePhase } from './phases.js'

export interface ExecOptions {
  readonly name: string
  readonly argv: readonly string[]
  /** `-i`: forward this process's stdin; otherwise the command reads /dev/null. */
  readonly interactive: boolean
  /** `-e KEY=VAL`, over the image's env. */
  readonly env: readonly string[]
  readonly user: string | undefined
  readonly workdir: string | undefined
}

export interface ExecIO {
  readonly stdin: NodeJS.ReadableStream
  readonly stdout: NodeJS.WritableStream
  readonly stderr: NodeJS.WritableStream
  readonly interrupts: Interrupts
}

export interface ExecResult {
  readonly exitCode: number
  /** Set when the command was killed by a signal (exitCode is then 128 + its number). */
  readonly signal: string | null
}

/**
 * The agent channel serves one host connection at a time (QEMU's socket chardev accepts the
 * next client when the current one leaves): an exec waits this long for a busy channel, and
 * for a guest that is still booting.
 */
const CONNECT_MS = 30_000

export async function execInVm(opts: ExecOptions, io: ExecIO, rt: RuntimeEnv = defaultRuntimeEnv()): Promise<ExecResult> {
  const view = await reconcile(rt.store, opts.name, 0)
  requirePhase('exec', opts.name, view.status)
  let client: AgentClient
  try {
    client = await AgentClient.connect(view.paths.agentSocket, { timeoutMs: CONNECT_MS })
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e)
    throw new BaleError('E_VM', `VM ${opts.name}: cannot reach its agent (${why}); another exec may hold the channel`, { subject: opts.name, cause: e })
  }
  try {
    const session = await client.exec({
      argv: [...opts.argv],
      env: opts.env.length > 0 ? [...opts.env] : undefined,
      cwd: opts.workdir,
      user: opts.user,
      stdin: opts.interactive,
    })
    const off = io.interrupts.on((sig, count) => {
      // First: the signal itself, as a terminal would send it. Later ones: SIGKILL, for a
      // command that ignores it.
      void session.signal(count === 1 ? sig : 'SIGKILL').catch(() => undefined)
    })
    const outDone = pump(session.stdout, io.stdout)
    const errDone = pump(session.stderr, io.stderr)
    let stdinDone: (() => void) | undefined
    if (opts.interactive) {
      const src = io.stdin as Readable
      src.pipe(session.stdin)
      stdinDone = () => {
        src.unpipe(session.stdin)
        // A terminal's stdin would keep the process alive after the command ended.
        src.pause()
      }
    }
    try {
      const status = await session.wait()
      await Promise.all([outDone, errDone])
      const sigNum = status.signal === null ? undefined : os.constants.signals[status.signal as NodeJS.Signals]
      return { exitCode: status.exitCode ?? 128 + (sigNum ?? 0), signal: status.signal }
    } finally {
      off()
      stdinDone?.()
    }
  } finally {
    client.close()
  }
}

/** Copy a session stream to ours without ending ours (it is this process's stdout). */
async function pump(from: Readable, to: NodeJS.WritableStream): Promise<void> {
  from.on('data', (b: Buffer) => {
    if (!to.write(b)) {
      from.pause()
      to.once('drain', () => from.resume())
    }
  })
  await finished(from).catch(() => undefined)
}
