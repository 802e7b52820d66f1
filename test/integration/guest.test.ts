/**
 * The real bale-init binary, run on this host in agent-only mode on a unix socket and driven by
 * the TypeScript client: what the runtime does over the virtio port, without a VM.
 */
import { randomBytes } from 'node:crypto'
import { execFile } from 'node:child_process'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import fc from 'fast-check'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { AgentClient, waitForAgent, type ExecSession } from '../../src/runtime/agent/index.js'
import { FrameType, MAX_PAYLOAD, PROTOCOL_VERSION, STREAM_WINDOW, encodeFrame } from '../../src/runtime/agent/protocol.js'
import { BaleError } from '../../src/lib/errors.js'
import { GUEST_BIN, GUEST_BUILT, RawConn, buildGuest, collect, hostUser, sourceVersion, startAgent, tempDir, type Running } from '../unit/agent/guest-harness.js'

const execFileP = promisify(execFile)

/** 300 KB: the size budget of the guest binary (issue 4). */
const SIZE_BUDGET = 300 * 1024

let dir: string
let sock: string
let agent: Running
const clients: AgentClient[] = []

async function client(): Promise<AgentClient> {
  const c = await AgentClient.connect(sock, { timeoutMs: 5000 })
  clients.push(c)
  return c
}

async function execAll(c: AgentClient, argv: string[], opts: { env?: string[]; cwd?: string; user?: string; input?: Buffer } = {}) {
  const s = await c.exec({ argv, env: opts.env, cwd: opts.cwd, user: opts.user, stdin: opts.input !== undefined })
  if (opts.input !== undefined) s.stdin.end(opts.input)
  const [stdout, stderr, status] = await Promise.all([collect(s.stdout), collect(s.stderr), s.wait()])
  return { stdout: stdout.toString('utf8'), stderr: stderr.toString('utf8'), ...status, raw: stdout }
}

beforeAll(async () => {
  await buildGuest()
  dir = await tempDir('guest')
  sock = path.join(dir, 'agent.sock')
  agent = await startAgent(sock)
})

afterEach(() => {
  for (const c of clients.splice(0)) c.close()
})

afterAll(async () => {
  await agent?.kill()
  if (dir) await fs.rm(dir, { recursive: true, force: true })
})

describe('the binary', () => {
  it('is a static ELF (no PT_INTERP) within the size budget', async () => {
    const elf = await fs.readFile(GUEST_BUILT)
    expect(elf.subarray(0, 4).toString('latin1')).toBe('\x7fELF')
    expect(elf[4]).toBe(2) // ELFCLASS64
    const phoff = Number(elf.readBigUInt64LE(0x20))
    const phentsize = elf.readUInt16LE(0x36)
    const phnum = elf.readUInt16LE(0x38)
    const types: number[] = []
    for (let i = 0; i < phnum; i++) types.push(elf.readUInt32LE(phoff + i * phentsize))
    const PT_LOAD = 1
    const PT_DYNAMIC = 2
    const PT_INTERP = 3
    expect(types).toContain(PT_LOAD)
    expect(types).not.toContain(PT_INTERP)
    expect(types).not.toContain(PT_DYNAMIC)
    expect(elf.length).toBeLessThanOrEqual(SIZE_BUDGET)
  })

  it('prints the version constant of its source, which HELLO also reports', async () => {
    const { stdout } = await execFileP(GUEST_BUILT, ['--version'])
    const version = await sourceVersion()
    expect(stdout).toBe(`${version}\n`)
    const c = await client()
    expect(c.hello.agent).toBe(version)
    expect(c.hello.protocol).toBe(PROTOCOL_VERSION)
    expect(c.hello.mainPid).toBeNull()
  })

  it('refuses unknown arguments with usage', async () => {
    const err = await execFileP(GUEST_BIN, ['--bogus']).catch((e: { code: number; stderr: string }) => e)
    expect(err).toMatchObject({ code: 2 })
    expect((err as { stderr: string }).stderr).toContain('unknown argument --bogus')
  })
})

