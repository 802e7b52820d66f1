import { EventEmitter } from 'node:events'
import net from 'node:net'
import { Readable, Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { BaleError } from '../../lib/errors.js'
import {
  FrameDecoder,
  FrameType,
  MAX_PAYLOAD,
  PROTOCOL_VERSION,
  encodeFrame,
  encodeU32,
  eventSchema,
  execOkSchema,
  exitSchema,
  guestError,
  helloSchema,
  parsePayload,
  signalNumber,
  sizeSchema,
  toExitStatus,
  type ExitStatus,
  type Frame,
} from './protocol.js'

export type { ExitStatus } from './protocol.js'

/** What the guest said about itself in its HELLO reply. */
export interface AgentHello {
  protocol: number
  /** The agent's version (`bale-init --version`). */
  agent: string
  capabilities: string[]
  maxPayload: number
  window: number
  /** The entrypoint's pid in the guest, null when none runs (agent-only, or already exited). */
  mainPid: number | null
  /** Set when the entrypoint had already exited when we connected. */
  mainExit: ExitStatus | null
}

export interface ConnectOptions {
  /** How long to wait for the guest's HELLO reply, in total (default 10 s). */
  timeoutMs?: number
  /** Timeout of each later request's reply (default 10 s). */
  requestTimeoutMs?: number
}

export interface ExecRequest {
  argv: string[]
  /** `KEY=VALUE` entries, replacing the image config's entries of the same name. */
  env?: string[]
  /** Default: the image config's workdir, else `/`. */
  cwd?: string
  /** `name`, `uid`, `uid:gid` or `name:group`; default: the image config's user. */
  user?: string
  /** Give the process a stdin pipe (`session.stdin`); otherwise it reads /dev/null. */
  stdin?: boolean
}

/**
 * The agent answers control requests in microseconds; 10 s covers a TCG guest on a loaded
 * 2-core machine while still failing a hung guest in reasonable time.
 */
const DEFAULT_TIMEOUT_MS = 10_000
/**
 * HELLO is re-sent at this interval until answered. QEMU holds bytes until the guest opens the
 * port, but the guest kernel drops unread data when a port is closed (an agent that restarts),
 * and re-sending is cheaper than telling those cases apart; 250 ms is short next to a boot.
 */
const HELLO_RETRY_MS = 250

interface Pending {
  what: string
  subject?: string
  resolve: (payload: Buffer) => void
  reject: (err: BaleError) => void
  onData?: (payload: Buffer) => void
  timer?: NodeJS.Timeout
  timeoutMs: number
}

function noop(): void {}

/**
 * A connection to the guest agent over the unix socket QEMU exposes for the `org.bale.agent`
 * virtio port (or, in tests, the socket `bale-init --agent-listen` serves).
 *
 * Events: `close` (BaleError E_VM saying why) once the connection has ended, after every pending
 * request, exec and `mainExit` was rejected with it; `protocol-error` (BaleError) when the guest
 * refused a frame that no request waits for (a bug on one side, worth logging).
 */
export class AgentClient extends EventEmitter {
  readonly hello: AgentHello
  /** Resolves with the entrypoint's exit status; rejects (E_VM) if the connection ends first. */
  readonly mainExit: Promise<ExitStatus>
  private resolveMainExit: (s: ExitStatus) => void = noop
  private rejectMainExit: (e: BaleError) => void = noop
  private readonly pending = new Map<number, Pending>()
  private readonly sessions = new Map<number, ExecSession>()
  private nextId: number
  private closedWith: BaleError | undefined

  private constructor(
    readonly socketPath: string,
    private readonly socket: net.Socket,
    private readonly decoder: FrameDecoder,
    hello: AgentHello,
    firstId: number,
    private readonly requestTimeoutMs: number,
  ) {
    super()
    this.hello = hello
    this.nextId = firstId
    this.mainExit = new Promise<ExitStatus>((resolve, reject) => {
      this.resolveMainExit = resolve
      this.rejectMainExit = reject
    })
    // Awaiting it is optional: a rejection nobody asked for must not crash the process.
    this.mainExit.catch(noop)
    if (hello.mainExit) this.resolveMainExit(hello.mainExit)
    socket.on('data', (chunk: Buffer) => this.onData(chunk))
    socket.on('error', (e: NodeJS.ErrnoException) => this.fail(this.vmError(`connection error: ${e.code ?? e.message}`)))
    socket.on('close', () => this.fail(this.vmError('connection closed (the VM stopped or the agent went away)')))
    socket.resume()
  }

  /** Connect and complete HELLO; E_VM if the socket refuses or the guest does not answer in time. */
  static async connect(socketPath: string, opts: ConnectOptions = {}): Promise<AgentClient> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS
    const socket = await openSocket(socketPath, timeoutMs)
    try {
      const { hello, decoder, leftover, nextId } = await handshake(socket, socketPath, timeoutMs)
      const client = new AgentClient(socketPath, socket, decoder, hello, nextId, opts.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS)
      for (const f of leftover) client.onFrame(f)
      return client
    } catch (e) {
      socket.destroy()
      throw e
    }
  }

  get closed(): boolean {
    return this.closedWith !== undefined
  }

  /** Round-trip time of one PING, in milliseconds. */
  async ping(): Promise<number> {
    const t0 = process.hrtime.bigint()
    await this.request(FrameType.PING, Buffer.from(t0.toString()), 'ping')
    return Number(process.hrtime.bigint() - t0) / 1e6
  }

  async exec(req: ExecRequest): Promise<ExecSession> {
    if (req.argv.length === 0 || req.argv[0] === '') throw new BaleError('E_USAGE', 'exec: argv must name a program')
    this.assertOpen()
    const id = this.allocId()
    const session = new ExecSession(this, id, req.stdin === true, this.hello.window)
    this.sessions.set(id, session)
    const body = JSON.stringify({ argv: req.argv, env: req.env, cwd: req.cwd, user: req.user, stdin: req.stdin === true })
    const ok = this.waitReply(id, `exec ${req.argv[0]}`, req.argv[0])
    this.send(FrameType.EXEC, id, Buffer.from(body))
    try {
      const payload = await ok
      session.started(parsePayload(execOkSchema, payload, 'EXEC reply').pid)
      return session
    } catch (e) {
      this.sessions.delete(id)
      throw e
    }
  }

  /** Send a signal to the guest's main process (the image's entrypoint). */
  async signalMain(sig: string | number): Promise<void> {
    await this.request(FrameType.SIGNAL, JSON.stringify({ target: 0, signal: signalNumber(sig) }), 'signal main process')
  }

  /** Write a file in the guest (temporary name, then rename; the parent must exist). */
  async writeFile(path: string, data: Buffer, mode = 0o644, owner: { uid?: number; gid?: number } = {}): Promise<void> {
    this.assertOpen()
    const id = this.allocId()
    const done = this.waitReply(id, `write ${path}`, path)
    let failed = false
    done.catch(() => {
      failed = true
    })
    this.send(FrameType.WRITE_FILE, id, JSON.stringify({ path, mode, uid: owner.uid ?? 0, gid: owner.gid ?? 0 }))
    for (let off = 0; off < data.length && !failed && !this.closed; off += MAX_PAYLOAD) {
      if (!this.send(FrameType.INPUT, id, data.subarray(off, off + MAX_PAYLOAD))) await this.drained()
    }
    if (!failed && !this.closed) this.send(FrameType.INPUT, id, Buffer.alloc(0))
    parsePayload(sizeSchema, await done, 'WRITE_FILE reply')
  }

  /** Read a regular file from the guest. */
  async readFile(path: string): Promise<Buffer> {
    this.assertOpen()
    const id = this.allocId()
    const chunks: Buffer[] = []
    let total = 0
    const done = this.waitReply(id, `read ${path}`, path, (b) => {
      chunks.push(b)
      total += b.length
    })
    this.send(FrameType.READ_FILE, id, JSON.stringify({ path }))
    const { size } = parsePayload(sizeSchema, await done, 'READ_FILE reply')
    if (size !== total) throw new BaleError('E_VM', `guest read ${path}: announced ${size} bytes, received ${total}`, { subject: path })
    return Buffer.concat(chunks, total)
  }

  /**
   * Ask the guest to stop: TERM to the entrypoint, KILL after `timeoutMs`, then the rest of the
   * shutdown sequence and power-off. Resolves when the guest has accepted the request.
   */
  async shutdown(opts: { timeoutMs?: number } = {}): Promise<void> {
    await this.request(FrameType.SHUTDOWN, JSON.stringify({ timeoutMs: opts.timeoutMs ?? 10_000 }), 'shutdown')
  }

  close(): void {
    this.fail(this.vmError('connection closed by the host'))
    this.socket.destroy()
  }

  // ---------------------------------------------------------------- internals used by sessions

  /** @internal Queue a frame; false when the socket's buffer is full (wait for drained()). */
  send(type: number, id: number, payload: Buffer | string = Buffer.alloc(0)): boolean {
    if (this.closed) return true
    return this.socket.write(encodeFrame(type, id, payload))
  }

  drained(): Promise<void> {
    if (this.closed || !this.socket.writableNeedDrain) return Promise.resolve()
    return new Promise((resolve) => {
      const done = (): void => {
        this.socket.off('drain', done)
        this.socket.off('close', done)
        resolve()
      }
      this.socket.once('drain', done)
      this.socket.once('close', done)
    })
  }

  async request(type: number, payload: Buffer | string, what: string, subject?: string): Promise<Buffer> {
    this.assertOpen()
    const id = this.allocId()
    const reply = this.waitReply(id, what, subject)
    this.send(type, id, payload)
    return reply
  }

  vmError(message: string): BaleError {
    return new BaleError('E_VM', `guest agent ${this.socketPath}: ${message}`, { subject: this.socketPath })
  }

  // ---------------------------------------------------------------- frames in

  private allocId(): number {
    const id = this.nextId
    // ids are u32 and 0 is reserved for connection-level frames.
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1
    return id
  }

  private assertOpen(): void {
    if (this.closedWith) throw this.closedWith
  }

  private waitReply(id: number, what: string, subject?: string, onData?: (b: Buffer) => void): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const p: Pending = { what, subject, resolve, reject, onData, timeoutMs: this.requestTimeoutMs }
      this.pending.set(id, p)
      this.arm(id, p)
    })
  }

  private arm(id: number, p: Pending): void {
    if (p.timer) clearTimeout(p.timer)
    p.timer = setTimeout(() => {
      this.pending.delete(id)
      p.reject(this.vmError(`${p.what}: no reply within ${p.timeoutMs} ms`))
    }, p.timeoutMs)
  }

  private onData(chunk: Buffer): void {
    let frames: Frame[]
    try {
      frames = this.decoder.push(chunk)
    } catch (e) {
      this.fail(e instanceof BaleError ? this.vmError(e.message) : this.vmError(String(e)))
      this.socket.destroy()
      return
    }
    for (const f of frames) this.onFrame(f)
  }

  private onFrame(f: Frame): void {
    if (f.id === 0) {
      if (f.type === FrameType.EVENT) {
        try {
          this.resolveMainExit(toExitStatus(parsePayload(eventSchema, f.payload, 'EVENT payload')))
        } catch (e) {
          this.emit('protocol-error', e)
        }
      } else if (f.type === FrameType.ERROR) {
        // The guest refused something that had no request id (e.g. a frame it could not parse).
        this.emit('protocol-error', guestError(f.payload))
      }
      return
    }
    const p = this.pending.get(f.id)
    if (p) {
      if (f.type === FrameType.DATA && p.onData) {
        p.onData(f.payload)
        this.arm(f.id, p) // an inactivity timeout: a large file keeps its request alive
        return
      }
      if (f.type !== FrameType.OK && f.type !== FrameType.ERROR) return
      this.pending.delete(f.id)
      if (p.timer) clearTimeout(p.timer)
      if (f.type === FrameType.OK) p.resolve(f.payload)
      else p.reject(guestError(f.payload, p.subject))
      return
    }
    const s = this.sessions.get(f.id)
    if (s) {
      s.onFrame(f)
      if (s.finished) this.sessions.delete(f.id)
    }
    // Anything else belongs to a request that already ended (a late ACK target, a file write
    // refused early): nothing waits for it.
  }

  private fail(err: BaleError): void {
    if (this.closedWith) return
    this.closedWith = err
    for (const [, p] of this.pending) {
      if (p.timer) clearTimeout(p.timer)
      p.reject(err)
    }
    this.pending.clear()
    for (const [, s] of this.sessions) s.connectionLost(err)
    this.sessions.clear()
    this.rejectMainExit(err)
    this.emit('close', err)
  }
}

