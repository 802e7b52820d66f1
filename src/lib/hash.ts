import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import { Worker } from 'node:worker_threads'
import type { DataRange } from './sparse.js'

/** Reads of 4 MiB: at the default 64 KiB, per-chunk overhead dominated hashing a 1 GiB image. */
const READ_SIZE = 4 * 1024 * 1024

/** SHA-256 (hex) of a file, streamed. (A large sparse one: hashOnThread, which skips its holes.) */
export async function sha256File(p: string): Promise<string> {
  const hash = createHash('sha256')
  const fh = await fs.open(p, 'r')
  try {
    const buf = Buffer.allocUnsafe(READ_SIZE)
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, READ_SIZE)
      if (bytesRead === 0) break
      hash.update(buf.subarray(0, bytesRead))
    }
  } finally {
    await fh.close()
  }
  return hash.digest('hex')
}

/**
 * The worker of hashOnThread: plain JavaScript evaluated from a string (the same code under
 * tsc, vitest and the esbuild bundle; see flatten/blob-writer.ts). Reads the data ranges with
 * synchronous 4 MiB reads and hashes the holes between them as the zeros they read as.
 */
const HASH_WORKER = `
const { parentPort, workerData } = require('node:worker_threads')
const { createHash } = require('node:crypto')
const fs = require('node:fs')
const { file, size, ranges, chunk, algorithm } = workerData
const hash = createHash(algorithm)
const buf = Buffer.allocUnsafe(chunk)
const zeros = Buffer.alloc(chunk)
function zero(n) { for (; n > 0; n -= chunk) hash.update(n >= chunk ? zeros : zeros.subarray(0, n)) }
const fd = fs.openSync(file, 'r')
try {
  let pos = 0
  for (const r of ranges ?? [{ start: 0, end: size }]) {
    const start = Math.min(r.start, size), end = Math.min(r.end, size)
    if (start > pos) { zero(start - pos); pos = start }
    while (pos < end) {
      const n = fs.readSync(fd, buf, 0, Math.min(chunk, end - pos), pos)
      if (n === 0) throw new Error(file + ': ends after ' + pos + ' of ' + size + ' bytes')
      hash.update(buf.subarray(0, n))
      pos += n
    }
  }
  zero(size - pos)
} finally {
  fs.closeSync(fd)
}
parentPort.postMessage(hash.digest('hex'))
`

/** A hash being taken on another thread: its digest, and a way to stop it early. */
export interface ThreadHash {
  readonly digest: Promise<string>
  stop(): Promise<void>
}

/**
 * The SHA-256 (or SHA-512) of the first `size` bytes of a large file on a worker thread; with
 * `ranges` (lib/sparse.ts), only those are read and the holes are hashed as zeros. For when the
 * main thread is busy meanwhile: the bundle writer compresses an image while this hashes it
 * (the hash is sequential, ~0.7 s of CPU for a 1 GiB image, and would otherwise pace the
 * compression behind it), and takes the bundle's sha256 and sha512 side by side. A file
 * shorter than `size` is an error naming it. Hex digest.
 */
export function hashOnThread(p: string, size: number, opts: { algorithm?: 'sha256' | 'sha512'; ranges?: readonly DataRange[] } = {}): ThreadHash {
  const workerData = { file: p, size, ranges: opts.ranges, chunk: READ_SIZE, algorithm: opts.algorithm ?? 'sha256' }
  const worker = new Worker(HASH_WORKER, { eval: true, workerData })
  const digest = new Promise<string>((resolve, reject) => {
    worker.once('message', (hex: string) => resolve(hex))
    worker.once('error', reject)
    worker.once('exit', () => reject(new Error(`${p}: the hashing thread stopped`)))
  })
  // Observed now: the caller may fail elsewhere and stop() before it ever awaits the digest.
  digest.catch(() => undefined)
  return {
    digest,
    stop: async () => {
      await worker.terminate()
    },
  }
}