describe('exec', () => {
  it('streams stdout and stderr separately and reports exit code 0', async () => {
    const c = await client()
    const r = await execAll(c, ['sh', '-c', 'echo out; echo err >&2; echo out2'])
    expect(r).toMatchObject({ stdout: 'out\nout2\n', stderr: 'err\n', exitCode: 0, signal: null })
  })

  it('reports exit code 3', async () => {
    const c = await client()
    expect(await execAll(c, ['sh', '-c', 'exit 3'])).toMatchObject({ exitCode: 3, signal: null })
  })

  it('exits 127 with a message when the program does not exist', async () => {
    const c = await client()
    const r = await execAll(c, ['/nonexistent/prog', 'x'])
    expect(r.exitCode).toBe(127)
    expect(r.stderr).toBe('bale-init: exec /nonexistent/prog: No such file or directory\n')
    expect((await execAll(c, ['no-such-program-on-path'])).exitCode).toBe(127)
  })

  it('exits 126 with a message when the program cannot be executed', async () => {
    const c = await client()
    const f = path.join(dir, 'not-executable')
    await fs.writeFile(f, '#!/bin/sh\necho hi\n', { mode: 0o644 })
    const r = await execAll(c, [f])
    expect(r.exitCode).toBe(126)
    expect(r.stderr).toBe(`bale-init: exec ${f}: Permission denied\n`)
  })

  it('delivers signals and reports death by signal', async () => {
    const c = await client()
    const s = await c.exec({ argv: ['sleep', '30'] })
    expect(s.pid).toBeGreaterThan(0)
    await s.signal('SIGTERM')
    expect(await s.wait()).toEqual({ exitCode: null, signal: 'SIGTERM' })
    const self = await execAll(c, ['sh', '-c', 'kill -KILL $$'])
    expect(self).toMatchObject({ exitCode: null, signal: 'SIGKILL' })
    // The exec is gone: signalling it again is refused by the guest.
    await expect(s.signal('TERM')).rejects.toMatchObject({ code: 'E_NOT_FOUND' })
  })

  it('pipes stdin through, 1 MiB round trip (flow control both ways)', async () => {
    const c = await client()
    const input = randomBytes(1024 * 1024)
    const r = await execAll(c, ['cat'], { input })
    expect(r.exitCode).toBe(0)
    expect(r.raw.equals(input)).toBe(true)
  })

  it('closes stdin on end so the reader sees EOF', async () => {
    const c = await client()
    const r = await execAll(c, ['wc', '-c'], { input: Buffer.from('12345') })
    expect(r.stdout.trim()).toBe('5')
  })

  it('runs several execs at once without mixing their streams or statuses', async () => {
    const c = await client()
    const n = 16
    const results = await Promise.all(
      Array.from({ length: n }, (_, i) => execAll(c, ['sh', '-c', `sleep 0.0${i % 5}; echo ${i}; echo e${i} >&2; exit ${i}`])),
    )
    results.forEach((r, i) => expect(r).toMatchObject({ stdout: `${i}\n`, stderr: `e${i}\n`, exitCode: i }))
  })

  it('applies env, cwd and user', async () => {
    const c = await client()
    const nobody = await hostUser('nobody')
    const r = await execAll(c, ['sh', '-c', 'echo "$FOO"; pwd; id -u; id -g; echo "$HOME"'], { env: ['FOO=bar baz'], cwd: '/tmp', user: 'nobody' })
    const home = (await fs.readFile('/etc/passwd', 'utf8')).split('\n').find((l) => l.startsWith('nobody:'))?.split(':')[5]
    expect(r.stdout).toBe(`bar baz\n/tmp\n${nobody.uid}\n${nobody.gid}\n${home}\n`)
    const numeric = await execAll(c, ['sh', '-c', 'id -u; id -g'], { user: '4321:8765' })
    expect(numeric.stdout).toBe('4321\n8765\n')
  })

  it('exits 126 naming the user when the user does not exist, or the cwd', async () => {
    const c = await client()
    const r = await execAll(c, ['true'], { user: 'no-such-user' })
    expect(r).toMatchObject({ exitCode: 126, stderr: 'bale-init: user no-such-user: no such user in /etc/passwd\n' })
    const d = await execAll(c, ['true'], { cwd: '/no/such/dir' })
    expect(d).toMatchObject({ exitCode: 126, stderr: 'bale-init: cwd /no/such/dir: No such file or directory\n' })
  })

  it('keeps serving others while one session is not read (per-session backpressure)', async () => {
    const c = await client()
    const total = 4_000_000
    const big: ExecSession = await c.exec({ argv: ['head', '-c', String(total), '/dev/zero'] })
    // Nobody reads big.stdout yet: its window fills and the guest stops reading its pipe.
    await new Promise((r) => setTimeout(r, 300))
    // The host holds at most one window beyond the stream's own buffer; the rest waits in
    // the guest's pipe.
    expect(big.stdout.readableLength).toBeGreaterThan(0)
    expect(big.stdout.readableLength).toBeLessThanOrEqual(STREAM_WINDOW + big.stdout.readableHighWaterMark)
    expect(await c.ping()).toBeGreaterThanOrEqual(0)
    expect(await execAll(c, ['echo', 'still here'])).toMatchObject({ stdout: 'still here\n', exitCode: 0 })
    const out = await collect(big.stdout)
    expect(out.length).toBe(total)
    expect(await big.wait()).toEqual({ exitCode: 0, signal: null })
  })

  it('refuses exec without argv', async () => {
    const c = await client()
    await expect(c.exec({ argv: [] })).rejects.toMatchObject({ code: 'E_USAGE' })
  })
})

