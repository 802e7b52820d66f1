import { BaleError } from '../../lib/errors.js'
import { decodeUtf8, showPath } from './names.js'

/**
 * A streaming tar reader that keeps every name and PAX value as raw bytes.
 *
 * Why not tar-stream's extract (3.2.2): it decodes PAX records as UTF-8 strings, which turns a
 * name that is not valid UTF-8 into U+FFFD (so it can no longer be rejected by name) and corrupts
 * binary xattr values such as `security.capability`; and it merges PAX global headers into
 * every later entry's extended header, while bale ignores global headers. Reading tar is small
 * enough to own: 512-byte headers, PAX 'x' records, GNU 'L'/'K' long names, and content.
 *
 * Framing follows Go's archive/tar, the reader behind Docker and containerd: header-only types
 * (hard link, symlink, devices, directory, fifo) carry no data whatever their size field says,
 * so this reader splits an archive into the same members the container runtimes do.
 */

const BLOCK = 512
/**
 * Upper bound for a PAX extended header or GNU long name. An entry's PAX header holds its path
 * (≤ 4 KiB), link path and xattrs (Linux caps one value at 64 KiB, XATTR_SIZE_MAX, and the name
 * list at 64 KiB), so 1 MiB is far above any real header and keeps a hostile size from
 * allocating unbounded memory.
 */
const MAX_META_BYTES = 1024 * 1024

export interface TarHeader {
  /** Byte offset of this member's header in the archive, for messages. */
  offset: number
  /** The typeflag character; NUL (old V7 regular file) is reported as '0'. */
  typeflag: string
  /** Raw name bytes: PAX `path`, else a GNU long name, else the ustar prefix + name. */
  name: Buffer
  /** Raw link name bytes: PAX `linkpath`, else a GNU long link name, else the header field. */
  linkname: Buffer
  /** The mode field as written (may include file-type bits). */
  mode: number
  uid: number
  gid: number
  /** Content size in bytes (PAX `size` wins); 0 for header-only types. */
  size: number
  /** Integer seconds (PAX `mtime` wins, its fraction dropped). */
  mtime: number
  devmajor: number
  devminor: number
  /** This member's own PAX records (global headers are ignored), values as raw bytes. */
  pax: Map<string, Buffer>
}

export type EntryHandler = (header: TarHeader, body: AsyncIterable<Buffer>) => Promise<void>

/** Member types whose size field does not announce data (Go's isHeaderOnlyType). */
const HEADER_ONLY = new Set(['1', '2', '3', '4', '5', '6'])

function inputError(label: string, msg: string): BaleError {
  return new BaleError('E_INPUT', `${label}: ${msg}`, { subject: label })
}

/** Buffers chunks from the source and hands out exact byte counts. */
class ByteSource {
  private chunks: Buffer[] = []
  private buffered = 0
  private ended = false
  /** Bytes handed out so far. */
  offset = 0

  constructor(private readonly it: AsyncIterator<unknown>) {}

  private async pull(): Promise<boolean> {
    if (this.ended) return false
    const r = await this.it.next()
    if (r.done === true) {
      this.ended = true
      return false
    }
    const v: unknown = r.value
    const b = Buffer.isBuffer(v) ? v : v instanceof Uint8Array ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : undefined
    if (b === undefined) throw new TypeError('tar source must yield bytes')
    if (b.length > 0) {
      this.chunks.push(b)
      this.buffered += b.length
    }
    return true
  }

  private take(n: number): Buffer {
    const parts: Buffer[] = []
    let need = n
    while (need > 0) {
      const c = this.chunks[0] as Buffer
      if (c.length <= need) {
        parts.push(c)
        this.chunks.shift()
        need -= c.length
      } else {
        parts.push(c.subarray(0, need))
        this.chunks[0] = c.subarray(need)
        need = 0
      }
    }
    this.buffered -= n
    this.offset += n
    return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, n)
  }

  /** Exactly n bytes, or fewer only when the input ends first. */
  async read(n: number): Promise<Buffer> {
    while (this.buffered < n && (await this.pull()));
    return this.take(Math.min(n, this.buffered))
  }

  /** Between 1 and max bytes without copying, or an empty buffer at the end of input. */
  async readSome(max: number): Promise<Buffer> {
    while (this.buffered === 0 && (await this.pull()));
    if (this.buffered === 0) return Buffer.alloc(0)
    return this.take(Math.min(max, (this.chunks[0] as Buffer).length))
  }

  /** Discard n bytes; false if the input ended first. */
  async discard(n: number): Promise<boolean> {
    let left = n
    while (left > 0) {
      const b = await this.readSome(left)
      if (b.length === 0) return false
      left -= b.length
    }
    return true
  }

  /** Read to the end, so that an error the source reports only at its very end still surfaces. */
  async drain(): Promise<void> {
    while (await this.pull()) {
      this.offset += this.buffered
      this.chunks = []
      this.buffered = 0
    }
  }
}

