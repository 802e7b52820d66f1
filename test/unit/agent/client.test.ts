/**
 * The host client against a scripted fake guest on a unix socket: the situations the real agent
 * does not produce on demand (silence, stale bytes, a guest that vanishes, a wrong version).
 */
import { promises as fs } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { AgentClient, waitForAgent } from '../../../src/runtime/agent/index.js'
import { FrameDecoder, FrameType, PROTOCOL_VERSION, encodeFrame, type Frame } from '../../../src/runtime/agent/protocol.js'
import { tempDir } from './guest-harness.js'

type Handler = (f: Frame, reply: (type: number, id: number, payload?: Buffer | string) => void, sock: net.Socket) => void

const HELLO_REPLY = {
  protocol: PROTOCOL_VERSION,
  agent: '9.9.9',
  capabilities: ['exec'],
  maxPayload: 65536,
  window: 262144,
  mainPid: 2,
  mainExit: null,
}

/** A fake guest: answers HELLO like the agent unless `handler` takes the frame. */
class FakeGuest {
  readonly server: net.Server
  readonly seen: Frame[] = []
  /** The most recent connection, to push frames unprompted. */
  last: net.Socket | undefined
  constructor(
    readonly socketPath: string,
    private handler: Handler = () => undefined,
  ) {
    this.server = net.createServer((sock) => {
      this.last = sock
      const d = new FrameDecoder(false)
      const reply = (type: number, id: number, payload: Buffer | string = Buffer.alloc(0)): void => {
        sock.write(encodeFrame(type, id, payload))
      }
      sock.on('error', () => undefined)
      sock.on('data', (b: Buffer) => {
        for (const f of d.push(b)) {
          this.seen.push(f)
          this.handler(f, reply, sock)
        }
      })
    })
  }

  static async start(socketPath: string, handler?: Handler): Promise<FakeGuest> {
    const g = new FakeGuest(socketPath, handler)
    await new Promise<void>((res) => g.server.listen(socketPath, res))
    return g
  }

  async stop(): Promise<void> {
    await new Promise<void>((res) => this.server.close(() => res()))
  }
}

/** The usual HELLO answer; other frames go to `rest`. */
function agentLike(rest: Handler = () => undefined, hello: object = HELLO_REPLY): Handler {
  return (f, reply, sock) => {
    if (f.type === FrameType.HELLO) reply(FrameType.OK, f.id, JSON.stringify(hello))
    else rest(f, reply, sock)
  }
}

let dir: string
let sock: string
let guest: FakeGuest | undefined
const clients: AgentClient[] = []

beforeEach(async () => {
  dir = await tempDir('client')
  sock = path.join(dir, 'agent.sock')
})

afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  await guest?.stop()
  guest = undefined
  await fs.rm(dir, { recursive: true, force: true })
})

async function connect(opts: { timeoutMs?: number; requestTimeoutMs?: number } = {}): Promise<AgentClient> {
  const c = await AgentClient.connect(sock, opts)
  clients.push(c)
  return c
}

