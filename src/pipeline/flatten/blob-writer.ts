import { promises as fs } from 'node:fs'

/**
 * Writes regular-file contents into `<staging>/blobs/<ino>`.
 *
 * Every blob is created exclusively ('wx': O_CREAT|O_EXCL, which also refuses to follow a
 * symlink at the final component) with mode 0600 in our own 0700 directory, so nothing can
 * redirect a write and nothing but blobs is ever created.
 *
 * Images are mostly small files, and each costs an open, a write and a close on libuv's thread
 * pool; done one after another, the parser waits on every round trip. Small files are therefore
 * buffered and written a few at a time, so those latencies overlap, while large files stream
 * chunk by chunk. Memory stays bounded by the in-flight cap, whatever the image size.
 */

/** Files up to this size are buffered whole; larger ones stream (a 256 KiB copy is cheap). */
const SMALL_FILE_BYTES = 256 * 1024
/** Bytes of buffered small files in flight at once: bounds memory, not a tuning knob. */
const MAX_INFLIGHT_BYTES = 16 * 1024 * 1024
/** libuv's default thread pool has 4 threads; 8 writes in flight keep all of them busy. */
const MAX_INFLIGHT_WRITES = 8

export class BlobWriter {
  private readonly inflight = new Set<Promise<void>>()
  private inflightBytes = 0
  private failure: { error: unknown } | undefined

  /** Write `size` bytes from `body` to `file`. May return before the bytes are on disk: call settle(). */
  async write(file: string, size: number, body: AsyncIterable<Buffer>): Promise<void> {
    this.throwIfFailed()
    if (size > SMALL_FILE_BYTES) {
      await writeStreaming(file, body)
      return
    }
    const chunks: Buffer[] = []
    for await (const c of body) chunks.push(c)
    // concat copies, so no buffered blob keeps a (larger) source chunk alive.
    const data = Buffer.concat(chunks, size)
    while (this.inflight.size >= MAX_INFLIGHT_WRITES || (this.inflight.size > 0 && this.inflightBytes + data.length > MAX_INFLIGHT_BYTES)) {
      await Promise.race(this.inflight)
    }
    this.throwIfFailed()
    this.inflightBytes += data.length
    const p: Promise<void> = fs
      .writeFile(file, data, { flag: 'wx', mode: 0o600 })
      .catch((error: unknown) => {
        this.failure ??= { error }
      })
      .finally(() => {
        this.inflight.delete(p)
        this.inflightBytes -= data.length
      })
    this.inflight.add(p)
  }

  /** Wait for every write in flight; rejects with the first write error. Always waits, even after a failure. */
  async settle(): Promise<void> {
    while (this.inflight.size > 0) await Promise.all(this.inflight)
    this.throwIfFailed()
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure.error
  }
}

async function writeStreaming(file: string, body: AsyncIterable<Buffer>): Promise<void> {
  const fh = await fs.open(file, 'wx', 0o600)
  try {
    for await (const chunk of body) {
      let off = 0
      while (off < chunk.length) {
        const { bytesWritten } = await fh.write(chunk, off, chunk.length - off)
        off += bytesWritten
      }
    }
  } finally {
    await fh.close()
  }
}
