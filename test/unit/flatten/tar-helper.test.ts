import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { buildTar, paxRecord } from '../../helpers/tar.js'

// The test writer is checked against GNU tar (Debian essential), so flatten's reader is not
// the only judge of what the helper produces.
describe('test/helpers/tar.ts', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'bale-tarhelper-'))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  function list(buf: Buffer): string {
    const f = path.join(dir, `t${Math.random().toString(16).slice(2)}.tar`)
    writeFileSync(f, buf)
    return execFileSync('tar', ['--numeric-owner', '--full-time', '-tvf', f], { env: { ...process.env, TZ: 'UTC', LC_ALL: 'C' } }).toString()
  }

  it('writes headers GNU tar reads: kinds, modes, owners, mtimes, links, devices, long names', () => {
    const long = `${'d'.repeat(120)}/${'f'.repeat(90)}`
    const out = list(
      buildTar([
        { name: 'dir', type: 'dir', mode: 0o750, uid: 1000, gid: 1001, mtime: 1_700_000_000 },
        { name: 'dir/file', content: 'hello', mode: 0o4755 },
        { name: 'dir/hard', type: 'link', linkname: 'dir/file' },
        { name: 'sym', type: 'symlink', linkname: 'dir/file' },
        { name: 'null', type: 'char', devmajor: 1, devminor: 3, mode: 0o666 },
        { name: 'sda', type: 'block', devmajor: 8, devminor: 0, mode: 0o660 },
        { name: 'pipe', type: 'fifo' },
        { name: long, content: 'x' },
        { name: `gnu-${long}`, content: 'y', longNames: 'gnu' },
        { name: 'big-uid', uid: 0o7777777 + 1 },
      ]),
    )
    expect(out.split('\n').filter(Boolean)).toEqual([
      'drwxr-x--- 1000/1001         0 2023-11-14 22:13:20 dir',
      '-rwsr-xr-x 0/0               5 1970-01-01 00:00:00 dir/file',
      'hrw-r--r-- 0/0               0 1970-01-01 00:00:00 dir/hard link to dir/file',
      'lrwxrwxrwx 0/0               0 1970-01-01 00:00:00 sym -> dir/file',
      'crw-rw-rw- 0/0             1,3 1970-01-01 00:00:00 null',
      'brw-rw---- 0/0             8,0 1970-01-01 00:00:00 sda',
      'prw-r--r-- 0/0               0 1970-01-01 00:00:00 pipe',
      `-rw-r--r-- 0/0               1 1970-01-01 00:00:00 ${long}`,
      `-rw-r--r-- 0/0               1 1970-01-01 00:00:00 gnu-${long}`,
      '-rw-r--r-- 2097152/0         0 1970-01-01 00:00:00 big-uid',
    ])
  })

  it('computes PAX record lengths that include their own digits', () => {
    expect(paxRecord('path', 'a').toString()).toBe('9 path=a\n')
    // 1 + ' ' + 'k=' + 94 bytes + '\n' = 99 bytes without the length; with 3 digits it is 101.
    const r = paxRecord('k', 'v'.repeat(94))
    expect(r.length).toBe(Number(r.toString().split(' ')[0]))
    const r2 = paxRecord('k', 'v'.repeat(95))
    expect(r2.length).toBe(Number(r2.toString().split(' ')[0]))
  })
})
