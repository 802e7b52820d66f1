import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { BaleError } from '../../lib/errors.js'
import { vmsDir } from '../../lib/paths.js'
import { matchIdentity, type IdentityVerdict } from './identity.js'
import { acquireLock, type HeldLock } from './lock.js'
import { findByArgv, HOST_PROC, readProc, type ProcFs } from './proc.js'
import { readRecord, writeRecord, type VmRecord, type VmStatus } from './record.js'

/**
 * The VM state directory (docs/runtime-state.md): `<vmsDir>/<name>/` holds everything of one VM.
 * A name is taken by creating its directory (mkdir is atomic), so two boots can never share one.
 */
export interface VmPaths {
  readonly name: string
  readonly dir: string
  readonly record: string
  readonly lock: string
  /** One socket per agent channel (AGENT_CHANNELS), channel 0 first. */
  readonly agentSockets: readonly string[]
  /** Who uses each channel: an O_EXCL lock per channel, like the VM's. */
  readonly agentLocks: readonly string[]
  readonly qmpSocket: string
  readonly consoleLog: string
  /** QEMU's own stderr (start-up errors such as a host port already in use). */
  readonly qemuLog: string
  readonly overlay: string
}

export interface StateStore {
  readonly root: string
  readonly procfs: ProcFs
}

export function defaultStateStore(env: NodeJS.ProcessEnv = process.env): StateStore {
  return { root: vmsDir(env), procfs: HOST_PROC }
}

/**
 * Agent channels per VM: virtio-serial ports `org.bale.agent`, `org.bale.agent.1`, … each on its
 * own socket. QEMU's socket chardev serves one host connection at a time, so one channel would
 * make a second `exec` wait for the first, and a `stop` during an exec fall back to QMP quit.
 * 4: concurrent execs into one VM are few, and each open channel takes one of the guest agent's 8
 * connection slots (guest/src/agent.c MAX_CONNS).
 */
export const AGENT_CHANNELS = 4

const channels = Array.from({ length: AGENT_CHANNELS }, (_, i) => i)

export function vmPaths(store: StateStore, name: string): VmPaths {
  const dir = path.join(store.root, name)
  return {
    name,
    dir,
    record: path.join(dir, 'vm.json'),
    lock: path.join(dir, 'lock'),
    agentSockets: channels.map((i) => path.join(dir, i === 0 ? 'agent.sock' : `agent.${i}.sock`)),
    agentLocks: channels.map((i) => path.join(dir, `agent.${i}.lock`)),
    qmpSocket: path.join(dir, 'qmp.sock'),
    consoleLog: path.join(dir, 'console.log'),
    qemuLog: path.join(dir, 'qemu.log'),
    overlay: path.join(dir, 'overlay.qcow2'),
  }
}

/** 63: a DNS label, so a name can double as the guest's host name; it also keeps socket paths short. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/

export function validateName(name: string): string {
  if (!NAME_RE.test(name)) {
    throw new BaleError('E_USAGE', `--name ${JSON.stringify(name)}: use letters, digits, '_', '.', '-' (at most 63, starting with a letter or digit)`, {
      subject: name,
    })
  }
  return name
}

/** `<bundle name>-<4 hex>`: says what runs in it, unique enough to rarely need a retry. */
export function generateName(base: string): string {
  const stem = base.toLowerCase().replace(/[^a-z0-9_.-]+/g, '-').replace(/^[^a-z0-9]+/, '').slice(0, 50) || 'vm'
  return `${stem}-${randomBytes(2).toString('hex')}`
}

export function newVmId(): string {
  // 12 hex digits (48 bits): unique among a host's VMs, short enough to read in `ps`.
  return randomBytes(6).toString('hex')
}

/**
 * Take a name by creating its directory. A given name that exists is an error; a generated one
 * is retried with another suffix.
 */
