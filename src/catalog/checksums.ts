import { BaleError } from '../lib/errors.js'

/**
 * SHA256SUMS, in the format GNU `sha256sum` writes and `sha256sum -c` reads: one line per file,
 * 64 lowercase hex digits, two spaces (text mode; ` *` is binary mode, the same on Linux), the
 * path relative to the file's own directory. bale writes it and reads it back strictly: a path
 * that is absolute, has `..`, or needs sha256sum's backslash escaping is refused, since a mirror
 * never needs one and an installer must never read outside the mirror.
 */
export interface SumLine {
  readonly sha256: string
  readonly file: string
}

const LINE = /^([0-9a-f]{64}) [ *](.+)$/

/** A relative path of plain components, without `..`, `.` or empty parts. */
export function isSafeRelativePath(p: string): boolean {
  if (p === '' || p.startsWith('/') || p.includes('\\') || p.includes('\0') || /[\r\n]/.test(p)) return false
  return p.split('/').every((c) => c !== '' && c !== '.' && c !== '..')
}

export function formatSha256Sums(lines: readonly SumLine[]): string {
  const sorted = [...lines].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0))
  for (const l of sorted) {
    if (!isSafeRelativePath(l.file)) throw new BaleError('E_INPUT', `SHA256SUMS: refusing to list unsafe path '${l.file}'`, { subject: l.file })
  }
  return sorted.map((l) => `${l.sha256}  ${l.file}\n`).join('')
}

/** Parse SHA256SUMS; `where` names the file in errors. Duplicate paths with different sums are refused. */
export function parseSha256Sums(text: string, where: string): Map<string, string> {
  const out = new Map<string, string>()
  const lines = text.split('\n')
  if (lines[lines.length - 1] === '') lines.pop()
  for (const [i, line] of lines.entries()) {
    const m = LINE.exec(line)
    if (m === null) throw new BaleError('E_INPUT', `${where}:${i + 1}: not a sha256sum line`, { subject: where })
    const [, sum, file] = m as unknown as [string, string, string]
    if (!isSafeRelativePath(file)) throw new BaleError('E_UNSAFE_PATH', `${where}:${i + 1}: unsafe path '${file}'`, { subject: file })
    const prev = out.get(file)
    if (prev !== undefined && prev !== sum) throw new BaleError('E_INPUT', `${where}:${i + 1}: '${file}' listed twice with different sums`, { subject: file })
    out.set(file, sum)
  }
  return out
}
