import { mkdtempSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { QmpClient } from '../../../src/runtime/vmm/qmp.js'

type Reply = (cmd: { execute: string; id?: string }, sock: net.Socket) => void

/** A QMP server speaking the protocol as QEMU 7.2 does: greeting, then one JSON object per line. */
function fakeQemu(reply: Reply, greet = true): Promise<{ path: string; server: net.Server; received: string[] }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bale-qmp-'))
  const p = path.join(dir, 'qmp.sock')
  const received: string[] = []
  const server = net.createServer((sock) => {
    if (greet) sock.write('{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}\r\n')
    let buf = ''
    sock.on('data', (d) => {
      buf += d.toString()
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        const cmd = JSON.parse(line) as { execute: string; id?: string }
        received.push(cmd.execute)
        reply(cmd, sock)
      }
    })
    sock.on('error', () => undefined)
  })
  servers.push(server)
  return new Promise((resolve) => server.listen(p, () => resolve({ path: p, server, received })))
}

const servers: net.Server[] = []
afterEach(() => {
  for (const s of servers.splice(0)) s.close()
})

const ok = (cmd: { id?: string }, sock: net.Socket, ret: unknown = {}): void => {
  sock.write(`${JSON.stringify({ return: ret, id: cmd.id })}\r\n`)
}

describe('QMP client', () => {
  it('negotiates capabilities, then answers query-status with a typed result; events are emitted', async () => {
    const q = await fakeQemu((cmd, sock) => {
      if (cmd.execute === 'query-status') {
        sock.write('{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}\r\n')
        ok(cmd, sock, { status: 'running', singlestep: false, running: true })
      } else ok(cmd, sock)
    })
    const c = await QmpClient.connect(q.path, 2_000)
    expect(c.state).toBe('command')
    const events: string[] = []
    c.on('event', (e) => events.push(e.event))
    expect(await c.perform({ kind: 'query-status' })).toEqual({ status: 'running', running: true })
    expect(events).toEqual(['RESUME'])
    expect(q.received).toEqual(['qmp_capabilities', 'query-status'])
    c.close()
  })

  it('quit resolves whether QEMU replies or just closes the socket', async () => {
    const replying = await fakeQemu((cmd, sock) => {
      ok(cmd, sock)
      if (cmd.execute === 'quit') sock.end()
    })
    const a = await QmpClient.connect(replying.path, 2_000)
    await a.perform({ kind: 'quit' })
    const closing = await fakeQemu((cmd, sock) => (cmd.execute === 'quit' ? sock.destroy() : ok(cmd, sock)))
    const b = await QmpClient.connect(closing.path, 2_000)
    await b.perform({ kind: 'quit' })
    expect(closing.received).toEqual(['qmp_capabilities', 'quit'])
  })

  it('a closed connection refuses actions by name (phases of a closed action set)', async () => {
    const q = await fakeQemu((cmd, sock) => ok(cmd, sock))
    const c = await QmpClient.connect(q.path, 2_000)
    c.close()
    await new Promise((r) => setTimeout(r, 20))
    expect(c.state).toBe('closed')
    await expect(c.perform({ kind: 'query-status' })).rejects.toMatchObject({ code: 'E_VM', message: expect.stringContaining('query-status is not allowed in the closed phase') })
  })

  it('a QMP error reply becomes E_VM naming the command and QEMU\'s description', async () => {
    const q = await fakeQemu((cmd, sock) =>
      cmd.execute === 'query-status' ? sock.write(`${JSON.stringify({ error: { class: 'GenericError', desc: 'nope' }, id: cmd.id })}\n`) : ok(cmd, sock),
    )
    const c = await QmpClient.connect(q.path, 2_000)
    await expect(c.perform({ kind: 'query-status' })).rejects.toThrow(/query-status: nope/)
    c.close()
  })

  it('no greeting within the timeout, or no socket: E_VM naming the socket', async () => {
    const silent = await fakeQemu(() => undefined, false)
    await expect(QmpClient.connect(silent.path, 200)).rejects.toMatchObject({ code: 'E_VM', message: expect.stringContaining(silent.path) })
    await expect(QmpClient.connect(path.join(os.tmpdir(), 'bale-no-such.sock'), 200)).rejects.toMatchObject({ code: 'E_VM', message: expect.stringContaining('ENOENT') })
  })
})
