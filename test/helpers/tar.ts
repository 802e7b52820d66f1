/**
 * A tiny hand-rolled tar writer for tests, in the spirit of node-tar's per-advisory tests that
 * build hostile archives byte by byte. Unlike tar-stream's pack it writes whatever it is given:
 * raw name bytes (invalid UTF-8, NUL or newlines via PAX), `..` and absolute names, hard links to
 * anywhere, raw PAX records with binary values, GNU long names, base-256 numbers, lying sizes, a
 * raw typeflag, and archives without an end marker.
 *
 * Layout of a ustar header (POSIX.1-1988 / pax): name 0..100, mode 100..108, uid 108..116,
 * gid 116..124, size 124..136, mtime 136..148, chksum 148..156, typeflag 156, linkname 157..257,
 * magic 257..263, version 263..265, uname 265..297, gname 297..329, devmajor 329..337,
 * devminor 337..345, prefix 345..500.
 */
import { Readable } from 'node:stream'

export type TarEntryType = 'file' | 'dir' | 'symlink' | 'link' | 'char' | 'block' | 'fifo' | 'pax-global'

export interface TarEntry {
  /** Member name, written as given (a string is UTF-8 encoded). Directories get no trailing '/' unless given. */
  name: string | Buffer
  /** Default 'file'. 'pax-global' writes a PAX global header ('g') carrying `pax`. */
  type?: TarEntryType
  /** Raw typeflag character overriding `type` (e.g. 'S' for a GNU sparse file, '7' contiguous). */
  typeflag?: string
  /** Default 0o644 (files), 0o755 (dirs), 0o777 (symlinks), 0o644 otherwise. Written as given, type bits included. */
  mode?: number
  uid?: number
  gid?: number
  /** Seconds since the epoch. */
  mtime?: number
  content?: Buffer | string
  /** Header size field override (a lying size); the content written is still `content`. */
  size?: number
  linkname?: string | Buffer
  devmajor?: number
  devminor?: number
  /** Extra PAX records for this entry; Buffer values are written as raw bytes. */
  pax?: Record<string, string | Buffer>
  /** How to carry a name or link name longer than its 100-byte field. Default 'pax'. */
  longNames?: 'pax' | 'gnu'
  /** Written into the ustar prefix field as is (the name field then holds the rest). */
  prefix?: string | Buffer
}

export interface BuildTarOptions {
  /** Write the two zero blocks that end an archive. Default true. */
  endMarker?: boolean
}

const BLOCK = 512
const TYPEFLAGS: Record<TarEntryType, string> = {
  file: '0',
  link: '1',
  symlink: '2',
  char: '3',
  block: '4',
  dir: '5',
  fifo: '6',
  'pax-global': 'g',
}

function bytes(v: string | Buffer): Buffer {
  return typeof v === 'string' ? Buffer.from(v, 'utf8') : v
}

/** An octal field of `width` bytes (digits, then NUL); base-256 (GNU) when the value does not fit. */
function writeNumber(buf: Buffer, offset: number, width: number, value: number): void {
  const digits = value.toString(8)
  if (value >= 0 && digits.length <= width - 1) {
    buf.write(digits.padStart(width - 1, '0'), offset, 'ascii')
    buf[offset + width - 1] = 0
    return
  }
  // Base-256: first byte 0x80 marks a positive big-endian binary number in the remaining bytes.
  let v = BigInt(value)
  for (let i = width - 1; i > 0; i--) {
    buf[offset + i] = Number(v & 0xffn)
    v >>= 8n
  }
  buf[offset] = 0x80
}

function header(fields: {
  name: Buffer
  mode: number
  uid: number
  gid: number
  size: number
  mtime: number
  typeflag: string
  linkname?: Buffer
  devmajor?: number
  devminor?: number
  prefix?: Buffer
  gnu?: boolean
}): Buffer {
  const h = Buffer.alloc(BLOCK)
  fields.name.copy(h, 0, 0, Math.min(fields.name.length, 100))
  writeNumber(h, 100, 8, fields.mode)
  writeNumber(h, 108, 8, fields.uid)
  writeNumber(h, 116, 8, fields.gid)
  writeNumber(h, 124, 12, fields.size)
  writeNumber(h, 136, 12, fields.mtime)
  h.write(fields.typeflag, 156, 'latin1')
  fields.linkname?.copy(h, 157, 0, Math.min(fields.linkname.length, 100))
  if (fields.gnu === true) h.write('ustar  \0', 257, 'latin1')
  else h.write('ustar\u000000', 257, 'latin1')
  writeNumber(h, 329, 8, fields.devmajor ?? 0)
  writeNumber(h, 337, 8, fields.devminor ?? 0)
  fields.prefix?.copy(h, 345, 0, Math.min(fields.prefix.length, 155))
  // Checksum: sum of all header bytes with the checksum field itself counted as eight spaces.
  h.fill(0x20, 148, 156)
  let sum = 0
  for (const b of h) sum += b
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'ascii')
  return h
}

