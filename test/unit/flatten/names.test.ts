import { describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { normalizeEntryName } from '../../../src/pipeline/flatten/index.js'
import { showPath } from '../../../src/pipeline/flatten/names.js'

const L = 'layer 2 (sha256:abcd)'

function rejection(raw: string | Buffer): BaleError {
  try {
    normalizeEntryName(raw, L)
  } catch (e) {
    if (e instanceof BaleError) return e
    throw e
  }
  throw new Error(`accepted ${String(raw)}`)
}

describe('normalizeEntryName', () => {
  it.each([
    ['a/b/c', 'a/b/c'],
    ['./a/b', 'a/b'],
    ['/etc/passwd', 'etc/passwd'],
    ['//a//b/', 'a/b'],
    ['a/./b/.', 'a/b'],
    ['./', ''],
    ['/', ''],
    ['.', ''],
    ['dir/', 'dir'],
    ['with space/"quote"', 'with space/"quote"'],
    ['<2>', '<2>'],
    ['ünïcödé/名前', 'ünïcödé/名前'],
    ['..a/b..', '..a/b..'],
    ['...', '...'],
  ])('%j → %j', (raw, want) => {
    expect(normalizeEntryName(raw, L)).toBe(want)
    expect(normalizeEntryName(Buffer.from(raw), L)).toBe(want)
  })

  it.each([
    ['../etc/passwd', "'..' component", '"../etc/passwd"'],
    ['a/../../b', "'..' component", '"a/../../b"'],
    ['a/../a', "'..' component", '"a/../a"'],
    ['/..', "'..' component", '"/.."'],
    ['a\nb', 'newline', '"a\\nb"'],
    ['a\rb', 'carriage return', '"a\\rb"'],
    ['a\0b', 'NUL', '"a\\x00b"'],
  ])('rejects %j (%s) naming it as %s', (raw, why, shown) => {
    const e = rejection(raw)
    expect(e.code).toBe('E_UNSAFE_PATH')
    expect(e.message).toBe(`${L}: ${shown}: ${e.message.slice(`${L}: ${shown}: `.length)}`)
    expect(e.message).toContain(why)
    expect(e.message).not.toContain('\n')
  })

  it('allows components of exactly 255 bytes and refuses 256 (multi-byte characters count as bytes)', () => {
    expect(normalizeEntryName(`d/${'x'.repeat(255)}`, L)).toBe(`d/${'x'.repeat(255)}`)
    expect(rejection(`d/${'x'.repeat(256)}`).message).toContain('longer than 255 bytes')
    // 128 × 'é' (2 bytes each) = 256 bytes in 128 characters.
    expect(rejection(`d/${'é'.repeat(128)}`).code).toBe('E_UNSAFE_PATH')
  })

  it('allows a 4095-byte path and refuses 4096', () => {
    const comp = 'y'.repeat(200)
    const base = Array.from({ length: 20 }, () => comp).join('/') // 20*200 + 19 = 4019 bytes
    const ok = `${base}/${'z'.repeat(4095 - 4019 - 1)}`
    expect(Buffer.byteLength(ok)).toBe(4095)
    expect(normalizeEntryName(ok, L)).toBe(ok)
    const e = rejection(`${ok}z`)
    expect(e.message).toContain('longer than 4095 bytes')
    // Long names are cut in the message, with their length.
    expect(e.message).toContain('…(4096 bytes)')
  })

  it('measures the normalized path, not the raw one', () => {
    const p = Array.from({ length: 20 }, () => 'q'.repeat(199)).join('/') // 3999 bytes
    expect(normalizeEntryName(`${'./'.repeat(100)}${p}`, L)).toBe(p)
  })

  it('rejects names that are not valid UTF-8 by name, with the bytes escaped', () => {
    const raw = Buffer.concat([Buffer.from('dir/caf'), Buffer.from([0xe9]), Buffer.from('.txt')])
    const e = rejection(raw)
    expect(e.code).toBe('E_UNSAFE_PATH')
    expect(e.message).toBe(`${L}: "dir/caf\\xe9.txt": name is not valid UTF-8`)
    // Overlong encodings and lone surrogates are not valid UTF-8 either.
    expect(rejection(Buffer.from([0xc0, 0xaf])).message).toContain('"\\xc0\\xaf"')
    expect(rejection(Buffer.from([0xed, 0xa0, 0x80])).message).toContain('not valid UTF-8')
    expect(rejection('lone\ud800').message).toContain('not valid UTF-8')
  })
})

describe('showPath', () => {
  it('quotes, escapes quotes, backslashes, control characters and invalid bytes', () => {
    expect(showPath('a "b" \\ c')).toBe('"a \\"b\\" \\\\ c"')
    expect(showPath('tab\there\x7f\x1b')).toBe('"tab\\there\\x7f\\x1b"')
    expect(showPath(Buffer.from([0x61, 0xff, 0xe2, 0x82]))).toBe('"a\\xff\\xe2\\x82"')
    expect(showPath('€ok')).toBe('"€ok"')
  })
})
