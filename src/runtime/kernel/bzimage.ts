import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream, createWriteStream, promises as fs } from 'node:fs'
import { Duplex, Transform, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import zlib from 'node:zlib'
import { Decompress as ZstdDecompress } from 'fzstd'
import { BaleError, isBaleError } from '../../lib/errors.js'
import { isElf, readPvhEntry, XEN_ELFNOTE_PHYS32_ENTRY } from './elf.js'
import { Lz4LegacyDecoder } from './lz4-legacy.js'

/**
 * bzImage → vmlinux. QEMU's microvm boots a PVH ELF `vmlinux` directly (no firmware, no real-mode
 * setup code); Debian ships only the compressed bzImage, whose protected-mode part carries the
 * compressed ELF as its "payload". The x86 boot protocol (Documentation/x86/boot.rst) places the
 * setup header at 0x1f1 and, since protocol 2.08, says where that payload lies.
 */

export type PayloadCompression = 'gzip' | 'xz' | 'lz4' | 'zstd'

export interface BzImageHeader {
  /** Boot protocol version, e.g. 0x20f. */
  protocol: number
  /** 512-byte sectors of real-mode setup code after the boot sector. */
  setupSects: number
  /** Absolute file offset of the compressed payload. */
  payloadOffset: number
  payloadLength: number
  /** The `kernel_version` string, e.g. "6.1.0-56-cloud-amd64 (debian-kernel@…) #1 SMP … Debian 6.1.192-2 (…)". */
  kernelVersion?: string
}

const SETUP_SECTS_OFF = 0x1f1
const HEADER_MAGIC_OFF = 0x202
const HDRS = 0x53726448 // "HdrS" as a little-endian u32
const VERSION_OFF = 0x206
const KERNEL_VERSION_OFF = 0x20e
const PAYLOAD_OFFSET_OFF = 0x248
const PAYLOAD_LENGTH_OFF = 0x24c
/** payload_offset/payload_length exist from boot protocol 2.08 (Linux 2.6.26) on. */
const MIN_PROTOCOL = 0x208
/** The header fields used here all lie in the first KiB. */
const HEADER_READ = 1024
/** kernel_version is a short NUL-terminated string inside the setup code; read at most this much. */
const MAX_VERSION_STRING = 512

export function parseBzImageHeader(head: Buffer, what: string): BzImageHeader {
  if (head.length < PAYLOAD_LENGTH_OFF + 4 || head.readUInt32LE(HEADER_MAGIC_OFF) !== HDRS) {
    throw new BaleError('E_INPUT', `${what}: not a bzImage (no "HdrS" setup header at 0x202) and not an ELF vmlinux`, { subject: what })
  }
  const protocol = head.readUInt16LE(VERSION_OFF)
  if (protocol < MIN_PROTOCOL) {
    throw new BaleError('E_INPUT', `${what}: boot protocol ${formatProtocol(protocol)} is older than 2.08 and does not locate its payload`, { subject: what })
  }
  // A setup_sects of 0 means 4 (boot.rst: "for backwards compatibility").
  const setupSects = head[SETUP_SECTS_OFF] || 4
  // payload_offset counts from the start of the protected-mode code, which follows the boot
  // sector and the setup sectors.
  const protectedModeStart = (setupSects + 1) * 512
  return {
    protocol,
    setupSects,
    payloadOffset: protectedModeStart + head.readUInt32LE(PAYLOAD_OFFSET_OFF),
    payloadLength: head.readUInt32LE(PAYLOAD_LENGTH_OFF),
  }
}

function formatProtocol(v: number): string {
  return `${v >> 8}.${(v & 0xff).toString().padStart(2, '0')}`
}

/** The payload's first bytes name its compressor (the kernel's own decompress_method() table). */
export function detectCompression(magic: Buffer): PayloadCompression | string {
  const hex = magic.subarray(0, 6).toString('hex')
  if (hex.startsWith('1f8b')) return 'gzip'
  if (hex.startsWith('fd377a585a00')) return 'xz'
  if (hex.startsWith('02214c18')) return 'lz4'
  if (hex.startsWith('28b52ffd')) return 'zstd'
  if (hex.startsWith('425a68')) return 'bzip2'
  if (hex.startsWith('5d0000')) return 'lzma'
  if (hex.startsWith('894c5a4f')) return 'lzo'
  return `unknown (magic ${hex || 'none'})`
}

function isSupported(c: string): c is PayloadCompression {
  return c === 'gzip' || c === 'xz' || c === 'lz4' || c === 'zstd'
}

export interface VmlinuxResult {
  sha256: string
  size: number
  /** 'none' when the input already was an ELF vmlinux. */
  compression: PayloadCompression | 'none'
  kernelVersion?: string
  pvhEntry: number
}

/**
 * Write the ELF vmlinux held by `input` (a bzImage, or already a vmlinux) to `dest`, streaming:
 * memory stays at a block or two whatever the kernel's size. Fails with E_INPUT when the result
 * is not an ELF with a PVH entry note.
 */
export async function extractVmlinux(input: string, dest: string): Promise<VmlinuxResult> {
  const fh = await fs.open(input, 'r')
  let header: BzImageHeader | undefined
  let fileSize: number
  try {
    fileSize = (await fh.stat()).size
    const head = Buffer.alloc(Math.min(HEADER_READ, fileSize))
    await fh.read(head, 0, head.length, 0)
    if (!isElf(head)) {
      header = parseBzImageHeader(head, input)
      const kvOff = head.readUInt16LE(KERNEL_VERSION_OFF)
      if (kvOff !== 0) {
        const buf = Buffer.alloc(MAX_VERSION_STRING)
        const { bytesRead } = await fh.read(buf, 0, buf.length, 0x200 + kvOff)
        const s = buf.subarray(0, bytesRead)
        const end = s.indexOf(0)
        if (end > 0) header.kernelVersion = s.subarray(0, end).toString('latin1')
      }
    }
  } finally {
    await fh.close()
  }

  const hash = createHash('sha256')
  let size = 0
  const meter = new Transform({
    transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback) {
      hash.update(chunk)
      size += chunk.length
      cb(null, chunk)
    },
  })
  const out = createWriteStream(dest, { flags: 'wx', mode: 0o644 })

  let compression: PayloadCompression | 'none' = 'none'
  if (header === undefined) {
    await pipeline(createReadStream(input), meter, out)
  } else {
    const { payloadOffset, payloadLength } = header
    if (payloadLength < 8 || payloadOffset + payloadLength > fileSize) {
      throw new BaleError('E_INPUT', `${input}: bzImage payload (offset ${payloadOffset}, length ${payloadLength}) lies outside the ${fileSize}-byte file`, { subject: input })
    }
    const magic = Buffer.alloc(8)
    const fh2 = await fs.open(input, 'r')
    const trailer = Buffer.alloc(4)
    try {
      await fh2.read(magic, 0, magic.length, payloadOffset)
      // The build appends the uncompressed size as a u32 LE to every payload (size_append in
      // scripts/Makefile.lib; for gzip it is the member's own ISIZE field).
      await fh2.read(trailer, 0, 4, payloadOffset + payloadLength - 4)
    } finally {
      await fh2.close()
    }
    const c = detectCompression(magic)
    if (!isSupported(c)) {
      throw new BaleError('E_INPUT', `${input}: bzImage payload compressed with ${c}; bale reads gzip, xz, lz4 and zstd`, { subject: input })
    }
    compression = c
    const expected = trailer.readUInt32LE(0)
    // gzip's ISIZE is part of the member and zlib reads it; for the others the appended size is
    // not part of the compressed stream and must not reach the decoder.
    const end = payloadOffset + payloadLength - 1 - (c === 'gzip' ? 0 : 4)
    try {
      await pipeline(createReadStream(input, { start: payloadOffset, end }), decoder(c), meter, out)
    } catch (e) {
      if (isBaleError(e)) throw e
      throw new BaleError('E_INPUT', `${input}: cannot decompress the ${c} bzImage payload: ${(e as Error).message}`, { subject: input, cause: e })
    }
    // u32 arithmetic: the recorded size wraps at 4 GiB.
    if (size % 2 ** 32 !== expected) {
      throw new BaleError('E_INPUT', `${input}: ${c} payload decompressed to ${size} bytes, the bzImage says ${expected}`, { subject: input })
    }
  }

  const headOut = Buffer.alloc(4)
  const fo = await fs.open(dest, 'r')
  try {
    await fo.read(headOut, 0, 4, 0)
  } finally {
    await fo.close()
  }
  if (!isElf(headOut)) {
    throw new BaleError('E_INPUT', `${input}: the decompressed payload is not an ELF vmlinux`, { subject: input })
  }
  const pvh = await readPvhEntry(dest)
  if (pvh === undefined) {
    throw new BaleError(
      'E_INPUT',
      `${input}: vmlinux has no PVH entry note (Xen ELF note type ${XEN_ELFNOTE_PHYS32_ENTRY}, XEN_ELFNOTE_PHYS32_ENTRY): QEMU microvm cannot boot it; the kernel needs CONFIG_PVH=y`,
      { subject: input },
    )
  }
  return { sha256: hash.digest('hex'), size, compression, kernelVersion: header?.kernelVersion, pvhEntry: pvh.entry }
}

