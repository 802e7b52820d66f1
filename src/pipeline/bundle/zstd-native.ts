import { createRequire } from 'node:module'
import * as zstd from '@mongodb-js/zstd'
import { BaleError } from '../../lib/errors.js'

/**
 * Native zstd compression at a chosen level.
 *
 * Trap: @mongodb-js/zstd@1.2.2 declares `compress(data, level)` in index.d.ts, but its
 * index.js wrapper is `compress(data) { return _compress(data) }`: the level is dropped and
 * every call compresses at zstd's default (3), silently. The native binding it wraps (the
 * package's own `bindings.js`) does take the level, so it is called directly. A release whose
 * wrapper passes the level on (its arity becomes 2) is used as published.
 */
type CompressFn = (data: Buffer, level?: number) => Promise<Buffer>

function resolveCompress(): CompressFn {
  if (zstd.compress.length >= 2) return zstd.compress
  try {
    const require = createRequire(import.meta.url)
    const bindings = require('@mongodb-js/zstd/bindings.js') as { compress?: unknown }
    if (typeof bindings.compress === 'function') return bindings.compress as CompressFn
  } catch {
    // Layout changed: handled below.
  }
  throw new BaleError('E_TOOL', '@mongodb-js/zstd: cannot compress at a chosen level with this version (its wrapper ignores the level and its native binding was not found)', { subject: '@mongodb-js/zstd' })
}

let compressImpl: CompressFn | undefined

/** Compress `data` as one zstd frame at `level`, on the libuv pool. */
export async function compressFrame(data: Buffer, level: number): Promise<Buffer> {
  compressImpl ??= resolveCompress()
  try {
    return await compressImpl(data, level)
  } catch (e) {
    // napi errors carry no JS stack; say where they came from.
    throw new BaleError('E_TOOL', `zstd compression failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e })
  }
}
