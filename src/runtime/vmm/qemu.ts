import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync, promises as fs } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { BaleError } from '../../lib/errors.js'
import { matchIdentity, type RecordIdentity } from '../state/identity.js'
import { HOST_PROC, readProc, readStartTimeSync, type ProcFs } from '../state/proc.js'

/**
 * A QEMU started by this process. It runs in its own session (setsid via `detached`), so the
 * terminal's Ctrl-C reaches bale only (which forwards it to the guest), and a bale killed with
 * SIGKILL leaves the VM running where `ls` and `stop` find it through its record.
 */
export interface SpawnedQemu {
  readonly child: ChildProcess
  readonly pid: number
  readonly startTime: string
  /** Resolves when the process has exited and been reaped, with its exit status or signal. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /** True once `exited` has resolved. */
  hasExited(): boolean
}

export async function spawnQemu(argv: readonly string[], stderrLog: string): Promise<SpawnedQemu> {
  const [cmd, ...args] = argv
  if (cmd === undefined) throw new BaleError('E_STATE', 'empty QEMU argv')
  // QEMU's own stdout/stderr (start-up errors) go to a file: after a detached boot nobody
  // reads a pipe, and a full pipe would block QEMU.
  const fd = openSync(stderrLog, 'w', 0o644)
  let child: ChildProcess
  try {
    child = spawn(cmd, args, { detached: true, stdio: ['ignore', fd, fd] })
  } finally {
    closeSync(fd)
  }
  let done = false
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      done = true
      resolve({ code, signal })
    })
  })
  const pid = child.pid
  if (pid === undefined) {
    const err = await new Promise<NodeJS.ErrnoException>((resolve) => child.once('error', resolve))
    if (err.code === 'ENOENT') throw new BaleError('E_TOOL', `${cmd}: not found on PATH (run the README's set-up command)`, { subject: cmd })
    throw new BaleError('E_TOOL', `${cmd}: ${err.message}`, { subject: cmd, cause: err })
  }
  child.on('error', () => undefined)
  // Read at once: the process exists (our unreaped child at worst), and fork sets the start
  // time, which exec does not change.
  const startTime = readStartTimeSync(pid)
  if (startTime === undefined) {
    child.kill('SIGKILL')
    await exited
    throw new BaleError('E_VM', `QEMU (pid ${pid}) vanished right after it was started; see its log ${stderrLog}`, { subject: stderrLog })
  }
  return { child, pid, startTime, exited, hasExited: () => done }
}

/** Kill our own QEMU child and wait until it is reaped. */
export async function killAndReap(q: SpawnedQemu): Promise<void> {
  if (q.hasExited()) return
  try {
    process.kill(q.pid, 'SIGKILL')
  } catch {
    // ESRCH: already gone; `exited` resolves once libuv reaps it.
  }
  await q.exited
}

/** Poll interval while waiting for a VM's QEMU to go away. */
const GONE_POLL_MS = 25

/**
 * Wait until the process a record names is no longer that VM (exited, zombie or gone), at
 * most `timeoutMs`. True when it is gone.
 */
export async function waitGone(id: RecordIdentity, timeoutMs: number, procfs: ProcFs = HOST_PROC): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (id.pid === null || !matchIdentity(id, await readProc(id.pid, procfs)).alive) return true
    if (Date.now() >= deadline) return false
    await sleep(GONE_POLL_MS)
  }
}

/** SIGKILL the VM's QEMU if it is still that VM (never a reused pid), then wait for it to go. */
export async function killRecorded(id: RecordIdentity, timeoutMs: number, procfs: ProcFs = HOST_PROC): Promise<boolean> {
  if (id.pid === null) return true
  if (!matchIdentity(id, await readProc(id.pid, procfs)).alive) return true
  try {
    process.kill(id.pid, 'SIGKILL')
  } catch {
    // ESRCH: it went away between the check and the kill.
  }
  return waitGone(id, timeoutMs, procfs)
}

/** The last non-empty line of QEMU's own log: what a start-up failure says. */
export async function lastQemuMessage(file: string): Promise<string | undefined> {
  const text = await fs.readFile(file, 'utf8').catch(() => '')
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '')
  return lines[lines.length - 1]
}
