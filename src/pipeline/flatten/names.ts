import { BaleError } from '../../lib/errors.js'

/**
 * The one gate for every path that comes out of an archive: entry names and hard-link targets
 * alike (node-tar's unpack.ts idea). It works on the raw bytes, so a name that is not valid UTF-8
 * is rejected by name instead of being silently mangled into U+FFFD.
 */

/** ext4 (and Linux NAME_MAX): a directory entry name holds at most 255 bytes. */
export const MAX_COMPONENT_BYTES = 255
/** Linux PATH_MAX is 4096 bytes including the terminating NUL. */
export const MAX_PATH_BYTES = 4095
/** Error messages show at most this many characters of a hostile name, so they stay one readable line. */
const MAX_SHOWN_CHARS = 300

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

/** Decode strictly; undefined when the bytes are not valid UTF-8. */
export function decodeUtf8(raw: Buffer): string | undefined {
  try {
    return utf8.decode(raw)
  } catch {
    return undefined
  }
}

function toBytes(raw: string | Buffer): Buffer {
  // A JS string with a lone surrogate encodes as EF BF BD; the caller's check below catches that
  // by comparing the round trip.
  return typeof raw === 'string' ? Buffer.from(raw, 'utf8') : raw
}

/**
 * A path as one safe, quoted line: valid UTF-8 printable text as is, `"` and `\` escaped, control
 * characters and bytes that are not UTF-8 as `\xNN`, long names cut with their full byte length.
 */
export function showPath(raw: string | Buffer): string {
  const buf = toBytes(raw)
  let out = ''
  let i = 0
  while (i < buf.length && out.length < MAX_SHOWN_CHARS) {
    const b = buf[i] as number
    const len = b < 0x80 ? 1 : b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 0
    const ch = len === 0 || i + len > buf.length ? undefined : decodeUtf8(buf.subarray(i, i + len))
    if (ch === undefined) {
      out += `\\x${b.toString(16).padStart(2, '0')}`
      i += 1
      continue
    }
    const cp = ch.codePointAt(0) as number
    if (ch === '"' || ch === '\\') out += `\\${ch}`
    else if (ch === '\n') out += '\\n'
    else if (ch === '\r') out += '\\r'
    else if (ch === '\t') out += '\\t'
    else if (cp < 0x20 || cp === 0x7f || (cp >= 0x80 && cp < 0xa0)) out += `\\x${cp.toString(16).padStart(2, '0')}`
    else out += ch
    i += len
  }
  if (i < buf.length) out += `…(${buf.length} bytes)`
  return `"${out}"`
}

export type NameCheck = { ok: true; path: string } | { ok: false; reason: string }

/**
 * Normalize a raw archive path, or say why it is refused. Absolute names and `./` prefixes are
 * relative to the image root (never host paths); empty and `.` components are dropped; any `..`
 * component is refused even when it would stay inside, since nothing here resolves paths.
 */
export function checkName(raw: string | Buffer): NameCheck {
  const buf = toBytes(raw)
  if (buf.includes(0)) return { ok: false, reason: 'name contains a NUL byte' }
  if (buf.includes(0x0a)) return { ok: false, reason: 'name contains a newline' }
  if (buf.includes(0x0d)) return { ok: false, reason: 'name contains a carriage return' }
  const text = decodeUtf8(buf)
  if (text === undefined || (typeof raw === 'string' && text !== raw)) return { ok: false, reason: 'name is not valid UTF-8' }
  const parts: string[] = []
  for (const c of text.split('/')) {
    if (c === '' || c === '.') continue
    if (c === '..') return { ok: false, reason: "path has a '..' component" }
    if (Buffer.byteLength(c, 'utf8') > MAX_COMPONENT_BYTES) {
      return { ok: false, reason: `a path component is longer than ${MAX_COMPONENT_BYTES} bytes` }
    }
    parts.push(c)
  }
  const path = parts.join('/')
  if (Buffer.byteLength(path, 'utf8') > MAX_PATH_BYTES) return { ok: false, reason: `path is longer than ${MAX_PATH_BYTES} bytes` }
  return { ok: true, path }
}

/**
 * Returns the normalized tree path (see tree.ts) or throws
 * BaleError('E_UNSAFE_PATH', `${label}: <path shown safely>: <reason>`).
 */
export function normalizeEntryName(raw: string | Buffer, label: string): string {
  const r = checkName(raw)
  if (r.ok) return r.path
  const shown = showPath(raw)
  throw new BaleError('E_UNSAFE_PATH', `${label}: ${shown}: ${r.reason}`, { subject: shown })
}