/**
 * One process started in the guest. Its output streams apply backpressure per session through
 * the protocol's credit window: when this side stops reading, the guest stops reading the
 * process's pipes, and other sessions on the same connection are not held up.
 */
export class ExecSession {
  pid = 0
  readonly stdout: Readable
  readonly stderr: Readable
  readonly stdin: Writable
  finished = false
  private status: Promise<ExitStatus>
  private resolveStatus: (s: ExitStatus) => void = noop
  private rejectStatus: (e: BaleError) => void = noop
  private stdinCredit: number
  private creditWaiters: Array<() => void> = []
  private held = new Map<Readable, number>()

  constructor(
    private readonly client: AgentClient,
    readonly id: number,
    private readonly hasStdin: boolean,
    window: number,
  ) {
    this.stdinCredit = window
    this.status = new Promise<ExitStatus>((resolve, reject) => {
      this.resolveStatus = resolve
      this.rejectStatus = reject
    })
    this.status.catch(noop)
    const readable = (): Readable => {
      const r: Readable = new Readable({
        // Called when the consumer wants more: hand back the credit we held for it.
        read: () => {
          const n = this.held.get(r) ?? 0
          if (n > 0) {
            this.held.set(r, 0)
            this.client.send(FrameType.ACK, this.id, encodeU32(n))
          }
        },
      })
      return r
    }
    this.stdout = readable()
    this.stderr = readable()
    this.stdin = new Writable({
      write: (chunk: Buffer, _enc, cb) => {
        this.writeStdin(chunk).then(() => cb(), cb)
      },
      final: (cb) => {
        if (this.hasStdin) this.client.send(FrameType.INPUT, this.id, Buffer.alloc(0))
        cb()
      },
    })
  }

