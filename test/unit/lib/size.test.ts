import { describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { parseSize } from '../../../src/lib/size.js'

describe('parseSize', () => {
  it.each([
    ['4096', 4096],
    ['512M', 512 * 1024 ** 2],
    ['2G', 2 * 1024 ** 3],
    ['2g', 2 * 1024 ** 3],
    ['1.5G', 1.5 * 1024 ** 3],
    ['64MiB', 64 * 1024 ** 2],
    ['10KB', 10 * 1024],
  ])('%s = %d bytes', (input, bytes) => {
    expect(parseSize(input, '--size')).toBe(bytes)
  })

  it.each(['', 'abc', '-1G', '0', '1X', '1.2.3M'])('rejects %j naming the flag', (input) => {
    let err: unknown
    try {
      parseSize(input, '--size')
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(BaleError)
    expect((err as BaleError).code).toBe('E_USAGE')
    expect((err as BaleError).message).toMatch(/^--size: /)
  })
})
