import { closeSync, constants, openSync, writeSync } from 'node:fs'
import { Worker } from 'node:worker_threads'
import { registerStopper } from '../../lib/cleanup.js'

/**
 * Writes regular-file contents into `<staging>/blobs/<ino>`.
 *
 * Every blob is created exclusively (O_CREAT|O_EXCL, which also refuses to follow a symlink at
 * the final component, plus O_NOFOLLOW) with mode 0600 in our own 0700 directory, so nothing can
 * redirect a write and nothing but blobs is ever created.
 *
 * A layer's first blobs are written synchronously on the main thread: through libuv's pool each
 * open, write and close would be a round trip (profiled on the Debian fixture, 6.6k files: ~2 s
 * of futex hand-offs for ~0.4 s of syscalls). Past SYNC_BLOBS files in one layer, the writes go
 * to a worker thread in batches of about a MiB, so that creating files (kernel time, which grows
 * with the host filesystem's load: 0.05 to 0.5 ms a file on the build machine) runs beside the
 * tar parsing and hashing on the main thread and the decompression in the pool, instead of
 * between them (make-bundle of the Debian image: ~2.5 s faster with the sparse reads, same
 * bytes). Either way each chunk is copied or written as it arrives and at most MAX_IN_FLIGHT
 * bytes wait for the worker, so memory does not grow with the file or the image. The worker
 * keeps every guarantee above: same flags, same directory, and on an interrupt it is stopped
 * before the staging directory is removed (lib/cleanup.ts registerStopper).
 */

const CREATE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW
const BLOB_MODE = 0o600

/** Blobs of a layer written on the main thread before the worker starts: small layers never pay for one. */
const SYNC_BLOBS = 64
/** Bytes per message to the worker (its buffer is transferred, not copied). */
const BATCH_BYTES = 1 << 20
/** Bytes handed to the worker and not yet written before write() waits. */
const MAX_IN_FLIGHT = 8 << 20

/** Record kinds in a batch: [OPEN, index into names, 0] [DATA, offset, length] [CLOSE, 0, 0]. */
const OPEN = 0
const DATA = 1
const CLOSE = 2

interface Batch {
  names: string[]
  records: number[]
  buf: Buffer
  used: number
}

interface WorkerFailure {
  file: string
  code?: string
  syscall?: string
  message: string
}

/** Control words shared with the worker: [STOP] set by an interrupt, [BUSY] while it works on a batch. */
const STOP = 0
const BUSY = 1
/** How long an interrupt waits for the worker to finish the one syscall it may be in. */
const STOP_WAIT_MS = 2000

/**
 * The worker: plain JavaScript evaluated from a string, so that it is the same code under tsc,
 * vitest and the esbuild bundle (a worker file would need its own entry point in each). It only
 * uses node:fs and answers every batch with the bytes it took, plus the first failure; after a
 * failure, or once told to stop, it closes what it had open and writes nothing more.
 *
 * Stopping (lib/cleanup.ts, on SIGINT): the main thread sets STOP, then waits while BUSY is set;
 * the worker sets BUSY, then checks STOP before every syscall. Both are sequentially consistent
 * atomics, so either the main thread sees BUSY and waits, or the worker sees STOP and stops:
 * no file is created after the staging directory's removal has begun.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads')
const fs = require('node:fs')
const { flags, mode, ctl } = workerData
const word = new Int32Array(ctl)
let fd = -1
let name = ''
let failure
function closeOpen() { if (fd >= 0) { try { fs.closeSync(fd) } catch {} fd = -1 } }
parentPort.on('message', ({ names, records, buf }) => {
  Atomics.store(word, ${BUSY}, 1)
  const bytes = new Uint8Array(buf)
  for (let i = 0; i < records.length; i += 3) {
    const kind = records[i], a = records[i + 1], b = records[i + 2]
    if (kind === ${OPEN}) name = names[a]
    if (failure !== undefined) continue
    if (Atomics.load(word, ${STOP}) !== 0) { failure = { file: name, message: 'interrupted' }; closeOpen(); continue }
    try {
      if (kind === ${OPEN}) fd = fs.openSync(name, flags, mode)
      else if (kind === ${DATA}) { let off = 0; while (off < b) off += fs.writeSync(fd, bytes, a + off, b - off) }
      else { const f = fd; fd = -1; fs.closeSync(f) }
    } catch (e) {
      failure = { file: name, code: e.code, syscall: e.syscall, message: e.message }
      closeOpen()
    }
  }
  Atomics.store(word, ${BUSY}, 0)
  Atomics.notify(word, ${BUSY})
  // The buffer goes back for the next batch: no garbage piles up here between collections.
  parentPort.postMessage({ bytes: bytes.length, failure, buf }, [buf])
})
`

/** Blob writes of one layer; `flush()` before anything reads or removes a blob, `close()` always. */
export class BlobWriter {
  private count = 0
  private worker: Worker | undefined
  private batch: Batch | undefined
  private inFlight = 0
  private failure: WorkerFailure | undefined
  private readonly waiting: Array<() => void> = []
  private exited: Error | undefined
  private unregisterStopper: (() => void) | undefined
  /** Batch buffers the worker has handed back: at most MAX_IN_FLIGHT / BATCH_BYTES + 1 ever exist. */
  private readonly spare: ArrayBuffer[] = []

