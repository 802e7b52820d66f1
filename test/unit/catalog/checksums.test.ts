import { describe, expect, it } from 'vitest'
import { formatSha256Sums, isSafeRelativePath, parseSha256Sums } from '../../../src/catalog/checksums.js'

const A = 'a'.repeat(64)
const B = 'b'.repeat(64)

describe('SHA256SUMS', () => {
  it('writes sha256sum text-mode lines sorted by path, and reads them back', () => {
    const text = formatSha256Sums([
      { sha256: B, file: 'index.json' },
      { sha256: A, file: 'bundles/demo/demo-1.bundle.tar.zst' },
    ])
    expect(text).toBe(`${A}  bundles/demo/demo-1.bundle.tar.zst\n${B}  index.json\n`)
    expect([...parseSha256Sums(text, 'S')]).toEqual([
      ['bundles/demo/demo-1.bundle.tar.zst', A],
      ['index.json', B],
    ])
  })

  it('reads binary-mode lines (" *path") as sha256sum does', () => {
    expect(parseSha256Sums(`${A} *x.bin\n`, 'S').get('x.bin')).toBe(A)
  })

  it.each(['../etc/passwd', '/etc/passwd', 'a/../../b', 'a//b', './a', 'a\\b', ''])('refuses the unsafe path %j', (p) => {
    expect(isSafeRelativePath(p)).toBe(false)
    if (p !== '') expect(() => parseSha256Sums(`${A}  ${p}\n`, 'S')).toThrow(/unsafe path/)
  })

  it('refuses a malformed line, naming the line', () => {
    expect(() => parseSha256Sums(`${A}  ok\nnot a line\n`, 'SUMS')).toThrow('SUMS:2: not a sha256sum line')
  })

  it('refuses one path listed with two different sums', () => {
    expect(() => parseSha256Sums(`${A}  x\n${B}  x\n`, 'S')).toThrow("'x' listed twice")
  })
})