function decoder(c: PayloadCompression): Duplex {
  switch (c) {
    case 'gzip':
      return zlib.createGunzip()
    case 'lz4':
      return new Lz4LegacyDecoder()
    case 'zstd':
      return zstdDecoder()
    case 'xz':
      return new XzDecoder()
  }
}

/** fzstd's push-style decoder as a Transform. */
function zstdDecoder(): Transform {
  let dec: ZstdDecompress | undefined
  return new Transform({
    construct(cb) {
      dec = new ZstdDecompress((data) => {
        // fzstd may hand out views of its window buffer: copy before it is reused.
        this.push(Buffer.from(data))
      })
      cb()
    },
    transform(chunk: Buffer, _e, cb) {
      try {
        dec!.push(chunk)
        cb()
      } catch (e) {
        cb(e as Error)
      }
    },
    flush(cb) {
      try {
        dec!.push(new Uint8Array(0), true)
        cb()
      } catch (e) {
        cb(e as Error)
      }
    },
  })
}

/**
 * No maintained xz decoder is a dependency, and kernels compressed with xz are rare (Debian uses
 * lz4 on x86), so the xz-utils CLI does it: `xz -dc` between two pipes, with backpressure both
 * ways. The readable side ends only once xz has exited 0, so a failing xz fails the pipeline
 * instead of merely ending the output early.
 */