  /** The exit status; rejects (E_VM) if the connection to the guest ends first. */
  wait(): Promise<ExitStatus> {
    return this.status
  }

  async signal(sig: string | number): Promise<void> {
    await this.client.request(FrameType.SIGNAL, JSON.stringify({ target: this.id, signal: signalNumber(sig) }), `signal exec ${this.id}`)
  }

  // ---------------------------------------------------------------- driven by the client

  started(pid: number): void {
    this.pid = pid
  }

  onFrame(f: Frame): void {
    switch (f.type) {
      case FrameType.STDOUT:
        this.output(this.stdout, f.payload)
        break
      case FrameType.STDERR:
        this.output(this.stderr, f.payload)
        break
      case FrameType.WINDOW:
        if (f.payload.length === 4) {
          this.stdinCredit += f.payload.readUInt32BE(0)
          this.wakeWriters()
        }
        break
      case FrameType.EXIT:
        this.finish()
        try {
          this.resolveStatus(toExitStatus(parsePayload(exitSchema, f.payload, 'EXIT payload')))
        } catch (e) {
          this.rejectStatus(e as BaleError)
        }
        break
      case FrameType.ERROR:
        // A refused INPUT or ACK for this session: a bug on one side, worth surfacing.
        this.client.emit('protocol-error', guestError(f.payload))
        break
      default:
        break
    }
  }

