import { decompress as nativeDecompress } from '@mongodb-js/zstd'
import { Decompress as StreamingDecompress } from 'fzstd'
import { BaleError } from '../../lib/errors.js'

/**
 * Reading a zstd stream frame by frame (RFC 8878), so that frames can be decompressed in
 * parallel by the native library, which only takes whole buffers.
 *
 * The splitter parses just enough of the format to find frame boundaries without decoding:
 * the frame header (descriptor → window/dictionary/content-size field sizes), then each block
 * header (3 bytes: last-block bit, type, size; an RLE block carries 1 byte whatever its size),
 * then the optional 4-byte checksum. Skippable frames (magic 0x184D2A5?) are skipped by their
 * length field. A frame whose output is known to be small enough is buffered whole and
 * decompressed natively; any other (a single-frame `zstd` file of a whole image, from another
 * tool) is decoded as it streams by fzstd.
 */

const ZSTD_MAGIC = 0xfd2fb528
const SKIPPABLE_MASK = 0xfffffff0
const SKIPPABLE_MAGIC = 0x184d2a50
/** A skippable frame's magic and payload size. */
export const SKIPPABLE_HEADER = 8
/** RFC 8878 §3.1.1.2: a block's content is at most 128 KiB; anything larger is corrupt. */
const MAX_BLOCK_SIZE = 128 * 1024

/**
 * Largest frame output decompressed natively (the whole frame in memory, input and output).
 * bale's own frames are 8 MiB (writer.ts); 64 MiB leaves room for other tools that cut bigger
 * frames (pzstd, seekable zstd) while keeping concurrency × 2 × 64 MiB bounded.
 */
export const MAX_NATIVE_FRAME_CONTENT = 64 * 1024 * 1024
/**
 * Streamed frames are fed to fzstd in slices: it decodes a pushed slice synchronously, and its
 * smallest block (RLE: 3-byte header + 1 byte) can expand to 128 KiB, so a 1 KiB slice bounds
 * the output made between two chances to apply backpressure to 1 KiB / 4 B × 128 KiB = 32 MiB.
 */
const STREAM_FEED_SLICE = 1024

export type FrameUnit =
  /**
   * A whole frame, to be decompressed in one call. `contentSize` as declared in its header, if
   * it declares one; `maxSize` bounds the output either way (see splitFrames).
   */
  | { kind: 'frame'; data: Buffer; contentSize?: number; maxSize: number; offset: number }
  /** A piece of a frame that is decoded as it streams; `first`/`last` delimit the frame. */
  | { kind: 'part'; data: Buffer; first: boolean; last: boolean; offset: number }

/** Pulls exact byte counts out of an async stream of chunks, counting what it consumed. */
class ByteReader {
  private chunks: Buffer[] = []
  private buffered = 0
  /** Bytes consumed so far: the offset of the next byte in the stream. */
  offset = 0
  private done = false

  constructor(private readonly it: AsyncIterator<Buffer>) {}

  /** true when at least `n` bytes are available, false when the stream ends first. */
  async fill(n: number): Promise<boolean> {
    while (this.buffered < n && !this.done) {
      const r = await this.it.next()
      if (r.done === true) this.done = true
      else if (r.value.length > 0) {
        this.chunks.push(r.value)
        this.buffered += r.value.length
      }
    }
    return this.buffered >= n
  }

  async atEnd(): Promise<boolean> {
    return !(await this.fill(1))
  }

  /** Exactly `n` bytes, or throws `truncated()` if the stream ends first. */
  async read(n: number, truncated: () => Error): Promise<Buffer> {
    if (!(await this.fill(n))) throw truncated()
    return this.take(n)
  }

  /** Consume `n` bytes without keeping them (for skippable frames of any size). */
  async discard(n: number, truncated: () => Error): Promise<void> {
    let left = n
    while (left > 0) {
      if (!(await this.fill(1))) throw truncated()
      const k = Math.min(left, this.buffered)
      this.take(k)
      left -= k
    }
  }

  private take(n: number): Buffer {
    // A last block of size 0 (zstd writes one when the content is a multiple of its 128 KiB
    // block size) asks for 0 bytes when nothing may be buffered: there is no chunk to look at.
    if (n === 0) return Buffer.alloc(0)
    this.offset += n
    this.buffered -= n
    const first = this.chunks[0] as Buffer
    if (first.length === n) {
      this.chunks.shift()
      return first
    }
    if (first.length > n) {
      this.chunks[0] = first.subarray(n)
      return first.subarray(0, n)
    }
    const out = Buffer.allocUnsafe(n)
    let filled = 0
    while (filled < n) {
      const c = this.chunks[0] as Buffer
      const k = Math.min(c.length, n - filled)
      c.copy(out, filled, 0, k)
      filled += k
      if (k === c.length) this.chunks.shift()
      else this.chunks[0] = c.subarray(k)
    }
    return out
  }
}

