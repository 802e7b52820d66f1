import { Transform, type TransformCallback } from 'node:stream'
import lz4 from 'lz4js'

/**
 * Streaming decoder for the LZ4 "legacy" frame format, the one the kernel build uses for
 * CONFIG_KERNEL_LZ4 (`lz4 -l`): a 4-byte magic, then blocks each prefixed by its compressed size
 * (u32 LE), every block decompressing independently to at most 8 MiB. lz4js decodes only the
 * modern frame format (magic 0x184D2204), so its raw block decoder is driven from here.
 * Memory stays at about one compressed plus one decompressed block whatever the payload size.
 */
export const LZ4_LEGACY_MAGIC = 0x184c2102
/** lz4 CLI's LEGACY_BLOCKSIZE: each legacy block holds at most 8 MiB of output. */
const LEGACY_BLOCK_SIZE = 8 << 20
/** LZ4_compressBound(8 MiB): the largest a legacy block can be compressed (incompressible data). */
const MAX_COMPRESSED_BLOCK = LEGACY_BLOCK_SIZE + Math.floor(LEGACY_BLOCK_SIZE / 255) + 16

export class Lz4LegacyDecoder extends Transform {
  private chunks: Buffer[] = []
  private buffered = 0
  private sawMagic = false
  /** Bytes the current block's compressed data needs; undefined while its size is unread. */
  private blockSize: number | undefined
  private readonly out = new Uint8Array(LEGACY_BLOCK_SIZE)

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.chunks.push(chunk)
    this.buffered += chunk.length
    try {
      this.drain(false)
      cb()
    } catch (e) {
      cb(e as Error)
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.drain(true)
      cb()
    } catch (e) {
      cb(e as Error)
    }
  }

  /** Remove and return the first n buffered bytes (n <= buffered), copying only when they span chunks. */
  private consume(n: number): Buffer {
    const first = this.chunks[0]!
    if (first.length >= n) {
      const head = first.subarray(0, n)
      if (first.length === n) this.chunks.shift()
      else this.chunks[0] = first.subarray(n)
      this.buffered -= n
      return head
    }
    const all = Buffer.concat(this.chunks, this.buffered)
    this.chunks = all.length > n ? [all.subarray(n)] : []
    this.buffered -= n
    return all.subarray(0, n)
  }

  private drain(final: boolean): void {
    for (;;) {
      if (!this.sawMagic) {
        if (this.buffered < 4) break
        const magic = this.consume(4).readUInt32LE(0)
        if (magic !== LZ4_LEGACY_MAGIC) throw new Error(`not an lz4 legacy stream (magic 0x${magic.toString(16)})`)
        this.sawMagic = true
        continue
      }
      if (this.blockSize === undefined) {
        if (this.buffered < 4) break
        const size = this.consume(4).readUInt32LE(0)
        // Concatenated legacy streams: a magic where a block size is expected starts the next one
        // (the kernel's own unlz4 accepts this too).
        if (size === LZ4_LEGACY_MAGIC) continue
        if (size === 0 || size > MAX_COMPRESSED_BLOCK) throw new Error(`lz4 legacy block of ${size} bytes is corrupt`)
        this.blockSize = size
      }
      // Wait for the whole block: concatenating once per block, not once per incoming chunk.
      if (this.buffered < this.blockSize) break
      const block = this.consume(this.blockSize)
      this.blockSize = undefined
      const n = lz4.decompressBlock(block, this.out, 0, block.length, 0)
      // lz4js does no bounds checks; output past the block limit means the input is corrupt.
      if (!Number.isInteger(n) || n <= 0 || n > LEGACY_BLOCK_SIZE) throw new Error('lz4 legacy block is corrupt')
      this.push(Buffer.from(this.out.subarray(0, n)))
    }
    if (final) {
      if (!this.sawMagic) throw new Error('lz4 legacy stream is empty')
      if (this.buffered !== 0 || this.blockSize !== undefined) {
        throw new Error(`lz4 legacy stream is truncated (${this.buffered} bytes of a ${this.blockSize ?? '?'}-byte block at the end)`)
      }
    }
  }
}
