import { closeSync, constants, openSync, writeSync } from 'node:fs'

/**
 * Writes regular-file contents into `<staging>/blobs/<ino>`.
 *
 * Every blob is created exclusively (O_CREAT|O_EXCL, which also refuses to follow a symlink at
 * the final component, plus O_NOFOLLOW) with mode 0600 in our own 0700 directory, so nothing can
 * redirect a write and nothing but blobs is ever created.
 *
 * The writes are synchronous on purpose. Images are mostly small files, and through libuv's
 * thread pool each open, write and close is a round trip: profiled on the Debian fixture (6.6k
 * files), handing them to the pool cost the main thread ~2 s (futex handoffs) for ~0.4 s of
 * actual syscalls. The parser has nothing else to do while a blob is written, and the layer's
 * decompression keeps running in the pool meanwhile. Each chunk is written as it arrives, so
 * memory does not grow with the file or the image.
 */

const CREATE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW
const BLOB_MODE = 0o600

/** Write the bytes of `body` to `file`, which must not exist. Resolves once they are written and the file closed. */
export async function writeBlob(file: string, body: AsyncIterable<Buffer>): Promise<void> {
  const fd = openSync(file, CREATE_FLAGS, BLOB_MODE)
  try {
    for await (const chunk of body) {
      let off = 0
      while (off < chunk.length) off += writeSync(fd, chunk, off, chunk.length - off)
    }
  } finally {
    closeSync(fd)
  }
}
