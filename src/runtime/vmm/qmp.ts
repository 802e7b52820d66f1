import { EventEmitter } from 'node:events'
import net from 'node:net'
import { BaleError } from '../../lib/errors.js'

/**
 * A QMP client for the few things the runtime asks QEMU: a closed set of typed actions (after
 * Firecracker's rpc_interface.rs), each with its result type. The connection has phases:
 *
 *   greeting      → the server's {"QMP": …} banner is awaited
 *   negotiating   → only qmp_capabilities is sent (done by connect())
 *   command       → every action is allowed
 *   closed        → every action is refused by name
 *
 * connect() returns only in the command phase, so callers never see the first two.
 */
export type QmpAction = { readonly kind: 'query-status' } | { readonly kind: 'quit' }

/** QEMU's RunState names that matter here; others pass through as strings. */
export interface QmpStatus {
  readonly status: string
  readonly running: boolean
}

export type QmpResult<A extends QmpAction> = A extends { kind: 'query-status' } ? QmpStatus : A extends { kind: 'quit' } ? void : never

export type QmpPhase = 'greeting' | 'negotiating' | 'command' | 'closed'

export interface QmpEvent {
  readonly event: string
  readonly data: unknown
}

/** One QMP message is a line of JSON; QEMU never sends more than a few KB. 1 MiB bounds a misbehaving peer. */
const MAX_LINE = 1024 * 1024

interface Pending {
  resolve: (v: unknown) => void
  reject: (e: Error) => void
  /** The QMP command, named in errors. */
  execute: string
}

export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  private phase: QmpPhase = 'greeting'
  private buf = ''
  private nextId = 1
  private readonly pending = new Map<string, Pending>()
  private greeted?: { resolve: () => void; reject: (e: Error) => void }

  private constructor(
    private readonly sock: net.Socket,
    private readonly where: string,
  ) {
    super()
    sock.setEncoding('utf8')
    sock.on('data', (d: string) => this.onData(d))
    sock.on('error', () => undefined) // 'close' follows and fails what is pending
    sock.on('close', () => this.onClose())
  }

  /** Connect to a QMP unix socket, read the greeting and negotiate capabilities, within timeoutMs. */
  static async connect(socketPath: string, timeoutMs: number): Promise<QmpClient> {
    const sock = net.createConnection({ path: socketPath })
    const client = new QmpClient(sock, socketPath)
    const timer = setTimeout(() => sock.destroy(new Error('timeout')), timeoutMs)
    try {
      await new Promise<void>((resolve, reject) => {
        client.greeted = { resolve, reject }
        sock.once('error', (e: NodeJS.ErrnoException) =>
          reject(new BaleError('E_VM', `QMP ${socketPath}: ${e.code ?? e.message}`, { subject: socketPath, cause: e })),
        )
      })
      client.phase = 'negotiating'
      await client.send('qmp_capabilities')
      client.phase = 'command'
      return client
    } catch (e) {
      sock.destroy()
      throw e instanceof BaleError ? e : new BaleError('E_VM', `QMP ${socketPath}: ${e instanceof Error ? e.message : String(e)}`, { subject: socketPath, cause: e })
    } finally {
      clearTimeout(timer)
    }
  }

  get state(): QmpPhase {
    return this.phase
  }

  /** Perform one action. Refused unless in the command phase. */
  async perform<A extends QmpAction>(action: A): Promise<QmpResult<A>> {
    if (this.phase !== 'command') {
      throw new BaleError('E_VM', `QMP ${this.where}: ${action.kind} is not allowed in the ${this.phase} phase`, { subject: this.where })
    }
    switch (action.kind) {
      case 'query-status': {
        const r = await this.send('query-status')
        return parseStatus(r, this.where) as QmpResult<A>
      }
      case 'quit': {
        // QEMU may close the socket before the reply arrives: both mean it is exiting.
        const closed = new Promise<void>((resolve) => this.once('close', resolve))
        await Promise.race([this.send('quit').then(() => undefined), closed])
        return undefined as QmpResult<A>
      }
    }
  }

  close(): void {
    this.sock.destroy()
  }

  private send(execute: string): Promise<unknown> {
    const id = String(this.nextId++)
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, execute })
      this.sock.write(`${JSON.stringify({ execute, id })}\n`)
    })
  }

  private onData(d: string): void {
    this.buf += d
    if (this.buf.length > MAX_LINE && !this.buf.includes('\n')) {
      this.sock.destroy(new Error('QMP message over 1 MiB'))
      return
    }
    let nl: number
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim()
      this.buf = this.buf.slice(nl + 1)
      if (line !== '') this.onMessage(line)
    }
  }

  private onMessage(line: string): void {
    let msg: unknown
    try {
      msg = JSON.parse(line)
    } catch {
      return // QEMU only sends JSON; a torn line at close is ignored
    }
    if (typeof msg !== 'object' || msg === null) return
    const m = msg as Record<string, unknown>
    if ('QMP' in m && this.greeted) {
      this.greeted.resolve()
      this.greeted = undefined
      return
    }
    if (typeof m.event === 'string') {
      this.emit('event', { event: m.event, data: m.data })
      return
    }
    const id = typeof m.id === 'string' ? m.id : undefined
    const p = id === undefined ? undefined : this.pending.get(id)
    if (p === undefined || id === undefined) return
    this.pending.delete(id)
    if ('error' in m) {
      const err = m.error as { class?: unknown; desc?: unknown } | undefined
      p.reject(new BaleError('E_VM', `QMP ${this.where}: ${p.execute}: ${String(err?.desc ?? err?.class ?? 'error')}`, { subject: this.where }))
    } else {
      p.resolve(m.return)
    }
  }

  private onClose(): void {
    this.phase = 'closed'
    const err = new BaleError('E_VM', `QMP ${this.where}: connection closed`, { subject: this.where })
    this.greeted?.reject(err)
    this.greeted = undefined
    for (const p of this.pending.values()) p.reject(err)
    this.pending.clear()
    this.emit('close')
  }
}

function parseStatus(r: unknown, where: string): QmpStatus {
  if (typeof r === 'object' && r !== null) {
    const { status, running } = r as { status?: unknown; running?: unknown }
    if (typeof status === 'string' && typeof running === 'boolean') return { status, running }
  }
  throw new BaleError('E_VM', `QMP ${where}: query-status: unexpected reply ${JSON.stringify(r)}`, { subject: where })
}