describe('HELLO', () => {
  it('is sent again until the guest answers one (a HELLO sent before the port opened is lost)', async () => {
    let hellos = 0
    guest = await FakeGuest.start(sock, (f, reply) => {
      if (f.type !== FrameType.HELLO) return
      hellos++
      if (hellos >= 3) reply(FrameType.OK, f.id, JSON.stringify(HELLO_REPLY))
    })
    const c = await connect()
    expect(c.hello.agent).toBe('9.9.9')
    expect(hellos).toBe(3)
    // Later ids do not collide with the HELLOs.
    const ids = guest.seen.map((f) => f.id)
    expect(new Set(ids).size).toBe(ids.length)
  })

  it('skips bytes left over from an earlier connection before the reply', async () => {
    guest = await FakeGuest.start(sock, (f, reply, s) => {
      if (f.type !== FrameType.HELLO) return
      s.write(Buffer.from('\x00\xba\x1e half a frame from before'))
      reply(FrameType.STDOUT, 99, 'stale output of an old session')
      reply(FrameType.OK, f.id, JSON.stringify(HELLO_REPLY))
    })
    const c = await connect()
    expect(c.hello.mainPid).toBe(2)
  })

  it('fails with E_VM naming the socket when the guest refuses our version', async () => {
    guest = await FakeGuest.start(sock, (f, reply) => {
      reply(FrameType.ERROR, f.id, JSON.stringify({ code: 'EPROTONOSUPPORT', message: 'host speaks protocol 1, this agent speaks 2' }))
    })
    await expect(connect()).rejects.toMatchObject({
      code: 'E_VM',
      message: `guest agent ${sock}: HELLO refused: host speaks protocol 1, this agent speaks 2`,
    })
  })

  it('fails with E_VM when the guest speaks another protocol version', async () => {
    guest = await FakeGuest.start(sock, agentLike(undefined, { ...HELLO_REPLY, protocol: 2 }))
    await expect(connect()).rejects.toMatchObject({ code: 'E_VM', message: `guest agent ${sock}: speaks protocol 2, this bale speaks 1` })
  })

  it('fails with E_VM after the timeout when nobody answers', async () => {
    guest = await FakeGuest.start(sock)
    const t0 = Date.now()
    await expect(connect({ timeoutMs: 300 })).rejects.toMatchObject({ code: 'E_VM', message: `guest agent ${sock}: no HELLO reply within 300 ms` })
    expect(Date.now() - t0).toBeLessThan(2000)
  })

  it('fails with E_VM when the socket does not exist', async () => {
    await expect(connect()).rejects.toMatchObject({ code: 'E_VM', message: `guest agent ${sock}: connect: ENOENT`, temporary: true })
  })
})

describe('requests', () => {
  it('time out with E_VM when the guest does not answer', async () => {
    guest = await FakeGuest.start(sock, agentLike())
    const c = await connect({ requestTimeoutMs: 200 })
    await expect(c.ping()).rejects.toMatchObject({ code: 'E_VM', message: `guest agent ${sock}: ping: no reply within 200 ms` })
    // The connection itself is still usable for later requests.
    expect(c.closed).toBe(false)
  })

  it('fail with E_VM when the guest goes away mid-request, and so do mainExit and execs', async () => {
    guest = await FakeGuest.start(
      sock,
      agentLike((f, reply, s) => {
        if (f.type === FrameType.EXEC) reply(FrameType.OK, f.id, JSON.stringify({ pid: 42 }))
        if (f.type === FrameType.READ_FILE) s.destroy()
      }),
    )
    const c = await connect()
    const session = await c.exec({ argv: ['sleep', '9'] })
    expect(session.pid).toBe(42)
    const closed = new Promise((res) => c.once('close', res))
    await expect(c.readFile('/etc/hostname')).rejects.toMatchObject({ code: 'E_VM', message: `guest agent ${sock}: connection closed (the VM stopped or the agent went away)` })
    await closed
    await expect(session.wait()).rejects.toMatchObject({ code: 'E_VM' })
    await expect(c.mainExit).rejects.toMatchObject({ code: 'E_VM' })
    await expect(c.ping()).rejects.toMatchObject({ code: 'E_VM' })
  })

  it('close the connection with E_VM on a malformed frame after HELLO', async () => {
    guest = await FakeGuest.start(
      sock,
      agentLike((f, _reply, s) => {
        if (f.type === FrameType.PING) s.write(Buffer.from('garbage that is not a frame header'))
      }),
    )
    const c = await connect()
    await expect(c.ping()).rejects.toMatchObject({ code: 'E_VM', message: expect.stringContaining('agent protocol error: bad frame magic') })
    expect(c.closed).toBe(true)
  })

  it('check the size a file read announces', async () => {
    guest = await FakeGuest.start(
      sock,
      agentLike((f, reply) => {
        if (f.type !== FrameType.READ_FILE) return
        reply(FrameType.DATA, f.id, 'abc')
        reply(FrameType.OK, f.id, JSON.stringify({ size: 4 }))
      }),
    )
    const c = await connect()
    await expect(c.readFile('/f')).rejects.toMatchObject({ code: 'E_VM', message: 'guest read /f: announced 4 bytes, received 3', subject: '/f' })
  })

  it('stop sending a file once the guest refused it', async () => {
    guest = await FakeGuest.start(
      sock,
      agentLike((f, reply) => {
        if (f.type === FrameType.WRITE_FILE) reply(FrameType.ERROR, f.id, JSON.stringify({ code: 'ENOSPC', message: '/big: No space left on device' }))
      }),
    )
    const c = await connect()
    await expect(c.writeFile('/big', Buffer.alloc(4 * 1024 * 1024))).rejects.toMatchObject({ code: 'E_VM', message: 'guest: /big: No space left on device' })
    const inputs = guest.seen.filter((f) => f.type === FrameType.INPUT).length
    // 64 frames would be the whole file; the refusal arrives after at most a few.
    expect(inputs).toBeLessThan(64)
  })
})

