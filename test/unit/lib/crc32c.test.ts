// CRC-32C against the test vectors of RFC 3720 appendix B.4 (given there as the bytes sent on
// the wire, least significant first) and the catalogue's check value, and the raw register form
// that ext4 chains.
import { describe, expect, it } from 'vitest'
import { crc32c, crc32cRaw } from '../../../src/lib/crc32c.js'

/** RFC 3720 prints each CRC as its four bytes in transmission order: little-endian. */
function wire(...bytes: number[]): number {
  return Buffer.from(bytes).readUInt32LE(0)
}

describe('crc32c: RFC 3720 B.4 vectors', () => {
  it('32 bytes of zeros', () => {
    expect(crc32c(Buffer.alloc(32, 0))).toBe(wire(0xaa, 0x36, 0x91, 0x8a))
  })

  it('32 bytes of 0xff', () => {
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(wire(0x43, 0xab, 0xa8, 0x62))
  })

  it('32 incrementing bytes 00..1f', () => {
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i)))).toBe(wire(0x4e, 0x79, 0xdd, 0x46))
  })

  it('32 decrementing bytes 1f..00', () => {
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)))).toBe(wire(0x5c, 0xdb, 0x3f, 0x11))
  })

  it('an iSCSI read command PDU (48 bytes)', () => {
    const pdu = Buffer.from('01c000000000000000000000000000001400000000000400000000140000001828000000000000000200000000000000', 'hex')
    expect(pdu.length).toBe(48)
    expect(crc32c(pdu)).toBe(wire(0x56, 0x3a, 0x96, 0xd9))
  })
})

describe('crc32c: the register form ext4 chains', () => {
  it('the catalogue check value of "123456789" is 0xe3069283', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283)
  })

  it('raw updates chain: splitting the input anywhere gives the same register', () => {
    const data = Buffer.from('metadata_csum chains crc32c over several fields')
    const whole = crc32cRaw(0xffffffff, data)
    for (const cut of [0, 1, 7, data.length]) {
      expect(crc32cRaw(crc32cRaw(0xffffffff, data.subarray(0, cut)), data.subarray(cut))).toBe(whole)
    }
    expect(crc32c(data)).toBe(~whole >>> 0)
  })

  it('agrees with the bit-at-a-time definition for every length 0..40 and any start register (the 8-byte steps and the tail)', () => {
    const bitwise = (crc: number, bytes: Uint8Array): number => {
      let c = crc >>> 0
      for (const b of bytes) {
        c ^= b
        for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
      }
      return c >>> 0
    }
    const data = Buffer.from(Array.from({ length: 40 }, (_, i) => (i * 151 + 17) & 0xff))
    for (const start of [0, 0xffffffff, 0x12345678]) {
      for (let len = 0; len <= data.length; len++) expect(crc32cRaw(start, data.subarray(0, len))).toBe(bitwise(start, data.subarray(0, len)))
    }
  })

  it('an empty input leaves the register as it was, unsigned', () => {
    expect(crc32cRaw(0xffffffff, Buffer.alloc(0))).toBe(0xffffffff)
    expect(crc32cRaw(-1, Buffer.alloc(0))).toBe(0xffffffff)
  })
})