export interface SplitOptions {
  /** Names the stream in errors (a bundle path). */
  name: string
  /** See MAX_NATIVE_FRAME_CONTENT; lower in tests. */
  maxNativeContent?: number
}

/** A skippable frame of `bytes` in all (at least its header), its payload zeros: every zstd decoder passes over it. */
export function skippableFrame(bytes: number): Buffer {
  if (bytes < SKIPPABLE_HEADER) throw new Error(`a skippable frame takes at least ${SKIPPABLE_HEADER} bytes, not ${bytes}`)
  const frame = Buffer.alloc(bytes)
  frame.writeUInt32LE(SKIPPABLE_MAGIC, 0)
  frame.writeUInt32LE(bytes - SKIPPABLE_HEADER, 4)
  return frame
}

/** Split a zstd stream into frames (buffered) or frame parts (streamed); skippable frames vanish. */
export async function* splitFrames(source: AsyncIterable<Buffer>, opts: SplitOptions): AsyncGenerator<FrameUnit> {
  const maxNative = opts.maxNativeContent ?? MAX_NATIVE_FRAME_CONTENT
  const r = new ByteReader(source[Symbol.asyncIterator]())
  let frames = 0
  while (!(await r.atEnd())) {
    const start = r.offset
    const truncated = (): BaleError => new BaleError('E_INPUT', `${opts.name}: truncated zstd frame at offset ${start}`, { subject: opts.name })
    const magicBuf = await r.read(4, truncated)
    const magic = magicBuf.readUInt32LE(0)
    if ((magic & SKIPPABLE_MASK) >>> 0 === SKIPPABLE_MAGIC) {
      const len = (await r.read(4, truncated)).readUInt32LE(0)
      await r.discard(len, truncated)
      continue
    }
    if (magic !== ZSTD_MAGIC) {
      const what = frames === 0 ? 'not a zstd stream' : 'garbage after the last zstd frame'
      throw new BaleError('E_INPUT', `${opts.name}: ${what} (offset ${start})`, { subject: opts.name })
    }
    frames++
    const fhd = (await r.read(1, truncated))[0] as number
    const fcsFlag = fhd >> 6
    const singleSegment = (fhd >> 5) & 1
    const reserved = (fhd >> 3) & 1
    const checksum = (fhd >> 2) & 1
    const dictFlag = fhd & 3
    if (reserved) throw new BaleError('E_INPUT', `${opts.name}: corrupt zstd frame header at offset ${start}`, { subject: opts.name })
    const windowBytes = singleSegment ? 0 : 1
    const dictBytes = [0, 1, 2, 4][dictFlag] as number
    const fcsBytes = fcsFlag === 0 ? singleSegment : 1 << fcsFlag
    const rest = await r.read(windowBytes + dictBytes + fcsBytes, truncated)
    const contentSize = readContentSize(rest, windowBytes + dictBytes, fcsBytes)
    const header = Buffer.concat([magicBuf, Buffer.from([fhd]), rest])

    // Buffer the frame while its output is known to stay under the limit: its declared size, or
    // (no declared size, as @mongodb-js/zstd and piped `zstd` write) the sum of its blocks'
    // maximum outputs — raw and RLE blocks state theirs, a compressed block yields at most
    // 128 KiB (RFC 8878 §3.1.1.2.4). Past the limit, the frame is streamed instead.
    let buffering = contentSize === undefined || contentSize <= maxNative
    let maxSize = 0
    let pieces: Buffer[] = [header]
    let first = true
    const part = (data: Buffer, last: boolean): FrameUnit => {
      const u: FrameUnit = { kind: 'part', data, first, last, offset: start }
      first = false
      return u
    }
    if (!buffering) {
      yield part(header, false)
      pieces = []
    }
    for (;;) {
      const bh = await r.read(3, truncated)
      const v = bh[0]! | (bh[1]! << 8) | (bh[2]! << 16)
      const last = v & 1
      const type = (v >> 1) & 3
      const size = v >> 3
      if (type === 3 || size > MAX_BLOCK_SIZE) {
        throw new BaleError('E_INPUT', `${opts.name}: corrupt zstd block header at offset ${r.offset - 3}`, { subject: opts.name })
      }
      const body = await r.read(type === 1 ? 1 : size, truncated)
      const tail = last && checksum ? await r.read(4, truncated) : undefined
      maxSize += type === 2 ? MAX_BLOCK_SIZE : size
      if (buffering) {
        pieces.push(bh, body)
        if (tail) pieces.push(tail)
        if (contentSize === undefined && maxSize > maxNative) {
          buffering = false
          yield part(Buffer.concat(pieces), last === 1)
          pieces = []
        }
      } else {
        yield part(tail ? Buffer.concat([bh, body, tail]) : Buffer.concat([bh, body]), last === 1)
      }
      if (last) break
    }
    if (buffering) {
      yield { kind: 'frame', data: Buffer.concat(pieces), ...(contentSize === undefined ? {} : { contentSize }), maxSize: contentSize ?? maxSize, offset: start }
    }
  }
  if (frames === 0) throw new BaleError('E_INPUT', `${opts.name}: empty zstd stream`, { subject: opts.name })
}

