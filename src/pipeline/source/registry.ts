import { createReadStream } from 'node:fs'
import type { Readable } from 'node:stream'
import { BaleError } from '../../lib/errors.js'
import { pull, type PullEvent, type PullOptions, type PullResult } from '../../registry/pull.js'
import { OciStore } from '../../registry/store.js'
import { layerCompression, MAX_CONFIG_BYTES, parseImageConfig } from './oci.js'
import type { ImageSource, LayerBlob, ResolvedImage } from './types.js'

/**
 * `--image REF`: pull into the content-addressed store (or find it there), then serve each
 * layer from the store. The store holds only blobs that matched their digest when they were
 * written; layer.ts checks digest and diff_id again as the bytes stream into flatten, so a blob
 * damaged in the cache since is still caught.
 */
export function registrySource(ref: string, opts: PullOptions = {}, onEvent?: (e: PullEvent) => void): ImageSource {
  return {
    resolve: async () => toResolved(await pull(ref, opts, onEvent)),
    close: async () => undefined,
  }
}

async function toResolved(r: PullResult): Promise<ResolvedImage> {
  const store = new OciStore(r.storeDir)
  const where = `config ${r.configDigest} of ${r.ref}`
  const bytes = await store.readSmallBlob(r.configDigest, MAX_CONFIG_BYTES, where)
  if (bytes === undefined) throw new BaleError('E_NOT_FOUND', `${where}: missing from the store ${r.storeDir}`, { subject: r.configDigest })
  // The same config mapping as every other source, so bundles do not depend on where the image came from.
  const parsed = parseImageConfig(bytes, where)
  const layers: LayerBlob[] = r.layers.map((l, i) => ({
    digest: l.digest,
    size: l.size,
    mediaType: l.mediaType,
    compression: layerCompression(l.mediaType, `${r.ref} layer ${i + 1}/${r.layers.length} ${l.digest}`),
    diffId: parsed.diffIds[i] as string,
    open: async (): Promise<Readable> => createReadStream(store.blobPath(l.digest)),
  }))
  return {
    ref: r.ref,
    platform: r.platform,
    manifestDigest: r.manifestDigest,
    configDigest: r.configDigest,
    ...(parsed.created === undefined ? {} : { created: parsed.created }),
    ...(parsed.architecture === undefined ? {} : { architecture: parsed.architecture }),
    ...(parsed.os === undefined ? {} : { os: parsed.os }),
    config: parsed.config,
    layers,
  }
}

export { pull, type PullEvent, type PullOptions, type PullResult }
export { DEFAULT_CONCURRENCY } from '../../registry/pull.js'
