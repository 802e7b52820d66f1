import { createReadStream } from 'node:fs'
import { Readable } from 'node:stream'
import * as tarStream from 'tar-stream'
import { BaleError, fromSystemError } from '../lib/errors.js'
import { type BundleManifest, MANIFEST_FILE, MAX_BUNDLE_MANIFEST_BYTES, parseManifestBytes, ROOTFS_FILE } from '../pipeline/bundle/manifest.js'
import { defaultConcurrency } from '../pipeline/bundle/writer.js'
import { decompressFrames } from '../pipeline/bundle/zstd-frames.js'

/**
 * Reading a bundle as the catalog needs it: manifest.json's exact bytes (they become an OCI
 * artifact's config blob, so they must be the bundle's own) and, optionally, rootfs.ext4 as a
 * stream (it becomes the artifact's zstd layer). Streams all the way: memory does not grow with
 * the rootfs.
 */
export interface BundleParts {
  readonly manifestBytes: Buffer
  readonly manifest: BundleManifest
}

/**
 * Read `file`'s manifest and, when `onRootfs` is given, hand it rootfs.ext4 as a stream (the
 * consumer must read it to the end). Without `onRootfs`, reading stops after the manifest.
 */
export async function readBundle(file: string, onRootfs?: (rootfs: AsyncIterable<Buffer>, manifest: BundleManifest) => Promise<void>): Promise<BundleParts> {
  let input: Readable
  try {
    input = createReadStream(file)
    await new Promise<void>((resolve, reject) => {
      input.once('open', () => resolve())
      input.once('error', reject)
    })
  } catch (e) {
    throw fromSystemError(e, file) ?? e
  }
  const tar = Readable.from(decompressFrames(input as AsyncIterable<Buffer>, { name: file, concurrency: defaultConcurrency() }))
  const extract = tarStream.extract()
  tar.on('error', (e) => extract.destroy(e))
  tar.pipe(extract)
  let parts: BundleParts | undefined
  try {
    let index = 0
    for await (const entry of extract) {
      const name = entry.header.name
      if (index === 0) {
        if (name !== MANIFEST_FILE || entry.header.type !== 'file') throw bad(file, `first member is '${name}', expected ${MANIFEST_FILE}`)
        if ((entry.header.size ?? 0) > MAX_BUNDLE_MANIFEST_BYTES) throw bad(file, `${MANIFEST_FILE} is larger than ${MAX_BUNDLE_MANIFEST_BYTES} bytes`)
        const chunks: Buffer[] = []
        for await (const c of entry) chunks.push(c as Buffer)
        const manifestBytes = Buffer.concat(chunks)
        parts = { manifestBytes, manifest: parseManifestBytes(manifestBytes, `${file}: ${MANIFEST_FILE}`) }
        if (onRootfs === undefined) break
      } else if (index === 1) {
        if (name !== ROOTFS_FILE || entry.header.type !== 'file') throw bad(file, `second member is '${name}', expected ${ROOTFS_FILE}`)
        await onRootfs?.(entry as AsyncIterable<Buffer>, (parts as BundleParts).manifest)
      } else {
        throw bad(file, `unexpected member '${name}' after ${ROOTFS_FILE}`)
      }
      index++
    }
    if (parts === undefined) throw bad(file, 'empty archive')
    if (onRootfs !== undefined && index < 2) throw bad(file, `no ${ROOTFS_FILE} member`)
    return parts
  } finally {
    extract.destroy()
    tar.destroy()
    input.destroy()
  }
}

function bad(file: string, why: string): BaleError {
  return new BaleError('E_INPUT', `${file}: not a bale bundle: ${why}`, { subject: file })
}
