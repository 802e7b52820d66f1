import { existsSync, mkdirSync, mkdtempSync, readFileSync, utimesSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { acquireLock } from '../../../src/runtime/state/lock.js'
import { RECORD_SCHEMA_VERSION, readRecord, writeRecord, type VmRecord } from '../../../src/runtime/state/record.js'
import {
  generateName,
  parseExitLine,
  reconcile,
  reconcileAll,
  reserveName,
  validateName,
  vmPaths,
  type StateStore,
} from '../../../src/runtime/state/store.js'

const argv = ['qemu-system-x86_64', '-name', 'bale-0123456789ab']

/** A state store over a temp dir, observing VMs through a fake /proc. */
function fakeStore(): { store: StateStore; proc: (pid: number, start: string, args: string[], state?: string) => void } {
  const base = mkdtempSync(path.join(os.tmpdir(), 'bale-store-'))
  const procRoot = path.join(base, 'proc')
  mkdirSync(procRoot)
  const store: StateStore = { root: path.join(base, 'vms'), procfs: { root: procRoot } }
  const proc = (pid: number, start: string, args: string[], state = 'S'): void => {
    const d = path.join(procRoot, String(pid))
    mkdirSync(d, { recursive: true })
    const fields = [String(pid), '(qemu-system-x86)', state, ...Array.from({ length: 49 }, (_, i) => (i + 4 === 22 ? start : '0'))]
    writeFileSync(path.join(d, 'stat'), fields.join(' '))
    writeFileSync(path.join(d, 'cmdline'), args.map((a) => `${a}\0`).join(''))
  }
  return { store, proc }
}

function record(name: string, over: Partial<VmRecord> = {}): VmRecord {
  return {
    schema_version: RECORD_SCHEMA_VERSION,
    name,
    id: '0123456789ab',
    created: '2026-01-01T00:00:00.000Z',
    status: 'running',
    bundle: { path: '/b/demo.tar.zst', sha256: 'b'.repeat(64), name: 'demo', version: '1', rootfs_sha256: 'a'.repeat(64) },
    kernel: { ref: 'k', vmlinux: '/k/vmlinux', initramfs: '/k/initramfs' },
    accel: 'tcg',
    cpus: 1,
    memory_mib: 512,
    ports: [],
    argv,
    pid: 4242,
    start_time: '777',
    stopped_at: null,
    exit_code: null,
    ...over,
  }
}

async function makeVm(store: StateStore, rec: VmRecord, consoleText = ''): Promise<ReturnType<typeof vmPaths>> {
  const p = await reserveName(store, rec.name, 'demo')
  await writeRecord(p.record, rec)
  writeFileSync(p.consoleLog, consoleText)
  for (const f of [...p.agentSockets, ...p.agentLocks]) writeFileSync(f, '')
  writeFileSync(p.qmpSocket, '')
  writeFileSync(p.overlay, 'qcow2')
  return p
}

describe('names', () => {
  it('validates user names (DNS-label length, safe characters)', () => {
    expect(validateName('web-1.a_b')).toBe('web-1.a_b')
    for (const bad of ['', '-x', '.x', 'a/b', 'a b', 'x'.repeat(64), '..']) expect(() => validateName(bad)).toThrow(/--name/)
  })

  it('generates <bundle>-<4 hex>, always a valid name', () => {
    expect(generateName('Demo App')).toMatch(/^demo-app-[0-9a-f]{4}$/)
    expect(generateName('///')).toMatch(/^vm-[0-9a-f]{4}$/)
    expect(() => validateName(generateName('x'.repeat(200)))).not.toThrow()
  })

  it('a given name that exists is refused; names are taken atomically', async () => {
    const { store } = fakeStore()
    await reserveName(store, 'web', 'demo')
    await expect(reserveName(store, 'web', 'demo')).rejects.toMatchObject({ code: 'E_STATE', message: expect.stringContaining('a VM named web already exists') })
    const a = await reserveName(store, undefined, 'demo')
    const b = await reserveName(store, undefined, 'demo')
    expect(a.name).not.toBe(b.name)
  })
})

describe('exit status from the console', () => {
  it('takes stage 2\'s last report: N, or 128+N for a signal; not anchored at the line start', () => {
    expect(parseExitLine('bale-init: exit status 3\r\n[ 1.0] reboot: Power down\r\n')).toBe(3)
    expect(parseExitLine('bale-init: exit status 5\nbale-init: signal 9\n')).toBe(137)
    expect(parseExitLine('no newlinebale-init: exit status 42\r\n')).toBe(42)
    expect(parseExitLine('bale-init: exec /x: not found\n')).toBeNull()
  })
})

describe('reconcile', () => {
  it('a live QEMU (pid, start time and argv match) stays as recorded', async () => {
    const { store, proc } = fakeStore()
    proc(4242, '777', argv)
    const p = await makeVm(store, record('web'))
    const v = await reconcile(store, 'web', 0)
    expect(v).toMatchObject({ alive: true, status: 'running' })
    expect(p.agentSockets.every(existsSync)).toBe(true)
  })

  it('a dead one is marked stopped with the exit code stage 2 reported; sockets go, overlay and logs stay', async () => {
    const { store, proc } = fakeStore()
    proc(4242, '999', argv) // the pid now belongs to another process
    const p = await makeVm(store, record('web'), 'hi\r\nbale-init: exit status 3\r\n')
    const v = await reconcile(store, 'web', 0)
    expect(v).toMatchObject({ alive: false, status: 'stopped' })
    const rec = await readRecord(p.record)
    expect(rec).toMatchObject({ status: 'stopped', exit_code: 3 })
    expect(rec.stopped_at).not.toBeNull()
    expect([...p.agentSockets, ...p.agentLocks, p.qmpSocket].some(existsSync)).toBe(false)
    expect(existsSync(p.overlay) && existsSync(p.consoleLog)).toBe(true)
  })

  it('killed-between-record-and-spawn trap: a pid-less record adopts the QEMU whose argv it names', async () => {
    const { store, proc } = fakeStore()
    proc(5150, '31337', argv)
    const p = await makeVm(store, record('web', { status: 'starting', pid: null, start_time: null }))
    const v = await reconcile(store, 'web', 0)
    expect(v).toMatchObject({ alive: true, status: 'starting' })
    expect(await readRecord(p.record)).toMatchObject({ pid: 5150, start_time: '31337' })
  })

  it('a pid-less record with no such QEMU is stopped', async () => {
    const { store } = fakeStore()
    await makeVm(store, record('web', { status: 'starting', pid: null, start_time: null }))
    expect(await reconcile(store, 'web', 0)).toMatchObject({ alive: false, status: 'stopped' })
  })

  it('while another process holds the lock it reports what it sees without writing', async () => {
    const { store } = fakeStore()
    const p = await makeVm(store, record('web'))
    // A lock whose owner is alive (this process), taken as if by another bale.
    const held = await acquireLock(p.lock, { waitMs: 0, what: 'x' })
    const v = await reconcile(store, 'web', 0)
    expect(v).toMatchObject({ alive: false, status: 'stopped' })
    expect((await readRecord(p.record)).status).toBe('running')
    await held.release()
  })

  it('an unknown name is E_NOT_FOUND pointing at ls', async () => {
    const { store } = fakeStore()
    await expect(reconcile(store, 'nope', 0)).rejects.toMatchObject({ code: 'E_NOT_FOUND', message: expect.stringContaining('bale runtime ls') })
  })

  it('reconcileAll: reports unreadable records, sweeps old record-less dirs, keeps young ones', async () => {
    const { store, proc } = fakeStore()
    proc(4242, '777', argv)
    await makeVm(store, record('ok'))
    const bad = await reserveName(store, 'bad', 'demo')
    writeFileSync(bad.record, '{"schema_version": 99}')
    const old = await reserveName(store, 'old', 'demo')
    const t = (Date.now() - 120_000) / 1000
    utimesSync(old.dir, t, t)
    const young = await reserveName(store, 'young', 'demo')
    const problems: string[] = []
    const views = await reconcileAll(store, (m) => problems.push(m))
    expect(views.map((v) => v.record.name)).toEqual(['ok'])
    expect(problems).toHaveLength(1)
    expect(problems[0]).toMatch(/bad\/vm\.json: schema_version/)
    expect(existsSync(old.dir)).toBe(false)
    expect(existsSync(young.dir)).toBe(true)
    expect(readFileSync(bad.record, 'utf8')).toContain('99')
  })
})