function isZeroBlock(b: Buffer): boolean {
  for (const x of b) if (x !== 0) return false
  return true
}

/** Bytes of a fixed field up to its first NUL. */
function cstring(b: Buffer, start: number, len: number): Buffer {
  const field = b.subarray(start, start + len)
  const nul = field.indexOf(0)
  return Buffer.from(nul < 0 ? field : field.subarray(0, nul))
}

/**
 * A numeric field: octal digits padded with spaces or NULs, or GNU base-256 (first byte 0x80 for
 * positive, 0xff for negative, then a big-endian two's-complement number).
 */
function parseNumber(b: Buffer, start: number, len: number): number | undefined {
  const f = b.subarray(start, start + len)
  const first = f[0] as number
  if (first === 0x80 || first === 0xff) {
    let v = 0n
    for (let i = 1; i < f.length; i++) v = (v << 8n) | BigInt(f[i] as number)
    if (first === 0xff) v -= 1n << BigInt(8 * (f.length - 1))
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) return undefined
    return Number(v)
  }
  const text = f.toString('latin1').replace(/^[ \0]+/, '').replace(/[ \0]+$/, '')
  if (text === '') return 0
  if (!/^[0-7]+$/.test(text)) return undefined
  return parseInt(text, 8)
}

function checksumOk(b: Buffer): boolean {
  const stored = parseNumber(b, 148, 8)
  if (stored === undefined) return false
  // The checksum field itself counts as eight spaces. Some old tars summed signed chars, so
  // accept either sum, as GNU tar and Go do.
  let unsigned = 8 * 0x20
  let signed = 8 * 0x20
  for (let i = 0; i < BLOCK; i++) {
    if (i >= 148 && i < 156) continue
    const x = b[i] as number
    unsigned += x
    signed += x > 127 ? x - 256 : x
  }
  return stored === unsigned || stored === signed
}

/** PAX extended header records: "<len> <key>=<value>\n", values kept as raw bytes. */
export function parsePaxRecords(data: Buffer): Map<string, Buffer> | string {
  const out = new Map<string, Buffer>()
  let pos = 0
  while (pos < data.length) {
    const sp = data.indexOf(0x20, pos)
    if (sp < 0) return 'PAX record without a length'
    const lenText = data.toString('latin1', pos, sp)
    if (!/^[0-9]{1,7}$/.test(lenText)) return `PAX record length ${JSON.stringify(lenText)} is not a number`
    const len = parseInt(lenText, 10)
    const end = pos + len
    if (end > data.length || end <= sp + 1) return 'PAX record length is out of range'
    if (data[end - 1] !== 0x0a) return 'PAX record does not end with a newline'
    const rec = data.subarray(sp + 1, end - 1)
    const eq = rec.indexOf(0x3d)
    if (eq <= 0) return 'PAX record without a key'
    const key = decodeUtf8(rec.subarray(0, eq))
    if (key === undefined) return `PAX record key ${showPath(rec.subarray(0, eq))} is not valid UTF-8`
    // Copy: the record may sit in a large source chunk that must not stay alive with the tree.
    out.set(key, Buffer.from(rec.subarray(eq + 1)))
    pos = end
  }
  return out
}

function paxNumber(pax: Map<string, Buffer>, key: string, pattern: RegExp): number | undefined | null {
  const v = pax.get(key)
  // An empty value means "unset": the header field applies.
  if (v === undefined || v.length === 0) return undefined
  const text = v.toString('latin1')
  if (!pattern.test(text)) return null
  const n = Math.floor(Number(text))
  return Number.isSafeInteger(n) ? n : null
}

function padding(n: number): number {
  const r = n % BLOCK
  return r === 0 ? 0 : BLOCK - r
}

/**
 * Read a tar stream member by member. `onEntry` receives each real member (extended headers are
 * folded in) and may consume its body; whatever it leaves is skipped. Resolves once the whole
 * source has been read (after the end-of-archive marker the rest is drained and ignored).
 * Malformed archives reject with E_INPUT. Returns the number of members.
 */