describe('main process exit', () => {
  it('resolves from the EVENT frame', async () => {
    guest = await FakeGuest.start(
      sock,
      agentLike((f, reply) => {
        if (f.type === FrameType.PING) {
          reply(FrameType.OK, f.id, f.payload)
          reply(FrameType.EVENT, 0, JSON.stringify({ event: 'main-exit', signal: 15 }))
        }
      }),
    )
    const c = await connect()
    await c.ping()
    expect(await c.mainExit).toEqual({ exitCode: null, signal: 'SIGTERM' })
  })

  it('resolves from the HELLO reply when it happened before we connected', async () => {
    guest = await FakeGuest.start(sock, agentLike(undefined, { ...HELLO_REPLY, mainPid: null, mainExit: { code: 3 } }))
    const c = await connect()
    expect(c.hello.mainExit).toEqual({ exitCode: 3, signal: null })
    expect(await c.mainExit).toEqual({ exitCode: 3, signal: null })
  })
})

describe('exec sessions', () => {
  it('refuse stdin writes when started without stdin', async () => {
    guest = await FakeGuest.start(
      sock,
      agentLike((f, reply) => {
        if (f.type === FrameType.EXEC) reply(FrameType.OK, f.id, JSON.stringify({ pid: 7 }))
      }),
    )
    const c = await connect()
    const s = await c.exec({ argv: ['true'] })
    const err = await new Promise<unknown>((res) => {
      s.stdin.on('error', res)
      s.stdin.write('x')
    })
    expect(err).toMatchObject({ code: 'E_USAGE' })
    expect(guest.seen.some((f) => f.type === FrameType.INPUT)).toBe(false)
  })

  it('send stdin only within the credit the guest grants', async () => {
    guest = await FakeGuest.start(
      sock,
      agentLike((f, reply) => {
        if (f.type === FrameType.EXEC) reply(FrameType.OK, f.id, JSON.stringify({ pid: 7 }))
      }),
    )
    const c = await connect()
    const s = await c.exec({ argv: ['cat'], stdin: true })
    const window = c.hello.window
    const sent = (): number => guest?.seen.filter((f) => f.type === FrameType.INPUT).reduce((n, f) => n + f.payload.length, 0) ?? 0
    let done = false
    s.stdin.write(Buffer.alloc(window + 1000), () => (done = true))
    await new Promise((r) => setTimeout(r, 200))
    expect(sent()).toBe(window)
    expect(done).toBe(false)
    // The guest acknowledges what it wrote to the process; the rest follows.
    const ack = Buffer.alloc(4)
    ack.writeUInt32BE(4096, 0)
    guest.last?.write(encodeFrame(FrameType.WINDOW, s.id, ack))
    await new Promise((r) => setTimeout(r, 200))
    expect(sent()).toBe(window + 1000)
    expect(done).toBe(true)
  })
})

describe('waitForAgent', () => {
  it('retries until the socket exists and the guest answers', async () => {
    const later = setTimeout(() => {
      void FakeGuest.start(sock, agentLike()).then((g) => (guest = g))
    }, 200)
    try {
      const c = await waitForAgent(sock, 5000)
      clients.push(c)
      expect(c.hello.agent).toBe('9.9.9')
    } finally {
      clearTimeout(later)
    }
  })

  it('fails with E_VM naming the last reason when the time is up', async () => {
    await expect(waitForAgent(sock, 200)).rejects.toMatchObject({ code: 'E_VM', message: `guest agent ${sock}: not ready within 200 ms (connect: ENOENT)` })
  })
})
