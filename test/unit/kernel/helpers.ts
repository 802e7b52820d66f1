// Synthetic kernels for unit tests: tiny ELF64 files and bzImages built byte by byte, so every
// header field the kernel code reads is under the test's control.
import { execFileSync } from 'node:child_process'
import zlib from 'node:zlib'

export interface Note {
  name: string
  type: number
  desc: Buffer
}

function align4(n: number): number {
  return (n + 3) & ~3
}

export function noteBytes(notes: Note[]): Buffer {
  const parts: Buffer[] = []
  for (const n of notes) {
    const name = Buffer.from(`${n.name}\0`, 'latin1')
    const h = Buffer.alloc(12)
    h.writeUInt32LE(name.length, 0)
    h.writeUInt32LE(n.desc.length, 4)
    h.writeUInt32LE(n.type, 8)
    parts.push(h, name, Buffer.alloc(align4(name.length) - name.length), n.desc, Buffer.alloc(align4(n.desc.length) - n.desc.length))
  }
  return Buffer.concat(parts)
}

function elfHeader(type: number, phnum: number, shoff: number, shnum: number, shstrndx: number): Buffer {
  const h = Buffer.alloc(64)
  h.writeUInt32LE(0x464c457f, 0)
  h[4] = 2 // ELFCLASS64
  h[5] = 1 // little-endian
  h[6] = 1 // EV_CURRENT
  h.writeUInt16LE(type, 0x10)
  h.writeUInt16LE(62, 0x12) // EM_X86_64
  h.writeUInt32LE(1, 0x14)
  h.writeBigUInt64LE(phnum > 0 ? 64n : 0n, 0x20)
  h.writeBigUInt64LE(BigInt(shoff), 0x28)
  h.writeUInt16LE(64, 0x34)
  h.writeUInt16LE(56, 0x36)
  h.writeUInt16LE(phnum, 0x38)
  h.writeUInt16LE(64, 0x3a)
  h.writeUInt16LE(shnum, 0x3c)
  h.writeUInt16LE(shstrndx, 0x3e)
  return h
}

/** An ET_EXEC ELF whose only program header is a PT_NOTE, followed by `fill` bytes of body. */
export function makeVmlinux(opts: { pvhEntry?: number; extraNotes?: Note[]; fill?: Buffer } = {}): Buffer {
  const notes: Note[] = [...(opts.extraNotes ?? [])]
  if (opts.pvhEntry !== undefined) {
    const d = Buffer.alloc(8)
    d.writeUInt32LE(opts.pvhEntry, 0)
    notes.push({ name: 'Xen', type: 18, desc: d })
  }
  const area = noteBytes(notes)
  const ph = Buffer.alloc(56)
  ph.writeUInt32LE(4, 0) // PT_NOTE
  ph.writeBigUInt64LE(BigInt(64 + 56), 8)
  ph.writeBigUInt64LE(BigInt(area.length), 32)
  ph.writeBigUInt64LE(BigInt(area.length), 40)
  return Buffer.concat([elfHeader(2, 1, 0, 0, 0), ph, area, opts.fill ?? Buffer.alloc(0)])
}

/** An ET_REL ELF with a `.modinfo` section holding the given key=value strings. */
export function makeModule(modinfo: string[], extra: Buffer = Buffer.alloc(0)): Buffer {
  const info = Buffer.from(modinfo.map((s) => `${s}\0`).join(''), 'latin1')
  const shstr = Buffer.from('\0.modinfo\0.shstrtab\0.text\0', 'latin1')
  const text = extra
  const infoOff = 64
  const shstrOff = infoOff + info.length
  const textOff = shstrOff + shstr.length
  const sh = (name: number, type: number, off: number, size: number): Buffer => {
    const b = Buffer.alloc(64)
    b.writeUInt32LE(name, 0)
    b.writeUInt32LE(type, 4)
    b.writeBigUInt64LE(BigInt(off), 24)
    b.writeBigUInt64LE(BigInt(size), 32)
    return b
  }
  const body = Buffer.concat([info, shstr, text])
  const shoff = Math.ceil((64 + body.length) / 8) * 8 // section headers 8-byte aligned, as ld writes them
  const pad = Buffer.alloc(shoff - 64 - body.length)
  return Buffer.concat([
    elfHeader(1, 0, shoff, 4, 2),
    body,
    pad,
    sh(0, 0, 0, 0),
    sh(1, 1, infoOff, info.length), // .modinfo (SHT_PROGBITS)
    sh(10, 3, shstrOff, shstr.length), // .shstrtab (SHT_STRTAB)
    sh(20, 1, textOff, text.length), // .text
  ])
}

