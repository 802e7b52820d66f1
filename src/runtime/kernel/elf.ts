import { promises as fs } from 'node:fs'
import { BaleError } from '../../lib/errors.js'

/**
 * The few ELF facts bale needs, read by hand (ELF64 little-endian only: the x86-64 kernel and its
 * modules; nothing else is ever handed to these functions):
 *  - a vmlinux must carry the PVH entry note, or QEMU's microvm cannot boot it as an ELF;
 *  - a module's `.modinfo` section says its name, its `depends=` and the kernel it was built for.
 * Offsets are those of the System V gABI ELF64 header, program header and section header.
 */

const ELF_MAGIC = 0x464c457f // "\x7fELF" read as a little-endian u32
const ELFCLASS64 = 2
const ELFDATA2LSB = 1
const ELF64_EHDR_SIZE = 64
const ELF64_PHDR_SIZE = 56
const ELF64_SHDR_SIZE = 64
const PT_NOTE = 4
/** Xen's ELF note type for the 32-bit PVH entry point (xen/include/public/elfnote.h); QEMU looks for it. */
export const XEN_ELFNOTE_PHYS32_ENTRY = 18
/** A vmlinux's notes segment is a few hundred bytes; anything past this is not a kernel we can use. */
const MAX_NOTES_BYTES = 1 << 20

export function isElf(head: Uint8Array): boolean {
  return head.length >= 4 && Buffer.from(head.buffer, head.byteOffset, 4).readUInt32LE(0) === ELF_MAGIC
}

interface Elf64Header {
  phoff: number
  phnum: number
  shoff: number
  shnum: number
  shstrndx: number
}

function parseHeader(b: Buffer, what: string): Elf64Header {
  if (b.length < ELF64_EHDR_SIZE || b.readUInt32LE(0) !== ELF_MAGIC) {
    throw new BaleError('E_INPUT', `${what}: not an ELF file`, { subject: what })
  }
  if (b[4] !== ELFCLASS64 || b[5] !== ELFDATA2LSB) {
    throw new BaleError('E_INPUT', `${what}: not a 64-bit little-endian ELF (class ${b[4]}, data ${b[5]})`, { subject: what })
  }
  if (b.readUInt16LE(0x36) !== ELF64_PHDR_SIZE && b.readUInt16LE(0x38) !== 0) {
    throw new BaleError('E_INPUT', `${what}: unexpected ELF program header size ${b.readUInt16LE(0x36)}`, { subject: what })
  }
  return {
    phoff: safeNumber(b.readBigUInt64LE(0x20), what),
    phnum: b.readUInt16LE(0x38),
    shoff: safeNumber(b.readBigUInt64LE(0x28), what),
    shnum: b.readUInt16LE(0x3c),
    shstrndx: b.readUInt16LE(0x3e),
  }
}

function safeNumber(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new BaleError('E_INPUT', `${what}: ELF offset out of range`, { subject: what })
  return Number(v)
}

export interface ElfNote {
  name: string
  type: number
  desc: Buffer
}

/** Walk an ELF note area: namesz, descsz, type, then name and desc each padded to 4 bytes. */
export function parseNotes(area: Buffer): ElfNote[] {
  const notes: ElfNote[] = []
  let off = 0
  while (off + 12 <= area.length) {
    const namesz = area.readUInt32LE(off)
    const descsz = area.readUInt32LE(off + 4)
    const type = area.readUInt32LE(off + 8)
    const nameStart = off + 12
    const descStart = nameStart + align4(namesz)
    const end = descStart + align4(descsz)
    if (end > area.length) break
    const name = area.subarray(nameStart, nameStart + namesz).toString('latin1').replace(/\0+$/, '')
    notes.push({ name, type, desc: area.subarray(descStart, descStart + descsz) })
    off = end
  }
  return notes
}

function align4(n: number): number {
  return (n + 3) & ~3
}

export interface PvhInfo {
  /** The 32-bit physical entry point from XEN_ELFNOTE_PHYS32_ENTRY. */
  entry: number
}

/**
 * Read a vmlinux's PT_NOTE segments from disk (it is tens of MB: only the headers and notes are
 * read) and return its PVH entry, or undefined when it has none.
 */
export async function readPvhEntry(file: string): Promise<PvhInfo | undefined> {
  const fh = await fs.open(file, 'r')
  try {
    const head = Buffer.alloc(ELF64_EHDR_SIZE)
    await fh.read(head, 0, head.length, 0)
    const h = parseHeader(head, file)
    const phdrs = Buffer.alloc(h.phnum * ELF64_PHDR_SIZE)
    const { bytesRead } = await fh.read(phdrs, 0, phdrs.length, h.phoff)
    if (bytesRead !== phdrs.length) throw new BaleError('E_INPUT', `${file}: truncated ELF program headers`, { subject: file })
    for (let i = 0; i < h.phnum; i++) {
      const p = i * ELF64_PHDR_SIZE
      if (phdrs.readUInt32LE(p) !== PT_NOTE) continue
      const offset = safeNumber(phdrs.readBigUInt64LE(p + 8), file)
      const size = safeNumber(phdrs.readBigUInt64LE(p + 32), file)
      if (size > MAX_NOTES_BYTES) continue
      const area = Buffer.alloc(size)
      const r = await fh.read(area, 0, size, offset)
      for (const n of parseNotes(area.subarray(0, r.bytesRead))) {
        if (n.name === 'Xen' && n.type === XEN_ELFNOTE_PHYS32_ENTRY && n.desc.length >= 4) {
          return { entry: n.desc.readUInt32LE(0) }
        }
      }
    }
    return undefined
  } finally {
    await fh.close()
  }
}

/** The bytes of one named section of an in-memory ELF64 (a kernel module: a few hundred KB at most). */
export function readSection(elf: Buffer, name: string, what: string): Buffer | undefined {
  const h = parseHeader(elf, what)
  if (h.shnum === 0) return undefined
  const shdrEnd = h.shoff + h.shnum * ELF64_SHDR_SIZE
  if (shdrEnd > elf.length || h.shstrndx >= h.shnum) {
    throw new BaleError('E_INPUT', `${what}: truncated ELF section headers`, { subject: what })
  }
  const section = (i: number): { nameOff: number; offset: number; size: number } => {
    const s = h.shoff + i * ELF64_SHDR_SIZE
    return { nameOff: elf.readUInt32LE(s), offset: safeNumber(elf.readBigUInt64LE(s + 24), what), size: safeNumber(elf.readBigUInt64LE(s + 32), what) }
  }
  const strtab = section(h.shstrndx)
  if (strtab.offset + strtab.size > elf.length) throw new BaleError('E_INPUT', `${what}: truncated ELF string table`, { subject: what })
  const names = elf.subarray(strtab.offset, strtab.offset + strtab.size)
  for (let i = 0; i < h.shnum; i++) {
    const s = section(i)
    const end = names.indexOf(0, s.nameOff)
    if (end < 0 || names.subarray(s.nameOff, end).toString('latin1') !== name) continue
    if (s.offset + s.size > elf.length) throw new BaleError('E_INPUT', `${what}: section ${name} runs past the end of the file`, { subject: what })
    return elf.subarray(s.offset, s.offset + s.size)
  }
  return undefined
}