function readContentSize(buf: Buffer, off: number, n: number): number | undefined {
  switch (n) {
    case 0:
      return undefined
    case 1:
      return buf[off]
    case 2:
      // RFC 8878 §3.1.1.1.4: the 2-byte field is offset by 256.
      return buf.readUInt16LE(off) + 256
    case 4:
      return buf.readUInt32LE(off)
    default: {
      const v = buf.readBigUInt64LE(off)
      return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v)
    }
  }
}

export interface DecompressOptions extends SplitOptions {
  /** Native decompressions in flight at once (each holds one frame in and one out). */
  concurrency: number
}

/**
 * The decompressed bytes of a zstd stream, in order. Whole frames are decompressed natively on
 * the libuv pool, up to `concurrency` at a time; streamed frames go through fzstd after the
 * frames queued before them. Memory: at most `concurrency` frames of each kind in flight.
 */
export async function* decompressFrames(source: AsyncIterable<Buffer>, opts: DecompressOptions): AsyncGenerator<Buffer> {
  const queue: Array<Promise<Buffer>> = []
  let streaming: { decoder: StreamingDecompress; out: Buffer[]; offset: number } | undefined
  try {
    for await (const unit of splitFrames(source, opts)) {
      if (unit.kind === 'frame') {
        const p = nativeDecompress(unit.data).then(
          (out) => {
            if (unit.contentSize !== undefined ? out.length !== unit.contentSize : out.length > unit.maxSize) {
              throw new BaleError('E_INPUT', `${opts.name}: zstd frame at offset ${unit.offset} holds ${out.length} bytes, more than its header and blocks allow`, { subject: opts.name })
            }
            return out
          },
          (e: unknown) => {
            throw new BaleError('E_INPUT', `${opts.name}: corrupt zstd frame at offset ${unit.offset}: ${e instanceof Error ? e.message : String(e)}`, { subject: opts.name, cause: e })
          },
        )
        // Observed now so that a failure while an earlier frame is awaited is not "unhandled".
        p.catch(() => undefined)
        queue.push(p)
        while (queue.length >= opts.concurrency) yield await (queue.shift() as Promise<Buffer>)
        continue
      }
      // A streamed frame: everything before it comes out first.
      while (queue.length > 0) yield await (queue.shift() as Promise<Buffer>)
      if (unit.first) {
        const out: Buffer[] = []
        streaming = { decoder: new StreamingDecompress((d) => out.push(Buffer.from(d.buffer, d.byteOffset, d.length))), out, offset: unit.offset }
      }
      const s = streaming as NonNullable<typeof streaming>
      for (let off = 0; off < unit.data.length; off += STREAM_FEED_SLICE) {
        const end = Math.min(off + STREAM_FEED_SLICE, unit.data.length)
        try {
          s.decoder.push(unit.data.subarray(off, end), unit.last && end === unit.data.length)
        } catch (e) {
          throw new BaleError('E_INPUT', `${opts.name}: corrupt zstd frame at offset ${s.offset}: ${e instanceof Error ? e.message : String(e)}`, { subject: opts.name, cause: e })
        }
        while (s.out.length > 0) {
          const chunk = s.out.shift() as Buffer
          if (chunk.length > 0) yield chunk
        }
      }
      if (unit.last) streaming = undefined
    }
    while (queue.length > 0) yield await (queue.shift() as Promise<Buffer>)
  } finally {
    queue.length = 0
  }
}
