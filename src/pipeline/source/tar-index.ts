import { promises as fs } from 'node:fs'
import path from 'node:path'
import { BaleError } from '../../lib/errors.js'

/**
 * Where each member of an uncompressed tar file lies, found by reading only the 512-byte
 * headers and seeking over the data: one pass, no extraction, no layer held in memory. The
 * members can then be opened with ranged reads (`createReadStream(file, { start, end })`).
 * Understands ustar, GNU long names ('L'/'K'), PAX extended headers ('x': path, linkpath,
 * size) and base-256 sizes, which is what `docker save` and every common tar writer produce.
 */
export interface TarMember {
  name: string
  /** Offset of the member's data in the file. */
  offset: number
  size: number
  type: 'file' | 'dir' | 'symlink' | 'link' | 'other'
  linkname?: string
}

const BLOCK = 512

export async function indexTar(file: string): Promise<Map<string, TarMember>> {
  const fh = await fs.open(file, 'r')
  try {
    const { size: fileSize } = await fh.stat()
    const members = new Map<string, TarMember>()
    const header = Buffer.alloc(BLOCK)
    let pos = 0
    let longName: string | undefined
    let longLink: string | undefined
    let pax: Record<string, string> = {}
    for (;;) {
      const { bytesRead } = await fh.read(header, 0, BLOCK, pos)
      if (bytesRead === 0 && members.size > 0) break // EOF without the end-of-archive blocks: tolerated, as tar does
      if (bytesRead < BLOCK) throw bad(file, `truncated tar header at offset ${pos}`)
      if (header.every((b) => b === 0)) break // end of archive
      if (!checksumOk(header)) throw bad(file, `not a tar archive (bad header checksum at offset ${pos})`)
      const typeflag = String.fromCharCode(header[156] ?? 0)
      const size = pax.size !== undefined ? Number(pax.size) : readNumber(header, 124, 12)
      if (!Number.isSafeInteger(size) || size < 0) throw bad(file, `bad member size at offset ${pos}`)
      const dataOffset = pos + BLOCK
      if (dataOffset + size > fileSize) throw bad(file, `truncated: member at offset ${pos} needs ${size} bytes, the file ends at ${fileSize}`)
      const next = dataOffset + Math.ceil(size / BLOCK) * BLOCK

      if (typeflag === 'x' || typeflag === 'L' || typeflag === 'K') {
        // Metadata for the next header: small, so read it whole (capped).
        if (size > 1024 * 1024) throw bad(file, `extended header of ${size} bytes at offset ${pos}`)
        const data = Buffer.alloc(size)
        await fh.read(data, 0, size, dataOffset)
        if (typeflag === 'x') pax = parsePax(data, file)
        else if (typeflag === 'L') longName = cString(data)
        else longLink = cString(data)
        pos = next
        continue
      }
      if (typeflag === 'g') {
        pos = next
        continue
      }
      const name = normalize(pax.path ?? longName ?? ustarName(header))
      const linkname = pax.linkpath ?? longLink ?? cString(header.subarray(157, 257))
      const type = typeflag === '0' || typeflag === '\0' || typeflag === '7' ? 'file' : typeflag === '5' ? 'dir' : typeflag === '2' ? 'symlink' : typeflag === '1' ? 'link' : 'other'
      members.set(name, { name, offset: dataOffset, size: type === 'file' ? size : 0, type, ...(linkname ? { linkname } : {}) })
      pax = {}
      longName = undefined
      longLink = undefined
      pos = next
    }
    return members
  } finally {
    await fh.close()
  }
}

/**
 * Follow symlinks and hard links to the regular file a name stands for (legacy `docker save`
 * writes a repeated layer as a symlink `<id>/layer.tar -> ../<other>/layer.tar`). Links are
 * resolved inside the archive only; more than 8 hops is a loop.
 */
export function resolveMember(members: Map<string, TarMember>, name: string): TarMember | undefined {
  let m = members.get(normalize(name))
  for (let hops = 0; m !== undefined && hops < 8; hops++) {
    if (m.type === 'file') return m
    if (m.type === 'symlink' && m.linkname !== undefined) {
      m = members.get(normalize(path.posix.join(path.posix.dirname(m.name), m.linkname)))
    } else if (m.type === 'link' && m.linkname !== undefined) {
      m = members.get(normalize(m.linkname))
    } else {
      return undefined
    }
  }
  return undefined
}

/** Member names as paths relative to the archive root: no './', no leading or trailing '/'. */
export function normalize(name: string): string {
  return path.posix
    .normalize(`/${name}`)
    .replace(/^\/+/, '')
    .replace(/\/+$/, '')
}

function bad(file: string, what: string): BaleError {
  return new BaleError('E_INPUT', `${file}: ${what}`, { subject: file })
}

function checksumOk(h: Buffer): boolean {
  const stored = readNumber(h, 148, 8)
  let sum = 0
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (h[i] ?? 0)
  return sum === stored
}

/** Octal, NUL/space terminated; or GNU base-256 when the high bit of the first byte is set. */
function readNumber(h: Buffer, off: number, len: number): number {
  const first = h[off] ?? 0
  if (first & 0x80) {
    let v = first & 0x7f
    for (let i = 1; i < len; i++) v = v * 256 + (h[off + i] ?? 0)
    return v
  }
  const s = h.toString('latin1', off, off + len).replace(/[\0 ].*$/s, '').trim()
  return s === '' ? 0 : parseInt(s, 8)
}

function cString(b: Buffer): string {
  const nul = b.indexOf(0)
  return b.toString('utf8', 0, nul < 0 ? b.length : nul)
}

function ustarName(h: Buffer): string {
  const name = cString(h.subarray(0, 100))
  const isUstar = h.toString('latin1', 257, 262) === 'ustar'
  const prefix = isUstar ? cString(h.subarray(345, 500)) : ''
  return prefix ? `${prefix}/${name}` : name
}

/** PAX records: "<len> <key>=<value>\n", len counting the whole record. */
function parsePax(data: Buffer, file: string): Record<string, string> {
  const out: Record<string, string> = {}
  let i = 0
  while (i < data.length) {
    const sp = data.indexOf(0x20, i)
    if (sp < 0) break
    const len = parseInt(data.toString('latin1', i, sp), 10)
    if (!Number.isSafeInteger(len) || len <= 0 || i + len > data.length) throw bad(file, 'malformed PAX header')
    const rec = data.toString('utf8', sp + 1, i + len - 1)
    const eq = rec.indexOf('=')
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1)
    i += len
  }
  return out
}