export type Compression = 'gzip' | 'lz4' | 'zstd' | 'xz' | 'bzip2'

/** Compress the way the kernel build does (scripts/Makefile.lib), using the real tools for lz4 and xz. */
export function compressPayload(data: Buffer, c: Compression): Buffer {
  switch (c) {
    case 'gzip':
      return zlib.gzipSync(data, { level: 9 })
    case 'lz4':
      return execFileSync('lz4', ['-l', '-9', '-c'], { input: data, maxBuffer: 1 << 30 })
    case 'zstd':
      return execFileSync('zstd', ['-19', '-c', '-q'], { input: data, maxBuffer: 1 << 30 })
    case 'xz':
      return execFileSync('xz', ['--check=crc32', '-c'], { input: data, maxBuffer: 1 << 30 })
    case 'bzip2':
      return Buffer.concat([Buffer.from('BZh9'), data.subarray(0, 16)])
  }
}

export interface BzOptions {
  protocol?: number
  setupSects?: number
  kernelVersion?: string
  /** Override the recorded uncompressed size (the trailer). */
  sizeTrailer?: number
  /** Override payload_length. */
  payloadLength?: number
}

/**
 * A bzImage as arch/x86/boot/tools/build.c lays it out: boot sector + setup sectors with the
 * setup header at 0x1f1, then the protected-mode code holding the payload at payload_offset.
 * For every compressor but gzip the build appends the uncompressed size (size_append).
 */
export function makeBzImage(vmlinux: Buffer, c: Compression, opts: BzOptions = {}): Buffer {
  const setupSects = opts.setupSects || 4 // 0 is stored as 0 but means 4
  const setup = Buffer.alloc((setupSects + 1) * 512)
  setup[0x1f1] = opts.setupSects === 0 ? 0 : setupSects
  setup.writeUInt32LE(0x53726448, 0x202) // "HdrS"
  setup.writeUInt16LE(opts.protocol ?? 0x20f, 0x206)
  if (opts.kernelVersion !== undefined) {
    const at = 0x400
    setup.write(`${opts.kernelVersion}\0`, at, 'latin1')
    setup.writeUInt16LE(at - 0x200, 0x20e)
  }
  let payload = compressPayload(vmlinux, c)
  if (c !== 'gzip') {
    const size = Buffer.alloc(4)
    size.writeUInt32LE(opts.sizeTrailer ?? vmlinux.length, 0)
    payload = Buffer.concat([payload, size])
  } else if (opts.sizeTrailer !== undefined) {
    payload.writeUInt32LE(opts.sizeTrailer, payload.length - 4)
  }
  const decompressorStub = Buffer.alloc(0x2cc, 0x90) // where the real decompressor code would be
  setup.writeUInt32LE(decompressorStub.length, 0x248) // payload_offset
  setup.writeUInt32LE(opts.payloadLength ?? payload.length, 0x24c) // payload_length
  return Buffer.concat([setup, decompressorStub, payload, Buffer.alloc(64, 0xcc)])
}

/** Deterministic, moderately compressible bytes (so lz4 output spans several legacy blocks). */
export function pseudoRandomBody(size: number, seed = 1): Buffer {
  const b = Buffer.alloc(size)
  let x = seed
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    b[i] = (x >>> 24) & 0x0f // 4 bits of entropy per byte: compresses, but not to nothing
  }
  return b
}
