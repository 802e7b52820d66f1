// lz4js ships no types. Only the raw block decoder is used: the kernel's lz4 payload is the
// "legacy" frame format (magic 0x184C2102), which lz4js's own frame decoder does not read.
declare module 'lz4js' {
  const lz4: {
    /** Decode one LZ4 block src[sIndex, sIndex+sLength) into dst at dIndex; returns the new dIndex. */
    decompressBlock(src: Uint8Array, dst: Uint8Array, sIndex: number, sLength: number, dIndex: number): number
  }
  export = lz4
}