export async function reserveName(store: StateStore, given: string | undefined, base: string): Promise<VmPaths> {
  await fs.mkdir(store.root, { recursive: true, mode: 0o700 })
  // 20 tries of 65536 suffixes: only a store with tens of thousands of VMs of one bundle fails.
  for (let attempt = 0; attempt < 20; attempt++) {
    const name = given ?? generateName(base)
    const paths = vmPaths(store, name)
    try {
      await fs.mkdir(paths.dir, { mode: 0o700 })
      return paths
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
      if (given !== undefined) {
        throw new BaleError('E_STATE', `a VM named ${given} already exists (bale runtime rm ${given} removes it)`, { subject: given })
      }
    }
  }
  throw new BaleError('E_STATE', `no free VM name for ${base} after 20 tries`, { subject: base })
}

export async function listNames(store: StateStore): Promise<string[]> {
  const entries = await fs.readdir(store.root, { withFileTypes: true }).catch(() => [])
  return entries.filter((e) => e.isDirectory() && NAME_RE.test(e.name)).map((e) => e.name).sort()
}

export async function lockVm(paths: VmPaths, waitMs: number): Promise<HeldLock> {
  try {
    // Lock owners are bale processes on this host: always the real /proc, whatever the store observes VMs with.
    return await acquireLock(paths.lock, { waitMs, what: `VM ${paths.name}` })
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(paths.name)
    throw e
  }
}

export function notFound(name: string): BaleError {
  return new BaleError('E_NOT_FOUND', `no VM named ${name} (bale runtime ls lists them)`, { subject: name })
}

/** A VM as reconciliation found it. */
export interface VmView {
  readonly paths: VmPaths
  readonly record: VmRecord
  /** Whether its QEMU is running now (pid, start time and argv matched). */
  readonly alive: boolean
  /** The status to show: the record's, or `stopped` for a dead VM whose record could not be updated (locked). */
  readonly status: VmStatus
}

/**
 * Observe the QEMU a record names. A record without a pid (bale was killed between writing it
 * and the spawn returning) is matched by its exact argv, which holds the VM id.
 */
export async function observe(rec: VmRecord, procfs: ProcFs): Promise<{ verdict: IdentityVerdict; adopt?: { pid: number; start_time: string } }> {
  if (rec.status === 'stopped') return { verdict: { alive: false, why: 'gone' } }
  if (rec.pid === null) {
    const found = (await findByArgv(rec.argv, procfs)).filter((p) => p.state !== 'Z' && p.state !== 'X')
    const first = found[0]
    if (first === undefined) return { verdict: { alive: false, why: 'no-pid' } }
    return { verdict: { alive: true }, adopt: { pid: first.pid, start_time: first.startTime } }
  }
  return { verdict: matchIdentity(rec, await readProc(rec.pid, procfs)) }
}

/** Files that belong to a running VM only. The overlay and logs stay until `rm`. */
export async function releaseRuntimeFiles(paths: VmPaths): Promise<void> {
  for (const f of [...paths.agentSockets, ...paths.agentLocks]) await fs.rm(f, { force: true })
  await fs.rm(paths.qmpSocket, { force: true })
}

/** How much of the console log's end is searched for stage 2's exit line: it is followed only by shutdown messages. */
const EXIT_LINE_WINDOW = 64 * 1024

/**
 * The entrypoint's exit code as stage 2 printed it (`bale-init: exit status N` or
 * `bale-init: signal N`, guest/src/loop.c), from the end of the console log; the last one wins
 * (an entrypoint could print such a line itself, but stage 2's comes after it). Not anchored at
 * the line's start: stage 2 writes where the entrypoint left the cursor.
 */
export async function exitCodeFromConsole(file: string): Promise<number | null> {
  let fh: fs.FileHandle
  try {
    fh = await fs.open(file, 'r')
  } catch {
    return null
  }
  try {
    const { size } = await fh.stat()
    const len = Math.min(size, EXIT_LINE_WINDOW)
    const buf = Buffer.alloc(len)
    await fh.read(buf, 0, len, size - len)
    return parseExitLine(buf.toString('utf8'))
  } finally {
    await fh.close()
  }
}