  connectionLost(err: BaleError): void {
    this.finish()
    this.rejectStatus(err)
  }

  private output(stream: Readable, data: Buffer): void {
    if (data.length === 0) {
      if (!stream.readableEnded) stream.push(null)
      return
    }
    if (stream.push(data)) {
      this.client.send(FrameType.ACK, this.id, encodeU32(data.length))
    } else {
      // Not acknowledged until the consumer reads again: the guest stops sending this
      // session's output once its window is used up, so at most one window waits here, and
      // the socket keeps flowing for every other session.
      this.held.set(stream, (this.held.get(stream) ?? 0) + data.length)
    }
  }

  private finish(): void {
    if (this.finished) return
    this.finished = true
    for (const s of [this.stdout, this.stderr]) if (!s.readableEnded) s.push(null)
    this.wakeWriters()
  }

  private wakeWriters(): void {
    const waiters = this.creditWaiters
    this.creditWaiters = []
    for (const w of waiters) w()
  }

  private async writeStdin(chunk: Buffer): Promise<void> {
    if (!this.hasStdin) throw new BaleError('E_USAGE', `exec ${this.id} was started without stdin: pass { stdin: true }`)
    let off = 0
    while (off < chunk.length) {
      // After exit or a lost connection the bytes have nowhere to go; wait() reports why.
      if (this.finished || this.client.closed) return
      if (this.stdinCredit === 0) {
        await new Promise<void>((resolve) => this.creditWaiters.push(resolve))
        continue
      }
      const n = Math.min(chunk.length - off, this.stdinCredit, MAX_PAYLOAD)
      this.stdinCredit -= n
      const ok = this.client.send(FrameType.INPUT, this.id, chunk.subarray(off, off + n))
      off += n
      if (!ok) await this.client.drained()
    }
  }
}

async function openSocket(socketPath: string, timeoutMs: number): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve, reject) => {
    const socket = net.createConnection(socketPath)
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new BaleError('E_VM', `guest agent ${socketPath}: connect timed out after ${timeoutMs} ms`, { subject: socketPath }))
    }, timeoutMs)
    socket.once('connect', () => {
      clearTimeout(timer)
      socket.removeAllListeners('error')
      resolve(socket)
    })
    socket.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      reject(
        new BaleError('E_VM', `guest agent ${socketPath}: connect: ${e.code ?? e.message}`, {
          subject: socketPath,
          cause: e,
          // A socket not yet created or not yet listening is what a booting VM looks like.
          temporary: e.code === 'ENOENT' || e.code === 'ECONNREFUSED',
        }),
      )
    })
  })
}

