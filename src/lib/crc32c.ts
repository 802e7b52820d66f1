/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum of ext4's metadata_csum
 * (inodes, superblock, directory blocks) and of iSCSI (RFC 3720).
 *
 * Two forms, because ext4 and the RFC chain it differently:
 * - crc32cRaw(crc, bytes) is the bare register update, without the initial or final inversion.
 *   ext4 (the kernel's and libext2fs's ext2fs_crc32c_le) chains these: a seed from one call is
 *   the starting register of the next, and what is stored is the register itself;
 * - crc32c(bytes) is the standard checksum (register starts at ~0, result inverted), the form
 *   the RFC 3720 test vectors are given in.
 *
 * Byte-at-a-time with one 256-entry table: ext4 checksums a few hundred bytes per inode, so the
 * whole image's worth is a few megabytes at most and a faster variant would not show.
 */

/** The reflected Castagnoli polynomial. */
const POLY = 0x82f63b78

const TABLE = (() => {
  const t = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1
    t[n] = c >>> 0
  }
  return t
})()

/** Update the CRC register `crc` with `bytes` (no inversion in or out); returns an unsigned 32-bit value. */
export function crc32cRaw(crc: number, bytes: Uint8Array): number {
  let c = crc >>> 0
  for (let i = 0; i < bytes.length; i++) c = (TABLE[(c ^ (bytes[i] ?? 0)) & 0xff] ?? 0) ^ (c >>> 8)
  return c >>> 0
}

/** The standard CRC-32C of `bytes` (initial ~0, final inversion), as in RFC 3720. */
export function crc32c(bytes: Uint8Array): number {
  return ~crc32cRaw(0xffffffff, bytes) >>> 0
}
