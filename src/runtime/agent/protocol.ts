import os from 'node:os'
import { z } from 'zod'
import { BaleError } from '../../lib/errors.js'

/**
 * The bale agent protocol, host side. docs/agent-protocol.md is the specification and
 * guest/src/proto.h holds the same numbers for the guest; change all three together.
 *
 * Frame: magic 0xBA 0x1E, version, type, id (u32 BE), payload length (u32 BE), payload.
 */
export const MAGIC = [0xba, 0x1e] as const
export const PROTOCOL_VERSION = 1
export const FRAME_HEADER = 12
/** 64 KiB: a Linux pipe's default capacity, and the guest's fixed receive buffer. */
export const MAX_PAYLOAD = 65536
/** Per-exec credit in each direction (stdin to the guest, stdout+stderr to the host). */
export const STREAM_WINDOW = 4 * MAX_PAYLOAD

export const FrameType = {
  // host → guest
  HELLO: 0x01,
  PING: 0x02,
  EXEC: 0x03,
  INPUT: 0x04,
  SIGNAL: 0x05,
  WRITE_FILE: 0x06,
  READ_FILE: 0x07,
  SHUTDOWN: 0x08,
  ACK: 0x09,
  // guest → host
  OK: 0x80,
  ERROR: 0x81,
  STDOUT: 0x82,
  STDERR: 0x83,
  DATA: 0x84,
  EXIT: 0x85,
  EVENT: 0x86,
  WINDOW: 0x87,
} as const
export type FrameTypeName = keyof typeof FrameType

export interface Frame {
  type: number
  id: number
  payload: Buffer
}

export function encodeFrame(type: number, id: number, payload: Buffer | string = Buffer.alloc(0)): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload
  if (body.length > MAX_PAYLOAD) {
    throw new BaleError('E_VM', `agent frame of ${body.length} bytes exceeds the ${MAX_PAYLOAD}-byte limit`)
  }
  const out = Buffer.allocUnsafe(FRAME_HEADER + body.length)
  out[0] = MAGIC[0]
  out[1] = MAGIC[1]
  out[2] = PROTOCOL_VERSION
  out[3] = type
  out.writeUInt32BE(id >>> 0, 4)
  out.writeUInt32BE(body.length, 8)
  body.copy(out, FRAME_HEADER)
  return out
}

export function encodeU32(v: number): Buffer {
  const b = Buffer.allocUnsafe(4)
  b.writeUInt32BE(v >>> 0, 0)
  return b
}

/**
 * Splits a byte stream into frames. Strict mode throws E_VM on a header it cannot trust;
 * lenient mode (used until the guest's HELLO reply arrives, when bytes left over from an
 * earlier connection may still be in flight) skips to the next plausible frame start.
 */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0)
  /** Bytes skipped while looking for a frame start (lenient mode only). */
  skipped = 0

  constructor(public lenient = false) {}

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk])
    const frames: Frame[] = []
    let off = 0
    for (;;) {
      if (this.lenient) off = this.nextCandidate(off)
      const avail = this.buf.length - off
      if (avail < FRAME_HEADER) break
      const problem = headerProblem(this.buf, off)
      if (problem) {
        if (!this.lenient) throw new BaleError('E_VM', `agent protocol error: ${problem}`)
        off += 1
        this.skipped += 1
        continue
      }
      const len = this.buf.readUInt32BE(off + 8)
      if (avail < FRAME_HEADER + len) break
      frames.push({
        type: this.buf[off + 3] ?? 0,
        id: this.buf.readUInt32BE(off + 4),
        // A copy: the payload outlives this buffer (stream pushes, accumulated file data).
        payload: Buffer.from(this.buf.subarray(off + FRAME_HEADER, off + FRAME_HEADER + len)),
      })
      off += FRAME_HEADER + len
    }
    this.buf = off >= this.buf.length ? Buffer.alloc(0) : this.buf.subarray(off)
    return frames
  }

  /** The first position from `from` whose bytes (as far as they have arrived) could start a frame. */
  private nextCandidate(from: number): number {
    const b = this.buf
    let i = from
    for (; i < b.length; i++) {
      if (b[i] !== MAGIC[0]) continue
      if (i + 1 < b.length && b[i + 1] !== MAGIC[1]) continue
      if (i + 2 < b.length && b[i + 2] !== PROTOCOL_VERSION) continue
      if (i + FRAME_HEADER <= b.length && b.readUInt32BE(i + 8) > MAX_PAYLOAD) continue
      break
    }
    this.skipped += i - from
    return i
  }
}

