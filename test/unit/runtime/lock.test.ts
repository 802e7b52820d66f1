import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, utimesSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { acquireLock, withLock } from '../../../src/runtime/state/lock.js'
import { readStartTimeSync } from '../../../src/runtime/state/proc.js'

const dir = mkdtempSync(path.join(os.tmpdir(), 'bale-lock-'))
let n = 0
const lockFile = (): string => path.join(dir, `lock-${n++}`)
const children: Array<ReturnType<typeof spawn>> = []
afterAll(() => {
  for (const c of children) c.kill('SIGKILL')
})

/** A pid that has exited (its /proc entry is gone once spawnSync has reaped it). */
function deadPid(): { pid: number; start_time: string } {
  const r = spawnSync('sh', ['-c', 'echo $$'], { encoding: 'utf8' })
  return { pid: Number(r.stdout.trim()), start_time: '1' }
}

describe('VM lock', () => {
  it('is held by one holder at a time; a second waits, then fails naming the holder', async () => {
    const f = lockFile()
    const held = await acquireLock(f, { waitMs: 0, what: 'VM web' })
    const owner = JSON.parse(readFileSync(f, 'utf8')) as { pid: number; start_time: string }
    expect(owner).toEqual({ pid: process.pid, start_time: readStartTimeSync(process.pid) })
    await expect(acquireLock(f, { waitMs: 100, what: 'VM web' })).rejects.toMatchObject({
      code: 'E_STATE',
      message: expect.stringMatching(new RegExp(`^VM web is locked by bale process ${process.pid} `)),
    })
    await held.release()
    expect(existsSync(f)).toBe(false)
    await (await acquireLock(f, { waitMs: 0, what: 'VM web' })).release()
  })

  it('a waiter gets the lock as soon as it is released', async () => {
    const f = lockFile()
    const order: string[] = []
    const first = withLock(f, { waitMs: 0, what: 'x' }, async () => {
      await new Promise((r) => setTimeout(r, 150))
      order.push('first')
    })
    await new Promise((r) => setTimeout(r, 20))
    await withLock(f, { waitMs: 5_000, what: 'x' }, async () => {
      order.push('second')
    })
    await first
    expect(order).toEqual(['first', 'second'])
  })

  it('dead-owner trap: a lock left by a killed bale is taken over at once, not after an mtime timeout', async () => {
    const f = lockFile()
    writeFileSync(f, JSON.stringify(deadPid()))
    const t0 = Date.now()
    const held = await acquireLock(f, { waitMs: 0, what: 'x' })
    expect(Date.now() - t0).toBeLessThan(1_000)
    expect(JSON.parse(readFileSync(f, 'utf8'))).toMatchObject({ pid: process.pid })
    await held.release()
  })

  it('pid-reuse trap: a lock naming a live pid with another start time is stale', async () => {
    const f = lockFile()
    writeFileSync(f, JSON.stringify({ pid: process.pid, start_time: '1' }))
    const held = await acquireLock(f, { waitMs: 0, what: 'x' })
    await held.release()
  })

  it('a live owner (another process) keeps it until it exits', async () => {
    const f = lockFile()
    const child = spawn('sleep', ['30'], { stdio: 'ignore' })
    children.push(child)
    const pid = child.pid as number
    await new Promise((r) => setTimeout(r, 50))
    writeFileSync(f, JSON.stringify({ pid, start_time: readStartTimeSync(pid) }))
    await expect(acquireLock(f, { waitMs: 100, what: 'x' })).rejects.toMatchObject({ code: 'E_STATE' })
    const waiting = acquireLock(f, { waitMs: 10_000, what: 'x' })
    child.kill('SIGKILL')
    const held = await waiting
    await held.release()
  })

  it('torn-lock trap: an empty lock file is only stale once old (its writer may be mid-write)', async () => {
    const f = lockFile()
    writeFileSync(f, '')
    await expect(acquireLock(f, { waitMs: 50, what: 'x' })).rejects.toMatchObject({ code: 'E_STATE', message: expect.stringContaining('another bale process') })
    const old = (Date.now() - 60_000) / 1000
    utimesSync(f, old, old)
    await (await acquireLock(f, { waitMs: 0, what: 'x' })).release()
  })

  it('release never removes a lock that is no longer ours', async () => {
    const f = lockFile()
    const held = await acquireLock(f, { waitMs: 0, what: 'x' })
    writeFileSync(f, JSON.stringify({ pid: 1, start_time: '1' }))
    await held.release()
    expect(existsSync(f)).toBe(true)
  })

  it('several concurrent takers of one stale lock: exactly one holds it at a time', async () => {
    const f = lockFile()
    writeFileSync(f, JSON.stringify(deadPid()))
    let inside = 0
    let maxInside = 0
    await Promise.all(
      Array.from({ length: 8 }, () =>
        withLock(f, { waitMs: 10_000, what: 'x' }, async () => {
          inside++
          maxInside = Math.max(maxInside, inside)
          await new Promise((r) => setTimeout(r, 5))
          inside--
        }),
      ),
    )
    expect(maxInside).toBe(1)
  })
})
