import { finished } from 'node:stream/promises'
import type { Readable } from 'node:stream'
import os from 'node:os'
import { reconcile } from '../state/store.js'
import { openAgent } from './channel.js'
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
 * How long an exec waits for a free agent channel (all busy with other execs) and for the
 * guest's hello (a VM still booting under TCG takes seconds).
 */
const CONNECT_MS = 30_000

export async function execInVm(opts: ExecOptions, io: ExecIO, rt: RuntimeEnv = defaultRuntimeEnv()): Promise<ExecResult> {
  const view = await reconcile(rt.store, opts.name, 0)
  requirePhase('exec', opts.name, view.status)
  const chan = await openAgent(view.paths, { timeoutMs: CONNECT_MS })
  const client = chan.client
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
    await chan.close()
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