export async function readTar(source: AsyncIterable<unknown>, label: string, onEntry: EntryHandler): Promise<number> {
  const src = new ByteSource(source[Symbol.asyncIterator]())
  let pax: Map<string, Buffer> | undefined
  let longName: Buffer | undefined
  let longLink: Buffer | undefined
  let members = 0

  const truncated = (): BaleError => inputError(label, `truncated tar archive at byte ${src.offset}`)

  async function readMeta(size: number, at: number, what: string): Promise<Buffer> {
    if (size > MAX_META_BYTES) throw inputError(label, `${what} at byte ${at} is ${size} bytes (limit ${MAX_META_BYTES})`)
    const data = await src.read(size)
    if (data.length < size || !(await src.discard(padding(size)))) throw truncated()
    return data
  }

  for (;;) {
    const at = src.offset
    const block = await src.read(BLOCK)
    if (block.length === 0) {
      throw inputError(label, at === 0 ? 'empty input, not a tar archive' : `truncated tar archive: no end-of-archive marker after byte ${at}`)
    }
    if (block.length < BLOCK) throw truncated()
    if (isZeroBlock(block)) {
      // End of archive: two zero blocks, though a lone one at the very end is accepted as GNU tar
      // does. A zero block followed by a header is refused (as Go does) rather than silently
      // dropping the members after it.
      const next = await src.read(BLOCK)
      if (next.length > 0 && !isZeroBlock(next)) throw inputError(label, `tar header after the end-of-archive marker at byte ${at}`)
      if (pax !== undefined || longName !== undefined || longLink !== undefined) {
        throw inputError(label, `extended header without a member before byte ${at}`)
      }
      await src.drain()
      return members
    }
    if (!checksumOk(block)) throw inputError(label, `invalid tar header at byte ${at} (checksum mismatch): corrupt, or not a tar archive`)

    const typeflag = block[156] === 0 ? '0' : String.fromCharCode(block[156] as number)
    const size = parseNumber(block, 124, 12)
    if (size === undefined || size < 0) throw inputError(label, `invalid size field in the tar header at byte ${at}`)

    switch (typeflag) {
      case 'x': {
        const parsed = parsePaxRecords(await readMeta(size, at, 'PAX header'))
        if (typeof parsed === 'string') throw inputError(label, `${parsed} (PAX header at byte ${at})`)
        pax = new Map([...(pax ?? []), ...parsed])
        continue
      }
      case 'g':
        // PAX global headers are ignored (git archive puts a commit id there; nothing bale uses).
        await readMeta(size, at, 'PAX global header')
        continue
      case 'L':
        longName = cstring(await readMeta(size, at, 'GNU long name'), 0, size)
        continue
      case 'K':
        longLink = cstring(await readMeta(size, at, 'GNU long link name'), 0, size)
        continue
      case 'V':
        // GNU volume label: describes the archive, not a file.
        if (!(await src.discard(size + padding(size)))) throw truncated()
        continue
    }

    const magic = block.toString('latin1', 257, 263)
    const ustar = magic === 'ustar\0'
    let name = cstring(block, 0, 100)
    if (ustar) {
      // star archives (trailer 'tar\0') keep atime/ctime after a 131-byte prefix.
      const star = block.toString('latin1', 508, 512) === 'tar\0'
      const prefix = cstring(block, 345, star ? 131 : 155)
      if (prefix.length > 0) name = Buffer.concat([prefix, Buffer.from('/'), name])
    }
    const ext = pax ?? new Map<string, Buffer>()
    const paxPath = ext.get('path')
    const paxLink = ext.get('linkpath')
    if (paxPath !== undefined && paxPath.length > 0) name = paxPath
    else if (longName !== undefined) name = longName
    let linkname = cstring(block, 157, 100)
    if (paxLink !== undefined && paxLink.length > 0) linkname = paxLink
    else if (longLink !== undefined) linkname = longLink
    pax = longName = longLink = undefined

    // A PAX record, when present and not empty, overrides the header field (null: malformed).
    const either = (fromPax: number | undefined | null, fromHeader: number | undefined): number | undefined | null =>
      fromPax === undefined ? fromHeader : fromPax
    const fields = {
      mode: parseNumber(block, 100, 8),
      uid: either(paxNumber(ext, 'uid', /^[0-9]+$/), parseNumber(block, 108, 8)),
      gid: either(paxNumber(ext, 'gid', /^[0-9]+$/), parseNumber(block, 116, 8)),
      size: either(paxNumber(ext, 'size', /^[0-9]+$/), size),
      mtime: either(paxNumber(ext, 'mtime', /^-?[0-9]+(\.[0-9]*)?$/), parseNumber(block, 136, 12)),
      devmajor: parseNumber(block, 329, 8),
      devminor: parseNumber(block, 337, 8),
    }
    for (const [k, v] of Object.entries(fields)) {
      if (v === undefined || v === null) throw inputError(label, `${showPath(name)}: invalid ${k} field in the tar header at byte ${at}`)
    }
    const dataSize = HEADER_ONLY.has(typeflag) ? 0 : (fields.size as number)
    const header: TarHeader = {
      offset: at,
      typeflag,
      name,
      linkname,
      mode: fields.mode as number,
      uid: fields.uid as number,
      gid: fields.gid as number,
      size: dataSize,
      mtime: fields.mtime as number,
      devmajor: fields.devmajor as number,
      devminor: fields.devminor as number,
      pax: ext,
    }
    members++

    let left = dataSize
    async function* body(): AsyncGenerator<Buffer> {
      while (left > 0) {
        const b = await src.readSome(left)
        if (b.length === 0) throw truncated()
        left -= b.length
        yield b
      }
    }
    await onEntry(header, body())
    if (!(await src.discard(left + padding(dataSize)))) throw truncated()
  }
}