  /** Write the bytes of `body` to `file`, which must not exist. Resolves once they are written or queued. */
  async write(file: string, body: AsyncIterable<Buffer>): Promise<void> {
    this.throwIfFailed()
    if (this.count++ < SYNC_BLOBS) return writeBlobSync(file, body)
    this.record(OPEN, this.names().push(file) - 1, 0)
    try {
      for await (const chunk of body) {
        let off = 0
        while (off < chunk.length) {
          const b = this.current()
          const n = Math.min(chunk.length - off, b.buf.length - b.used)
          chunk.copy(b.buf, b.used, off, off + n)
          this.record(DATA, b.used, n)
          b.used += n
          off += n
          if (b.used === b.buf.length) await this.send()
        }
      }
    } finally {
      // Also when the body fails (a truncated layer): the descriptor is the process's, not the worker's.
      this.record(CLOSE, 0, 0)
    }
    this.throwIfFailed()
  }

  /** Resolves once every blob so far is written and closed; rejects with the first failure. */
  async flush(): Promise<void> {
    await this.send()
    while (this.inFlight > 0) await this.ack()
    this.throwIfFailed()
  }

  /**
   * Stop the worker once it has written what it was given. Blobs not yet handed over are dropped:
   * after flush() there are none, and after a failure the layer is rejected anyway; a descriptor
   * the worker still holds is closed as it exits (trackUnmanagedFds). Nothing is written after
   * this resolves.
   */
  async close(): Promise<void> {
    this.batch = undefined
    try {
      while (this.inFlight > 0 && this.exited === undefined) await this.ack()
    } finally {
      await this.worker?.terminate()
      this.worker = undefined
      this.unregisterStopper?.()
      this.unregisterStopper = undefined
    }
  }

  private names(): string[] {
    return this.current().names
  }

  private current(): Batch {
    if (this.batch === undefined) {
      const ab = this.spare.pop()
      // allocUnsafeSlow: a buffer of its own, not a slice of Node's pool, so it can be transferred.
      this.batch = { names: [], records: [], buf: ab === undefined ? Buffer.allocUnsafeSlow(BATCH_BYTES) : Buffer.from(ab), used: 0 }
    }
    return this.batch
  }

  private record(kind: number, a: number, b: number): void {
    this.current().records.push(kind, a, b)
  }

  private async send(): Promise<void> {
    const b = this.batch
    if (b === undefined || b.records.length === 0) return
    this.batch = undefined
    while (this.inFlight > 0 && this.inFlight + b.buf.length > MAX_IN_FLIGHT) await this.ack()
    const w = this.ensureWorker()
    this.inFlight += b.buf.length
    // The batch's own ArrayBuffer moves to the worker, and comes back with its answer.
    const ab = b.buf.buffer as ArrayBuffer
    w.postMessage({ names: b.names, records: b.records, buf: ab }, [ab])
  }

  private ack(): Promise<void> {
    if (this.exited !== undefined) return Promise.reject(this.exited)
    return new Promise((resolve) => this.waiting.push(resolve))
  }

  private ensureWorker(): Worker {
    if (this.exited !== undefined) throw this.exited
    if (this.worker !== undefined) return this.worker
    const ctl = new SharedArrayBuffer(8)
    const w = new Worker(WORKER_SOURCE, { eval: true, trackUnmanagedFds: true, workerData: { flags: CREATE_FLAGS, mode: BLOB_MODE, ctl } })
    const word = new Int32Array(ctl)
    this.unregisterStopper = registerStopper(() => {
      Atomics.store(word, STOP, 1)
      const until = Date.now() + STOP_WAIT_MS
      while (Atomics.load(word, BUSY) === 1 && Date.now() < until) Atomics.wait(word, BUSY, 1, 50)
    })
    w.on('message', (m: { bytes: number; failure?: WorkerFailure; buf: ArrayBuffer }) => {
      this.inFlight -= m.bytes
      this.spare.push(m.buf)
      this.failure ??= m.failure
      this.waiting.shift()?.()
    })
    const gone = (e: Error): void => {
      this.exited ??= e
      for (const wake of this.waiting.splice(0)) wake()
    }
    w.on('error', gone)
    w.on('exit', () => gone(new Error('the blob writer thread stopped')))
    this.worker = w
    return w
  }

  private throwIfFailed(): void {
    const f = this.failure
    if (f !== undefined) {
      // The same error the synchronous calls throw (Node's message names the path itself).
      throw Object.assign(new Error(f.message), { code: f.code, syscall: f.syscall, path: f.file })
    }
    if (this.exited !== undefined && this.inFlight > 0) throw this.exited
  }
}

/** Write the bytes of `body` to `file`, which must not exist, on this thread. */
export async function writeBlobSync(file: string, body: AsyncIterable<Buffer>): Promise<void> {
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
