import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { BaleError } from '../lib/errors.js'
import { sleep } from '../registry/retry.js'

/**
 * One writer at a time per directory (a publish target, a mirror, the local store): two
 * concurrent publishes would each rename their own index.json and one would lose the other's
 * entries.
 *
 * The lock is a file created with its content in one step (written to a temp name, then
 * hard-linked to `.bale.lock`, which fails if it exists) naming the holder's host and pid. A
 * lock whose holder is a dead process on this host (a publish killed with SIGKILL) is taken
 * over at once; a lock held by a live process, or by another host, is waited for and then
 * reported with the file to remove. (Not proper-lockfile: its mtime-refresh staleness would
 * keep a killed publish's lock for the whole stale period, and it cannot tell dead from slow.)
 */
/** Wait up to a minute for a live writer (a long copy) before giving up with a message. */
const WAIT_MS = 60_000
const POLL_MS = 250

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'
  }
}

async function tryCreate(lockPath: string, owner: string): Promise<boolean> {
  const tmp = `${lockPath}.${process.pid}-${randomBytes(4).toString('hex')}`
  await fs.writeFile(tmp, owner, { flag: 'wx' })
  try {
    await fs.link(tmp, lockPath)
    return true
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw e
  } finally {
    await fs.rm(tmp, { force: true })
  }
}

/** Remove the lock if it names a dead process on this host; true when it did. */
async function breakIfDead(lockPath: string): Promise<boolean> {
  let text: string
  try {
    text = await fs.readFile(lockPath, 'utf8')
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT'
  }
  const [host, pidText] = text.trim().split(' ')
  const pid = Number(pidText)
  if (host !== os.hostname() || !Number.isInteger(pid) || pid <= 0 || alive(pid)) return false
  await fs.rm(lockPath, { force: true })
  return true
}

export async function withDirLock<T>(dir: string, what: string, fn: () => Promise<T>): Promise<T> {
  await fs.mkdir(dir, { recursive: true })
  return withFileLock(path.join(dir, '.bale.lock'), `${what} ${dir}`, fn)
}

/**
 * The same lock on an arbitrary lock file path (e.g. one per download). `waitMs`: how long to
 * wait for a live holder before failing with a message naming the lock file.
 */
export async function withFileLock<T>(lockPath: string, what: string, fn: () => Promise<T>, waitMs = WAIT_MS): Promise<T> {
  const owner = `${os.hostname()} ${process.pid}\n`
  const deadline = Date.now() + waitMs
  while (!(await tryCreate(lockPath, owner))) {
    if (await breakIfDead(lockPath)) continue
    if (Date.now() > deadline) {
      throw new BaleError('E_STATE', `${what}: another bale process holds ${lockPath} (remove it if no bale is running)`, { subject: lockPath })
    }
    await sleep(POLL_MS)
  }
  try {
    return await fn()
  } finally {
    await fs.rm(lockPath, { force: true })
  }
}