function padded(data: Buffer): Buffer[] {
  const rem = data.length % BLOCK
  return rem === 0 ? [data] : [data, Buffer.alloc(BLOCK - rem)]
}

/** One PAX record: "<len> <key>=<value>\n", where <len> counts the whole record including its own digits. */
export function paxRecord(key: string, value: string | Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), bytes(value), Buffer.from('\n')])
  let len = body.length + 1
  while (String(len).length + body.length !== len) len = String(len).length + body.length
  return Buffer.concat([Buffer.from(String(len), 'ascii'), body])
}

function paxBlock(typeflag: 'x' | 'g', records: Array<[string, string | Buffer]>): Buffer[] {
  const data = Buffer.concat(records.map(([k, v]) => paxRecord(k, v)))
  const h = header({ name: Buffer.from('PaxHeader'), mode: 0o644, uid: 0, gid: 0, size: data.length, mtime: 0, typeflag })
  return [h, ...padded(data)]
}

function gnuLong(typeflag: 'L' | 'K', value: Buffer): Buffer[] {
  const data = Buffer.concat([value, Buffer.from([0])])
  const h = header({ name: Buffer.from('././@LongLink'), mode: 0o644, uid: 0, gid: 0, size: data.length, mtime: 0, typeflag, gnu: true })
  return [h, ...padded(data)]
}

function defaultMode(type: TarEntryType): number {
  if (type === 'dir') return 0o755
  if (type === 'symlink') return 0o777
  return 0o644
}

export function buildTar(entries: TarEntry[], opts: BuildTarOptions = {}): Buffer {
  const out: Buffer[] = []
  for (const e of entries) {
    const type = e.type ?? 'file'
    if (type === 'pax-global') {
      out.push(...paxBlock('g', Object.entries(e.pax ?? {})))
      continue
    }
    const name = bytes(e.name)
    const linkname = e.linkname === undefined ? undefined : bytes(e.linkname)
    const content = e.content === undefined ? Buffer.alloc(0) : bytes(e.content)
    const longNames = e.longNames ?? 'pax'
    const records: Array<[string, string | Buffer]> = []
    if (longNames === 'pax') {
      if (name.length > 100) records.push(['path', name])
      if (linkname !== undefined && linkname.length > 100) records.push(['linkpath', linkname])
    } else {
      if (linkname !== undefined && linkname.length > 100) out.push(...gnuLong('K', linkname))
      if (name.length > 100) out.push(...gnuLong('L', name))
    }
    records.push(...Object.entries(e.pax ?? {}))
    if (records.length > 0) out.push(...paxBlock('x', records))
    out.push(
      header({
        name,
        mode: e.mode ?? defaultMode(type),
        uid: e.uid ?? 0,
        gid: e.gid ?? 0,
        size: e.size ?? content.length,
        mtime: e.mtime ?? 0,
        typeflag: e.typeflag ?? TYPEFLAGS[type],
        linkname,
        devmajor: e.devmajor,
        devminor: e.devminor,
        prefix: e.prefix === undefined ? undefined : bytes(e.prefix),
        gnu: longNames === 'gnu',
      }),
    )
    if (content.length > 0) out.push(...padded(content))
  }
  if (opts.endMarker ?? true) out.push(Buffer.alloc(2 * BLOCK))
  return Buffer.concat(out)
}

/**
 * The archive as a stream, cut into `chunkSize`-byte chunks (default 7: odd on purpose, so headers,
 * PAX records and contents straddle chunk boundaries). `error`, if given, is emitted after the last
 * chunk, as a verifying decompressor does when the digest turns out wrong at the end.
 */
export function tarStream(entries: TarEntry[], opts: BuildTarOptions & ChunkOptions = {}): Readable {
  return chunkedStream(buildTar(entries, opts), opts)
}

export interface ChunkOptions {
  chunkSize?: number
  error?: Error
}

/** Any bytes as a stream of `chunkSize`-byte chunks, optionally failing after the last one. */
export function chunkedStream(buf: Buffer, opts: ChunkOptions = {}): Readable {
  const size = opts.chunkSize ?? 7
  const err = opts.error
  async function* chunks(): AsyncGenerator<Buffer> {
    for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size)
    if (err !== undefined) throw err
  }
  return Readable.from(chunks(), { objectMode: false })
}