class XzDecoder extends Duplex {
  private readonly child = spawn('xz', ['-dc'], { stdio: ['pipe', 'pipe', 'pipe'] })

  constructor() {
    super()
    const { child } = this
    const err: Buffer[] = []
    child.stderr.on('data', (b: Buffer) => err.push(b))
    const exited = new Promise<void>((resolve, reject) => {
      child.on('error', (e: NodeJS.ErrnoException) =>
        reject(e.code === 'ENOENT' ? new BaleError('E_TOOL', 'xz: not found on PATH (install xz-utils)', { subject: 'xz' }) : e),
      )
      child.on('close', (code, sig) => {
        if (code === 0) resolve()
        else reject(new Error(`xz -dc ${sig ? `killed by ${sig}` : `exited ${code}`}: ${Buffer.concat(err).toString('utf8').trim()}`))
      })
    })
    child.stdout.on('data', (b: Buffer) => {
      if (!this.push(b)) child.stdout.pause()
    })
    child.stdin.on('error', () => undefined) // EPIPE when xz dies early: reported through its exit status
    exited.then(
      () => this.push(null),
      (e: Error) => this.destroy(e),
    )
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    if (this.child.stdin.write(chunk)) cb()
    else this.child.stdin.once('drain', () => cb())
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.child.stdin.end()
    cb()
  }

  override _read(): void {
    this.child.stdout.resume()
  }

  override _destroy(e: Error | null, cb: (e?: Error | null) => void): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL')
    cb(e)
  }
}