export function parseExitLine(text: string): number | null {
  let code: number | null = null
  for (const m of text.matchAll(/bale-init: (exit status|signal) (\d{1,3})\r?$/gm)) {
    const n = Number(m[2])
    code = m[1] === 'signal' ? 128 + n : n
  }
  return code
}

/**
 * Bring one record in line with reality: a dead QEMU is marked stopped (with its exit code if
 * the guest reported one) and its sockets removed; a pid-less record whose QEMU is found gets its
 * pid. Mutations happen under the VM's lock; when the lock is busy (`lockWaitMs` 0 and another
 * bale holds it) the view is returned without writing.
 */
export async function reconcile(store: StateStore, name: string, lockWaitMs: number): Promise<VmView> {
  const paths = vmPaths(store, name)
  // No record, no lock: creating the lock file would refresh the directory's mtime, by which a
  // record-less directory is judged abandoned (sweepOrphanDir).
  if (!(await fs.stat(paths.record).then((st) => st.isFile(), () => false))) throw notFound(name)
  let lock: HeldLock | undefined
  try {
    lock = await lockVm(paths, lockWaitMs)
  } catch (e) {
    if (!(e instanceof BaleError) || e.code !== 'E_STATE') throw e
  }
  try {
    return await reconcileLocked(store, paths, lock !== undefined)
  } finally {
    await lock?.release()
  }
}

/** reconcile() for a caller that already holds the lock (write = true) or chose not to write. */
export async function reconcileLocked(store: StateStore, paths: VmPaths, write: boolean): Promise<VmView> {
  let rec: VmRecord
  try {
    rec = await readRecord(paths.record)
  } catch (e) {
    if (e instanceof BaleError && e.code === 'E_NOT_FOUND') throw notFound(paths.name)
    throw e
  }
  const { verdict, adopt } = await observe(rec, store.procfs)
  if (verdict.alive) {
    if (adopt !== undefined && write) {
      rec = { ...rec, pid: adopt.pid, start_time: adopt.start_time }
      await writeRecord(paths.record, rec)
    }
    return { paths, record: rec, alive: true, status: rec.status }
  }
  if (rec.status !== 'stopped' && write) {
    rec = { ...rec, status: 'stopped', stopped_at: new Date().toISOString(), exit_code: await exitCodeFromConsole(paths.consoleLog) }
    await writeRecord(paths.record, rec)
    await releaseRuntimeFiles(paths)
  }
  return { paths, record: rec, alive: false, status: 'stopped' }
}

/**
 * A VM directory without a record is a boot that died between taking the name and writing the
 * record, before any QEMU existed (the record precedes the spawn). Removed once older than
 * this, so a boot still in that window (milliseconds) is never swept.
 */
const ORPHAN_DIR_MS = 60_000

/**
 * Every VM, reconciled. A record that cannot be read is reported through `onProblem` (and
 * left alone: it may be a newer bale's); record-less directories of dead boots are removed.
 */
export async function reconcileAll(store: StateStore, onProblem: (message: string) => void = () => undefined): Promise<VmView[]> {
  const out: VmView[] = []
  for (const name of await listNames(store)) {
    try {
      out.push(await reconcile(store, name, 0))
    } catch (e) {
      if (!(e instanceof BaleError)) throw e
      if (e.code === 'E_NOT_FOUND') await sweepOrphanDir(vmPaths(store, name))
      else onProblem(e.message)
    }
  }
  return out
}

async function sweepOrphanDir(paths: VmPaths): Promise<void> {
  const st = await fs.stat(paths.dir).catch(() => undefined)
  if (st === undefined || Date.now() - st.mtimeMs < ORPHAN_DIR_MS) return
  let lock: HeldLock
  try {
    lock = await lockVm(paths, 0)
  } catch {
    return
  }
  try {
    const hasRecord = await fs.stat(paths.record).then(
      () => true,
      () => false,
    )
    if (!hasRecord) await fs.rm(paths.dir, { recursive: true, force: true })
  } finally {
    await lock.release()
  }
}