function headerProblem(b: Buffer, off: number): string | undefined {
  if (b[off] !== MAGIC[0] || b[off + 1] !== MAGIC[1]) {
    return `bad frame magic 0x${(b[off] ?? 0).toString(16)}${(b[off + 1] ?? 0).toString(16)}`
  }
  if (b[off + 2] !== PROTOCOL_VERSION) return `frame version ${b[off + 2]}, expected ${PROTOCOL_VERSION}`
  const len = b.readUInt32BE(off + 8)
  if (len > MAX_PAYLOAD) return `frame payload of ${len} bytes exceeds ${MAX_PAYLOAD}`
  return undefined
}

// ---------------------------------------------------------------- payloads (validated at the edge)

/** EXIT payloads and the exit part of the main-exit event. */
export const exitSchema = z.union([
  z.object({ code: z.number().int().min(0).max(255) }),
  z.object({ signal: z.number().int().min(1).max(64) }),
])

export const helloSchema = z.object({
  protocol: z.number().int(),
  agent: z.string(),
  capabilities: z.array(z.string()),
  maxPayload: z.number().int().positive(),
  window: z.number().int().positive(),
  mainPid: z.number().int().nullable(),
  mainExit: exitSchema.nullable(),
})

export const errorSchema = z.object({ code: z.string(), message: z.string() })
export const eventSchema = z.intersection(z.object({ event: z.literal('main-exit') }), exitSchema)
export const execOkSchema = z.object({ pid: z.number().int().positive() })
export const sizeSchema = z.object({ size: z.number().int().nonnegative() })

export interface ExitStatus {
  /** The exit code, or null when the process was killed by a signal. */
  exitCode: number | null
  /** The signal's name (`SIGTERM`), or null when the process exited. */
  signal: string | null
}

export function toExitStatus(v: z.infer<typeof exitSchema>): ExitStatus {
  return 'code' in v ? { exitCode: v.code, signal: null } : { exitCode: null, signal: signalName(v.signal) }
}

/** Parse a JSON payload with a schema; anything else is a protocol error naming what it was. */
export function parsePayload<T>(schema: z.ZodType<T>, payload: Buffer, what: string): T {
  let json: unknown
  try {
    json = JSON.parse(payload.toString('utf8'))
  } catch {
    throw new BaleError('E_VM', `agent protocol error: ${what} is not JSON`)
  }
  const r = schema.safeParse(json)
  if (!r.success) {
    const issue = r.error.issues[0]
    throw new BaleError('E_VM', `agent protocol error: ${what}: ${issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'invalid'}`)
  }
  return r.data
}

/** Linux signal numbers are the same in the guest (x86-64 Linux) as on this host. */
export function signalNumber(sig: string | number): number {
  if (typeof sig === 'number') {
    if (Number.isInteger(sig) && sig >= 1 && sig <= 64) return sig
  } else {
    const name = (sig.startsWith('SIG') ? sig : `SIG${sig}`).toUpperCase() as NodeJS.Signals
    const n = os.constants.signals[name]
    if (typeof n === 'number') return n
  }
  throw new BaleError('E_USAGE', `unknown signal ${String(sig)}`, { subject: String(sig) })
}

export function signalName(n: number): string {
  for (const [name, num] of Object.entries(os.constants.signals)) if (num === n) return name
  return `SIG${n}`
}

/** Guest errno names mapped to the error codes users act on; the rest mean the guest failed. */
const GUEST_ERRNO: Record<string, 'E_NOT_FOUND' | 'E_INPUT'> = {
  ENOENT: 'E_NOT_FOUND',
  ENOTDIR: 'E_NOT_FOUND',
  ESRCH: 'E_NOT_FOUND',
  EACCES: 'E_INPUT',
  EPERM: 'E_INPUT',
  EISDIR: 'E_INPUT',
  EINVAL: 'E_INPUT',
  EEXIST: 'E_INPUT',
  ENAMETOOLONG: 'E_INPUT',
  ELOOP: 'E_INPUT',
  EROFS: 'E_INPUT',
}

/** An ERROR frame as a BaleError whose one line is the guest's message. */
export function guestError(payload: Buffer, subject?: string): BaleError {
  let code = 'EIO'
  let message = 'unknown error'
  try {
    const e = parsePayload(errorSchema, payload, 'ERROR payload')
    code = e.code
    message = e.message
  } catch (err) {
    return err as BaleError
  }
  const err = new BaleError(GUEST_ERRNO[code] ?? 'E_VM', `guest: ${message}`, { subject })
  return Object.assign(err, { guestCode: code })
}
