import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { afterEach } from 'vitest'
import { openLayerTar } from '../../../src/pipeline/source/layer.js'
import type { LayerBlob } from '../../../src/pipeline/source/types.js'
import { buildTar } from '../../helpers/tar.js'

/** A fresh temp dir per test, removed afterwards. */
export function useTempDir(): () => Promise<string> {
  const dirs: string[] = []
  afterEach(async () => {
    for (const d of dirs.splice(0)) await fs.rm(d, { recursive: true, force: true })
  })
  return async () => {
    const d = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-src-'))
    dirs.push(d)
    return d
  }
}

/** A small layer tar with one file whose content identifies it. */
export function layerTar(tag: string): Buffer {
  return buildTar([
    { name: 'etc', type: 'dir' },
    { name: 'etc/which', content: `${tag}\n` },
  ])
}

/** Read a layer the way make-bundle does and return its uncompressed bytes and digests. */
export async function readLayer(blob: LayerBlob, label = 'layer'): Promise<{ tar: Buffer; diffId: string; digest: string }> {
  const { tar, digests } = await openLayerTar(blob, label)
  const chunks: Buffer[] = []
  await pipeline(
    tar,
    new Writable({
      write(c: Buffer, _e, cb) {
        chunks.push(c)
        cb()
      },
    }),
  )
  const d = await digests
  return { tar: Buffer.concat(chunks), diffId: d.diffId, digest: d.digest }
}
