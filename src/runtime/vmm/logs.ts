import { setTimeout as sleep } from 'node:timers/promises'
import { reconcile } from '../state/store.js'
import { ConsoleFilter, tailFile } from './console.js'
import { defaultRuntimeEnv, type RuntimeEnv } from './env.js'
import type { Interrupts } from './interrupts.js'
import { waitGone } from './qemu.js'

export interface LogsOptions {
  readonly name: string
  /** `-f`: keep printing until the VM stops or the user interrupts. */
  readonly follow: boolean
  /** `--all`: kernel messages too (hidden by default: they are not the entrypoint's output). */
  readonly all: boolean
}

export interface LogsIO {
  readonly stdout: NodeJS.WritableStream
  readonly interrupts: Interrupts
}

/** How often a followed VM is checked for having stopped. */
const ALIVE_POLL_MS = 250

/**
 * The VM's console log: the entrypoint's output and the guest init's `bale-init:` lines
 * (including the final `exit status N`), kernel lines only with `all`.
 */
export async function vmLogs(opts: LogsOptions, io: LogsIO, rt: RuntimeEnv = defaultRuntimeEnv()): Promise<void> {
  const view = await reconcile(rt.store, opts.name, 0)
  const filter = new ConsoleFilter({
    output: (t) => io.stdout.write(t),
    guest: (line) => io.stdout.write(`bale-init: ${line}\n`),
    kernel: opts.all ? (line) => io.stdout.write(`${line}\n`) : undefined,
  })
  let stop: Promise<unknown> | undefined
  let off: (() => void) | undefined
  let ended = false
  if (opts.follow && view.alive) {
    stop = new Promise<void>((resolve) => {
      off = io.interrupts.on(() => {
        ended = true
        resolve()
      })
      void (async () => {
        // Poll in slices so that an interrupt also ends this loop promptly.
        while (!ended && !(await waitGone(view.record, ALIVE_POLL_MS, rt.store.procfs))) await sleep(0)
        resolve()
      })()
    })
  }
  try {
    await tailFile(view.paths.consoleLog, (b) => filter.push(b), stop)
    filter.end()
  } finally {
    ended = true
    off?.()
  }
}