describe('files', () => {
  it('writes and reads back binary content with the requested mode', async () => {
    const c = await client()
    const data = randomBytes(300 * 1024)
    const p = path.join(dir, 'written.bin')
    await c.writeFile(p, data, 0o600)
    const st = await fs.stat(p)
    expect(st.mode & 0o7777).toBe(0o600)
    expect((await fs.readFile(p)).equals(data)).toBe(true)
    expect((await c.readFile(p)).equals(data)).toBe(true)
    // Temporary names never linger.
    expect((await fs.readdir(dir)).filter((n) => n.includes('.bale-write'))).toEqual([])
  })

  it('replaces a symlink at the destination instead of writing through it', async () => {
    const c = await client()
    const target = path.join(dir, 'symlink-target')
    const link = path.join(dir, 'symlink')
    await fs.writeFile(target, 'original')
    await fs.symlink(target, link)
    await c.writeFile(link, Buffer.from('new'))
    expect(await fs.readFile(target, 'utf8')).toBe('original')
    expect((await fs.lstat(link)).isFile()).toBe(true)
  })

  it('reads empty files and reports missing ones as E_NOT_FOUND', async () => {
    const c = await client()
    const empty = path.join(dir, 'empty')
    await fs.writeFile(empty, '')
    expect((await c.readFile(empty)).length).toBe(0)
    const missing = path.join(dir, 'missing')
    const err = await c.readFile(missing).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(BaleError)
    expect(err).toMatchObject({ code: 'E_NOT_FOUND', message: `guest: ${missing}: No such file or directory`, subject: missing })
  })

  it('refuses directories, relative paths and missing parents', async () => {
    const c = await client()
    await expect(c.readFile(dir)).rejects.toMatchObject({ code: 'E_INPUT', message: `guest: ${dir}: not a regular file` })
    await expect(c.readFile('relative/path')).rejects.toMatchObject({ code: 'E_INPUT' })
    await expect(c.writeFile(path.join(dir, 'no', 'parent'), Buffer.from('x'))).rejects.toMatchObject({ code: 'E_NOT_FOUND' })
    // The connection is still usable after refusals.
    expect(await c.ping()).toBeGreaterThanOrEqual(0)
  })
})