/**
 * Send HELLO (again every HELLO_RETRY_MS) until the guest answers one of them. Bytes before
 * the answer may be left over from an earlier connection and are skipped.
 */
async function handshake(
  socket: net.Socket,
  socketPath: string,
  timeoutMs: number,
): Promise<{ hello: AgentHello; decoder: FrameDecoder; leftover: Frame[]; nextId: number }> {
  const decoder = new FrameDecoder(true)
  const helloIds = new Set<number>()
  let nextId = 1
  return new Promise((resolve, reject) => {
    let retry: NodeJS.Timeout | undefined
    const finish = (err: BaleError | undefined, value?: { hello: AgentHello; leftover: Frame[] }): void => {
      clearTimeout(retry)
      clearTimeout(overall)
      socket.off('data', onData)
      socket.off('close', onClose)
      socket.off('error', onError)
      // Hold incoming bytes until the client attaches its own listener.
      socket.pause()
      if (err) reject(err)
      else if (value) {
        decoder.lenient = false
        resolve({ ...value, decoder, nextId })
      }
    }
    const sendHello = (): void => {
      const id = nextId++
      helloIds.add(id)
      socket.write(encodeFrame(FrameType.HELLO, id, JSON.stringify({ protocol: PROTOCOL_VERSION })))
      retry = setTimeout(sendHello, HELLO_RETRY_MS)
    }
    const onData = (chunk: Buffer): void => {
      const frames = decoder.push(chunk)
      for (let i = 0; i < frames.length; i++) {
        const f = frames[i]
        if (!f || !helloIds.has(f.id)) continue
        if (f.type === FrameType.ERROR) {
          const e = guestError(f.payload)
          return finish(new BaleError('E_VM', `guest agent ${socketPath}: HELLO refused: ${e.message.replace(/^guest: /, '')}`, { subject: socketPath }))
        }
        if (f.type !== FrameType.OK) continue
        try {
          const h = parsePayload(helloSchema, f.payload, 'HELLO reply')
          if (h.protocol !== PROTOCOL_VERSION) {
            throw new BaleError('E_VM', `guest agent ${socketPath}: speaks protocol ${h.protocol}, this bale speaks ${PROTOCOL_VERSION}`, { subject: socketPath })
          }
          const hello: AgentHello = { ...h, mainExit: h.mainExit ? toExitStatus(h.mainExit) : null }
          // Frames after the reply (a main-exit event) belong to the connection; replies to
          // the other HELLOs we sent are dropped.
          return finish(undefined, { hello, leftover: frames.slice(i + 1).filter((x) => !helloIds.has(x.id)) })
        } catch (e) {
          return finish(e instanceof BaleError ? e : new BaleError('E_VM', String(e)))
        }
      }
    }
    const onClose = (): void => finish(new BaleError('E_VM', `guest agent ${socketPath}: connection closed before HELLO`, { subject: socketPath, temporary: true }))
    const onError = (e: Error): void => finish(new BaleError('E_VM', `guest agent ${socketPath}: ${e.message}`, { subject: socketPath, cause: e, temporary: true }))
    const overall = setTimeout(
      () => finish(new BaleError('E_VM', `guest agent ${socketPath}: no HELLO reply within ${timeoutMs} ms`, { subject: socketPath, temporary: true })),
      timeoutMs,
    )
    socket.on('data', onData)
    socket.once('close', onClose)
    socket.once('error', onError)
    sendHello()
  })
}

/**
 * Connect once the guest is up: retries while the socket does not exist yet, refuses
 * connections, or the guest has not answered HELLO, until `timeoutMs` has passed.
 */
export async function waitForAgent(socketPath: string, timeoutMs: number, opts: Omit<ConnectOptions, 'timeoutMs'> = {}): Promise<AgentClient> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    const left = deadline - Date.now()
    if (left <= 0) break
    try {
      return await AgentClient.connect(socketPath, { ...opts, timeoutMs: left })
    } catch (e) {
      last = e
      if (!(e instanceof BaleError) || !e.temporary) throw e
    }
    // 20 ms: short against a boot (hundreds of ms) and cheap for a socket that does not exist yet.
    await sleep(Math.min(20, Math.max(0, deadline - Date.now())))
  }
  const why = last instanceof Error ? last.message.replace(`guest agent ${socketPath}: `, '') : 'no attempt finished'
  throw new BaleError('E_VM', `guest agent ${socketPath}: not ready within ${timeoutMs} ms (${why})`, { subject: socketPath, cause: last })
}
