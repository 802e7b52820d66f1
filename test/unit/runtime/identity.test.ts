import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { matchIdentity } from '../../../src/runtime/state/identity.js'
import { findByArgv, parseCmdline, parseStat, readProc, type ProcInfo } from '../../../src/runtime/state/proc.js'

/** A /proc/PID/stat line with the given comm, state and start time (field 22). */
function statLine(pid: number, comm: string, state: string, start: string): string {
  const f = [String(pid), `(${comm})`, state]
  for (let i = 4; i <= 52; i++) f.push(i === 22 ? start : '0')
  return `${f.join(' ')}\n`
}

const argv = ['qemu-system-x86_64', '-name', 'bale-0123456789ab', '-m', '512M']
const proc = (over: Partial<ProcInfo> = {}): ProcInfo => ({ pid: 4242, state: 'S', startTime: '123456', argv, ...over })
const rec = { pid: 4242, start_time: '123456', argv }

describe('record identity', () => {
  it('a live QEMU is recognised only when pid, start time and argv all match', () => {
    expect(matchIdentity(rec, proc())).toEqual({ alive: true })
  })

  it('pid-reuse trap: the same pid with another start time is not the VM', () => {
    expect(matchIdentity(rec, proc({ startTime: '999999' }))).toEqual({ alive: false, why: 'pid-reused' })
  })

  it('same pid and start time but another argv (another VM id) is not the VM', () => {
    expect(matchIdentity(rec, proc({ argv: [...argv.slice(0, 2), 'bale-ffffffffffff', ...argv.slice(3)] }))).toEqual({ alive: false, why: 'argv-differs' })
    expect(matchIdentity(rec, proc({ argv: argv.slice(0, 3) }))).toEqual({ alive: false, why: 'argv-differs' })
  })

  it('a zombie has exited, whoever has yet to reap it', () => {
    expect(matchIdentity(rec, proc({ state: 'Z', argv: [] }))).toEqual({ alive: false, why: 'zombie' })
  })

  it('gone, or a record without a pid yet', () => {
    expect(matchIdentity(rec, undefined)).toEqual({ alive: false, why: 'gone' })
    expect(matchIdentity({ ...rec, pid: null, start_time: null }, proc())).toEqual({ alive: false, why: 'no-pid' })
  })
})

describe('/proc parsing', () => {
  it('comm-with-parens trap: fields are counted from the last parenthesis', () => {
    expect(parseStat(statLine(7, 'a) S 1 2 (b', 'R', '5555'))).toEqual({ state: 'R', startTime: '5555' })
    expect(parseStat(statLine(7, 'qemu-system-x86', 'S', '18446744073709551615'))).toEqual({ state: 'S', startTime: '18446744073709551615' })
    expect(parseStat('garbage')).toBeUndefined()
  })

  it('cmdline is NUL-separated with a trailing NUL; empty for zombies', () => {
    expect(parseCmdline(Buffer.from('a\0b c\0\0d\0'))).toEqual(['a', 'b c', '', 'd'])
    expect(parseCmdline(Buffer.alloc(0))).toEqual([])
  })

  it('reads this very process from the real /proc', async () => {
    const me = await readProc(process.pid)
    expect(me?.pid).toBe(process.pid)
    expect(me?.argv[0]).toBe(process.argv0)
    expect(me?.argv).toContain(process.argv[1])
    expect(me?.state).not.toBe('Z')
    expect(me?.startTime).toMatch(/^\d+$/)
    expect(await readProc(0)).toBeUndefined()
  })

  it('finds a pid-less record\'s QEMU by its exact argv in a fake /proc', async () => {
    const root = mkdtempSync(path.join(os.tmpdir(), 'bale-proc-'))
    const add = (pid: number, args: string[], state = 'S'): void => {
      mkdirSync(path.join(root, String(pid)))
      writeFileSync(path.join(root, String(pid), 'stat'), statLine(pid, 'qemu-system-x86', state, String(pid * 10)))
      writeFileSync(path.join(root, String(pid), 'cmdline'), args.map((a) => `${a}\0`).join(''))
    }
    add(100, argv)
    add(101, [...argv, '-extra'])
    add(102, argv.slice(0, -1))
    mkdirSync(path.join(root, 'self'))
    const found = await findByArgv(argv, { root })
    expect(found.map((p) => [p.pid, p.startTime])).toEqual([[100, '1000']])
  })
})