describe('malformed input', () => {
  it('answers garbage with an error frame and keeps serving', async () => {
    const raw = await RawConn.open(sock)
    raw.write(Buffer.from('this is not a frame at all'))
    const err = await raw.next((f) => f.type === FrameType.ERROR)
    expect(err.id).toBe(0)
    expect(JSON.parse(err.payload.toString())).toMatchObject({ code: 'EBADMSG' })
    raw.send(FrameType.HELLO, 7, JSON.stringify({ protocol: PROTOCOL_VERSION }))
    expect((await raw.next((f) => f.id === 7)).type).toBe(FrameType.OK)
    raw.close()
  })

  it('refuses an oversized frame by its id, then serves the next frame', async () => {
    const raw = await RawConn.open(sock)
    raw.send(FrameType.HELLO, 1, JSON.stringify({ protocol: PROTOCOL_VERSION }))
    await raw.next((f) => f.id === 1)
    const header = encodeFrame(FrameType.PING, 9, Buffer.alloc(0))
    header.writeUInt32BE(MAX_PAYLOAD + 1, 8)
    raw.write(Buffer.concat([header, Buffer.alloc(MAX_PAYLOAD + 1)]))
    const err = await raw.next((f) => f.id === 9)
    expect(err.type).toBe(FrameType.ERROR)
    expect(JSON.parse(err.payload.toString())).toMatchObject({ code: 'E2BIG' })
    raw.send(FrameType.PING, 10, 'after')
    const pong = await raw.next((f) => f.id === 10)
    expect(pong).toMatchObject({ type: FrameType.OK })
    expect(pong.payload.toString()).toBe('after')
    raw.close()
  })

  it('refuses unknown types, bad JSON, wrong versions and requests before HELLO', async () => {
    const raw = await RawConn.open(sock)
    raw.send(FrameType.EXEC, 1, JSON.stringify({ argv: ['true'] }))
    expect(JSON.parse((await raw.next((f) => f.id === 1)).payload.toString())).toMatchObject({ code: 'EPROTO' })
    raw.send(FrameType.HELLO, 2, JSON.stringify({ protocol: 99 }))
    expect(JSON.parse((await raw.next((f) => f.id === 2)).payload.toString())).toMatchObject({ code: 'EPROTONOSUPPORT' })
    raw.send(FrameType.HELLO, 3, JSON.stringify({ protocol: PROTOCOL_VERSION }))
    expect((await raw.next((f) => f.id === 3)).type).toBe(FrameType.OK)
    raw.send(0x42, 4)
    expect(JSON.parse((await raw.next((f) => f.id === 4)).payload.toString())).toMatchObject({ code: 'EBADMSG' })
    raw.send(FrameType.EXEC, 5, '{"argv": [')
    expect(JSON.parse((await raw.next((f) => f.id === 5)).payload.toString())).toMatchObject({ code: 'EBADMSG' })
    raw.send(FrameType.EXEC, 6, JSON.stringify({ argv: 'sh' }))
    expect(JSON.parse((await raw.next((f) => f.id === 6)).payload.toString())).toMatchObject({ code: 'EINVAL' })
    raw.send(FrameType.EXEC, 7, JSON.stringify({ argv: ['a\u0000b'] }))
    expect(JSON.parse((await raw.next((f) => f.id === 7)).payload.toString())).toMatchObject({ code: 'EINVAL' })
    const v2 = encodeFrame(FrameType.PING, 8, Buffer.alloc(0))
    v2[2] = 2
    raw.write(v2)
    expect(JSON.parse((await raw.next((f) => f.id === 8)).payload.toString())).toMatchObject({ code: 'EPROTONOSUPPORT' })
    raw.send(FrameType.PING, 11, 'ok')
    expect((await raw.next((f) => f.id === 11)).payload.toString()).toBe('ok')
    raw.close()
  })

  it('survives arbitrary bytes before HELLO (property)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 4096 }), async (junk) => {
        const raw = await RawConn.open(sock)
        try {
          raw.write(Buffer.from(junk))
          raw.send(FrameType.HELLO, 77, JSON.stringify({ protocol: PROTOCOL_VERSION }))
          raw.send(FrameType.PING, 78, 'alive')
          const pong = await raw.next((f) => f.id === 78 && f.type === FrameType.OK)
          expect(pong.payload.toString()).toBe('alive')
        } finally {
          raw.close()
        }
      }),
      { numRuns: 40 },
    )
    const c = await client()
    expect(await c.ping()).toBeGreaterThanOrEqual(0)
  })
})

describe('connections', () => {
  it('survives the host disconnecting mid-exec and serves a new connection', async () => {
    const first = await client()
    const s = await first.exec({ argv: ['sh', '-c', 'sleep 0.3; echo late'] })
    const waiting = s.wait()
    first.close()
    await expect(waiting).rejects.toMatchObject({ code: 'E_VM' })
    const second = await waitForAgent(sock, 5000)
    clients.push(second)
    expect(await second.ping()).toBeGreaterThanOrEqual(0)
    expect(await execAll(second, ['echo', 'again'])).toMatchObject({ stdout: 'again\n', exitCode: 0 })
    expect(agent.proc.exitCode).toBeNull()
  })

  it('serves several connections at once', async () => {
    const [a, b] = await Promise.all([client(), client()])
    const [ra, rb] = await Promise.all([execAll(a, ['echo', 'a']), execAll(b, ['echo', 'b'])])
    expect(ra.stdout + rb.stdout).toBe('a\nb\n')
  })

  it('fails pending requests with E_VM when the agent goes away, and waitForAgent times out cleanly', async () => {
    const own = path.join(dir, 'own.sock')
    const a = await startAgent(own)
    const c = await AgentClient.connect(own)
    const s = await c.exec({ argv: ['sleep', '30'] })
    const closed = new Promise((r) => c.once('close', r))
    await a.kill()
    await expect(s.wait()).rejects.toMatchObject({ code: 'E_VM' })
    await closed
    await expect(c.ping()).rejects.toMatchObject({ code: 'E_VM' })
    await expect(c.mainExit).rejects.toMatchObject({ code: 'E_VM' })
    const t0 = Date.now()
    await expect(waitForAgent(own, 300)).rejects.toMatchObject({ code: 'E_VM' })
    expect(Date.now() - t0).toBeLessThan(2000)
  })

  it('stops on SHUTDOWN in agent-only mode, terminating running execs', async () => {
    const own = path.join(dir, 'shutdown.sock')
    const a = await startAgent(own)
    const c = await AgentClient.connect(own)
    const s = await c.exec({ argv: ['sleep', '30'] })
    await c.shutdown()
    expect(await s.wait()).toEqual({ exitCode: null, signal: 'SIGTERM' })
    expect(await a.exited).toEqual({ code: 0, signal: null })
  })
})
