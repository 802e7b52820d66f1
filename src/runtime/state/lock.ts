import { promises as fs } from 'node:fs'
import { BaleError } from '../../lib/errors.js'
import { HOST_PROC, readProc, readStartTimeSync, type ProcFs } from './proc.js'

/**
 * One VM's lock: a file created with O_EXCL holding the owner's pid and process start time.
 *
 * Why not proper-lockfile: it judges staleness by mtime (10 s by default, 2 s at least), so a
 * `bale` killed with SIGKILL mid-boot would make the `stop` that follows wait that long. Here the
 * owner is known exactly: the lock is stale the moment its owner's pid is gone or names another
 * process (different start time), and is taken over at once.
 *
 * Taking over a stale lock is itself guarded by a second O_EXCL file (`lock.steal`) so that two
 * processes that both judged it stale cannot both delete it (the second would delete the lock the
 * first had just created). A steal guard is held for microseconds; one older than
 * STEAL_GUARD_STALE_MS was left by a process killed mid-steal and is removed.
 */
const STEAL_GUARD_STALE_MS = 5_000
/** Poll interval while waiting for a lock held by a live process. */
const RETRY_MS = 25

export interface LockOwner {
  pid: number
  start_time: string
}

export interface HeldLock {
  release(): Promise<void>
}

export interface LockOptions {
  /** How long to wait for a live owner; 0 = try once. */
  waitMs: number
  /** Shown in the timeout error, e.g. `VM web`. */
  what: string
  procfs?: ProcFs
}

function selfOwner(procfs: ProcFs): LockOwner {
  const start = readStartTimeSync(process.pid, procfs)
  if (start === undefined) throw new BaleError('E_STATE', `${procfs.root}/${process.pid}/stat: cannot read this process's start time`)
  return { pid: process.pid, start_time: start }
}

async function readOwner(file: string): Promise<LockOwner | undefined | 'absent'> {
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 'absent'
    throw e
  }
  try {
    const v = JSON.parse(text) as unknown
    if (typeof v === 'object' && v !== null && 'pid' in v && 'start_time' in v) {
      const { pid, start_time } = v as { pid: unknown; start_time: unknown }
      if (typeof pid === 'number' && typeof start_time === 'string') return { pid, start_time }
    }
  } catch {
    // fall through: unparsable
  }
  // Empty or torn: the owner died between creating and writing it (a few µs), or it is
  // being written right now. Treated as stale only once it is older than the steal guard's limit.
  return undefined
}

async function ownerAlive(owner: LockOwner, procfs: ProcFs): Promise<boolean> {
  const p = await readProc(owner.pid, procfs)
  return p !== undefined && p.startTime === owner.start_time && p.state !== 'Z' && p.state !== 'X'
}

async function isStale(file: string, owner: LockOwner | undefined, procfs: ProcFs): Promise<boolean> {
  if (owner !== undefined) return !(await ownerAlive(owner, procfs))
  const st = await fs.stat(file).catch(() => undefined)
  return st !== undefined && Date.now() - st.mtimeMs > STEAL_GUARD_STALE_MS
}

async function tryCreate(file: string, owner: LockOwner): Promise<boolean> {
  try {
    const fh = await fs.open(file, 'wx', 0o600)
    try {
      await fh.writeFile(JSON.stringify(owner))
    } finally {
      await fh.close()
    }
    return true
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw e
  }
}

/** Remove `file` if (under the steal guard) it still holds the same stale owner. */
async function steal(file: string, judged: LockOwner | undefined, procfs: ProcFs): Promise<void> {
  const guard = `${file}.steal`
  try {
    await fs.writeFile(guard, String(process.pid), { flag: 'wx', mode: 0o600 })
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
    const st = await fs.stat(guard).catch(() => undefined)
    if (st !== undefined && Date.now() - st.mtimeMs > STEAL_GUARD_STALE_MS) await fs.rm(guard, { force: true })
    return
  }
  try {
    const now = await readOwner(file)
    if (now === 'absent') return
    const same = now === undefined ? judged === undefined : judged !== undefined && now.pid === judged.pid && now.start_time === judged.start_time
    if (same && (await isStale(file, now, procfs))) await fs.rm(file, { force: true })
  } finally {
    await fs.rm(guard, { force: true })
  }
}

export async function acquireLock(file: string, opts: LockOptions): Promise<HeldLock> {
  const procfs = opts.procfs ?? HOST_PROC
  const me = selfOwner(procfs)
  const deadline = Date.now() + opts.waitMs
  for (;;) {
    if (await tryCreate(file, me)) {
      let released = false
      return {
        release: async () => {
          if (released) return
          released = true
          // Only our own lock: a lock judged stale and taken over must not be removed by us.
          const cur = await readOwner(file).catch(() => 'absent' as const)
          if (cur !== 'absent' && cur !== undefined && cur.pid === me.pid && cur.start_time === me.start_time) await fs.rm(file, { force: true })
        },
      }
    }
    const owner = await readOwner(file)
    if (owner === 'absent') continue
    if (await isStale(file, owner, procfs)) {
      await steal(file, owner, procfs)
      continue
    }
    if (Date.now() >= deadline) {
      const who = owner === undefined ? 'another bale process' : `bale process ${owner.pid}`
      throw new BaleError('E_STATE', `${opts.what} is locked by ${who} (${file}); try again when it has finished`, { subject: file })
    }
    await new Promise((r) => setTimeout(r, RETRY_MS))
  }
}

/** Run `fn` holding the lock; the lock is released whatever `fn` does. */
export async function withLock<T>(file: string, opts: LockOptions, fn: () => Promise<T>): Promise<T> {
  const lock = await acquireLock(file, opts)
  try {
    return await fn()
  } finally {
    await lock.release()
  }
}
