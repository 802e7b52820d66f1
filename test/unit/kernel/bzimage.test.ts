import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { PassThrough } from 'node:stream'
import { afterAll, describe, expect, it } from 'vitest'
import { detectCompression, extractVmlinux, parseBzImageHeader } from '../../../src/runtime/kernel/bzimage.js'
import { parseNotes, readPvhEntry } from '../../../src/runtime/kernel/elf.js'
import { Lz4LegacyDecoder } from '../../../src/runtime/kernel/lz4-legacy.js'
import { compressPayload, makeBzImage, makeVmlinux, noteBytes, pseudoRandomBody, type Compression } from './helpers.js'

const tmp = mkdtempSync(path.join(os.tmpdir(), 'bale-bz-'))
afterAll(() => rmSync(tmp, { recursive: true, force: true }))
let n = 0
function file(data: Buffer): string {
  const p = path.join(tmp, `in-${n++}`)
  writeFileSync(p, data)
  return p
}
function out(): string {
  return path.join(tmp, `out-${n++}`)
}

const VERSION = '6.1.0-99-test-amd64 (nobody@example) #1 SMP Debian 6.1.0-99 (2026-01-01)'

describe('bzImage setup header', () => {
  it('locates the payload after the setup sectors and reads kernel_version', () => {
    const vm = makeVmlinux({ pvhEntry: 0x1000850 })
    const bz = makeBzImage(vm, 'gzip', { setupSects: 6 })
    const h = parseBzImageHeader(bz.subarray(0, 1024), 'bz')
    expect(h.setupSects).toBe(6)
    expect(h.protocol).toBe(0x20f)
    expect(h.payloadOffset).toBe(7 * 512 + 0x2cc)
    expect(bz.subarray(h.payloadOffset, h.payloadOffset + 2).toString('hex')).toBe('1f8b')
  })

  it('setup_sects 0 means 4 (boot protocol backwards compatibility)', () => {
    const bz = makeBzImage(makeVmlinux({ pvhEntry: 1 }), 'gzip', { setupSects: 0 })
    expect(parseBzImageHeader(bz.subarray(0, 1024), 'bz').payloadOffset).toBe(5 * 512 + 0x2cc)
  })

  it('refuses a file without HdrS and a protocol older than 2.08', () => {
    expect(() => parseBzImageHeader(Buffer.alloc(1024), 'x.img')).toThrow(/x\.img: not a bzImage/)
    const old = makeBzImage(makeVmlinux({ pvhEntry: 1 }), 'gzip', { protocol: 0x207 })
    expect(() => parseBzImageHeader(old.subarray(0, 1024), 'old')).toThrow(/boot protocol 2\.07 is older than 2\.08/)
  })

  it('names each compressor from its magic', () => {
    expect(detectCompression(Buffer.from('1f8b0800', 'hex'))).toBe('gzip')
    expect(detectCompression(Buffer.from('02214c18', 'hex'))).toBe('lz4')
    expect(detectCompression(Buffer.from('28b52ffd', 'hex'))).toBe('zstd')
    expect(detectCompression(Buffer.from('fd377a585a00', 'hex'))).toBe('xz')
    expect(detectCompression(Buffer.from('425a6839', 'hex'))).toBe('bzip2')
    expect(detectCompression(Buffer.from('00000000', 'hex'))).toMatch(/^unknown \(magic 00000000\)/)
  })
})

describe('extractVmlinux', () => {
  // 9 MiB of body: more than one 8 MiB lz4 legacy block, so block boundaries are crossed.
  const vm = makeVmlinux({ pvhEntry: 0x1000850, fill: pseudoRandomBody(9 << 20) })

  it.each(['lz4', 'gzip', 'zstd', 'xz'] as Compression[])('decompresses a %s payload to the exact ELF, with its PVH entry', async (c) => {
    const dest = out()
    const res = await extractVmlinux(file(makeBzImage(vm, c, { kernelVersion: VERSION })), dest)
    expect(res.compression).toBe(c)
    expect(res.size).toBe(vm.length)
    expect(readFileSync(dest).equals(vm)).toBe(true)
    expect(res.pvhEntry).toBe(0x1000850)
    expect(res.kernelVersion).toBe(VERSION)
  })

  it('copies an input that already is an ELF vmlinux', async () => {
    const small = makeVmlinux({ pvhEntry: 0x2000 })
    const dest = out()
    const res = await extractVmlinux(file(small), dest)
    expect(res.compression).toBe('none')
    expect(readFileSync(dest).equals(small)).toBe(true)
    expect(res.kernelVersion).toBeUndefined()
  })

  it('says clearly when the vmlinux has no PVH note', async () => {
    const other = makeVmlinux({ extraNotes: [{ name: 'Xen', type: 6, desc: Buffer.from('linux\0') }, { name: 'GNU', type: 18, desc: Buffer.alloc(8) }] })
    await expect(extractVmlinux(file(makeBzImage(other, 'gzip')), out())).rejects.toThrow(/no PVH entry note .*XEN_ELFNOTE_PHYS32_ENTRY.*CONFIG_PVH=y/)
  })

  it('refuses an unsupported compressor by name', async () => {
    await expect(extractVmlinux(file(makeBzImage(vm.subarray(0, 4096), 'bzip2')), out())).rejects.toThrow(/compressed with bzip2; bale reads gzip, xz, lz4 and zstd/)
  })

  it('refuses a payload that is not an ELF once decompressed', async () => {
    await expect(extractVmlinux(file(makeBzImage(Buffer.from('just text, no ELF here'), 'gzip')), out())).rejects.toThrow(/not an ELF vmlinux/)
  })

  it('refuses a payload that lies outside the file', async () => {
    const bz = makeBzImage(makeVmlinux({ pvhEntry: 1 }), 'lz4', { payloadLength: 1 << 30 })
    await expect(extractVmlinux(file(bz), out())).rejects.toThrow(/payload \(offset \d+, length 1073741824\) lies outside/)
  })

  it('refuses a corrupt payload with the decompressor named', async () => {
    const bz = makeBzImage(makeVmlinux({ pvhEntry: 1, fill: pseudoRandomBody(4096) }), 'zstd')
    const h = parseBzImageHeader(bz.subarray(0, 1024), 'bz')
    bz.fill(0x41, h.payloadOffset + 20, h.payloadOffset + 60)
    await expect(extractVmlinux(file(bz), out())).rejects.toThrow(/cannot decompress the zstd bzImage payload|zstd payload decompressed to/)
  })

  it('refuses a corrupt xz payload (xz exits non-zero: the failure is not lost)', async () => {
    const bz = makeBzImage(makeVmlinux({ pvhEntry: 1, fill: pseudoRandomBody(65536) }), 'xz')
    const h = parseBzImageHeader(bz.subarray(0, 1024), 'bz')
    bz.fill(0x41, h.payloadOffset + 200, h.payloadOffset + 260)
    await expect(extractVmlinux(file(bz), out())).rejects.toThrow(/cannot decompress the xz bzImage payload: xz -dc exited/)
  })

  // Trap: the build appends the uncompressed size to every payload but gzip's; feeding it to the
  // decoder corrupts the stream, and ignoring it misses a truncated kernel.
  it('size-trailer-not-in-stream: checks the appended size and keeps it away from the decoder', async () => {
    const small = makeVmlinux({ pvhEntry: 1, fill: pseudoRandomBody(100_000) })
    for (const c of ['lz4', 'zstd', 'xz'] as Compression[]) {
      await expect(extractVmlinux(file(makeBzImage(small, c, { sizeTrailer: small.length + 1 })), out())).rejects.toThrow(
        new RegExp(`${c} payload decompressed to ${small.length} bytes, the bzImage says ${small.length + 1}`),
      )
    }
    // For gzip the "trailer" is the member's own ISIZE, which zlib itself checks.
    await expect(extractVmlinux(file(makeBzImage(small, 'gzip', { sizeTrailer: small.length + 1 })), out())).rejects.toThrow(
      /cannot decompress the gzip bzImage payload: incorrect length check/,
    )
  })
})

describe('lz4 legacy decoder', () => {
  async function decode(chunks: Buffer[]): Promise<Buffer> {
    const dec = new Lz4LegacyDecoder()
    const src = new PassThrough()
    const parts: Buffer[] = []
    dec.on('data', (b: Buffer) => parts.push(b))
    const done = new Promise<void>((resolve, reject) => {
      dec.on('end', resolve)
      dec.on('error', reject)
    })
    src.pipe(dec)
    for (const c of chunks) src.write(c)
    src.end()
    await done
    return Buffer.concat(parts)
  }

  // Trap: lz4js's decompress() reads only the modern frame format (magic 0x184D2204).
  it('lz4-legacy-not-frame-format: reads `lz4 -l` output fed one byte at a time', async () => {
    const data = pseudoRandomBody(70_000, 7)
    const z = compressPayload(data, 'lz4')
    expect(z.subarray(0, 4).toString('hex')).toBe('02214c18')
    const bytes = [...z].map((b) => Buffer.from([b]))
    expect((await decode(bytes)).equals(data)).toBe(true)
  })

  it('reads concatenated legacy streams (a magic where a block size is expected)', async () => {
    const a = pseudoRandomBody(5000, 2)
    const b = pseudoRandomBody(6000, 3)
    expect((await decode([compressPayload(a, 'lz4'), compressPayload(b, 'lz4')])).equals(Buffer.concat([a, b]))).toBe(true)
  })

  it('refuses the modern frame format, a truncated stream and an absurd block size', async () => {
    await expect(decode([Buffer.from('04224d18', 'hex'), Buffer.alloc(8)])).rejects.toThrow(/not an lz4 legacy stream/)
    const z = compressPayload(pseudoRandomBody(5000), 'lz4')
    await expect(decode([z.subarray(0, z.length - 10)])).rejects.toThrow(/truncated/)
    const bad = Buffer.from('02214c18ffffff7f', 'hex')
    await expect(decode([bad])).rejects.toThrow(/block of 2147483647 bytes is corrupt/)
  })
})

describe('ELF notes', () => {
  it('walks notes with 4-byte padding of name and desc', () => {
    const area = noteBytes([
      { name: 'Xen', type: 6, desc: Buffer.from('linux\0') },
      { name: 'GNU', type: 3, desc: Buffer.from([1, 2, 3]) },
      { name: 'Xen', type: 18, desc: Buffer.from('50080001', 'hex') },
    ])
    expect(parseNotes(area).map((x) => [x.name, x.type, x.desc.toString('hex')])).toEqual([
      ['Xen', 6, Buffer.from('linux\0').toString('hex')],
      ['GNU', 3, '010203'],
      ['Xen', 18, '50080001'],
    ])
  })

  it('reads the PVH entry from a file, and undefined without one', async () => {
    expect(await readPvhEntry(file(makeVmlinux({ pvhEntry: 0x1000850 })))).toEqual({ entry: 0x1000850 })
    expect(await readPvhEntry(file(makeVmlinux()))).toBeUndefined()
  })
})
