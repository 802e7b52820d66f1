import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { registerCleanup } from '../lib/cleanup.js'
import { isBaleError } from '../lib/errors.js'
import type { BundleManifest } from './bundle/manifest.js'
import { type BundleManifestDraft, writeBundle } from './bundle/writer.js'
import { buildExt4, mkfsReadsTar } from './ext4/index.js'
import { applyReadLayer, createTree, type ReadLayer, readLayer } from './flatten/index.js'
import { injectGuest } from './inject/index.js'
import { type OpenedLayer, openLayerTar, storedBytesMismatch } from './source/layer.js'
import type { ImageSource, LayerBlob, ResolvedImage } from './source/types.js'
import { type FlatTree, readContent } from './tree.js'

/** Everything make-bundle needs, resolved and validated once by the command (STYLE.md item 1). */
export interface MakeBundleOptions {
  readonly source: ImageSource
  /** Absolute path of the bundle to write; written to a temp name beside it, then renamed. */
  readonly out: string
  readonly name?: string
  readonly version?: string
  readonly description: string
  readonly distro?: string
  readonly arch?: string
  readonly kernelRef: string
  readonly sizeBytes?: number
  readonly level: number
  readonly initBinary: string
  readonly agentVersion: string
  /** Parent of the staging directory (default: the OS temp dir). */
  readonly tmpDir?: string
  /** SOURCE_DATE_EPOCH, when set: overrides every timestamp derived from the image. */
  readonly sourceDateEpoch?: number
}

export type MakeBundleEvent =
  | { stage: 'resolve'; ref: string; platform: string; layers: number; manifestDigest?: string }
  | { stage: 'layer'; index: number; total: number; digest?: string; entries: number; bytes: number }
  | { stage: 'ext4'; sizeBytes: number; inodes: number }
  | { stage: 'bundle' }

export interface MakeBundleResult {
  path: string
  sha256: string
  size: number
  integrity: string
  manifest: BundleManifest
}

/** A layer being read ahead of its turn to be applied (see the loop in makeBundle). */
interface ReadingLayer {
  readonly blob: LayerBlob
  readonly opened: Promise<OpenedLayer>
  readonly reading: Promise<ReadLayer>
}

export async function makeBundle(opts: MakeBundleOptions, onEvent: (e: MakeBundleEvent) => void = () => {}): Promise<MakeBundleResult> {
  const staging = await fs.mkdtemp(path.join(opts.tmpDir ?? os.tmpdir(), 'bale-staging-'))
  const unregister = registerCleanup(staging)
  try {
    const image = await opts.source.resolve()
    onEvent({ stage: 'resolve', ref: image.ref, platform: image.platform, layers: image.layers.length, manifestDigest: image.manifestDigest })

    // Where mke2fs reads a tar on stdin, contents are spooled per layer and streamed to it: no file
    // is created per image file (ext4/tar-input.ts). Otherwise a blob per file, staged as a directory.
    const tarInput = await mkfsReadsTar(staging)
    const tree = await createTree(staging, { packed: tarInput })
    const layerRecords: BundleManifest['source']['layers'] = []
    // Layer i+1 is read (decompressed, verified, its files written to blobs) while layer i is
    // finished and applied: reading does not depend on the tree, applying is in order. Two at
    // a time: the build machine has two cores, and creating files is what each mostly waits on.
    const read = (index: number): ReadingLayer => {
      const blob = image.layers[index] as LayerBlob
      const label = `layer ${index + 1}/${image.layers.length}${blob.digest ? ` ${blob.digest}` : ''}`
      const opened = openLayerTar(blob, label)
      const reading = opened.then(({ tar, digests }) => {
        // Attach a handler now: if flatten fails first, the digest promise must not reject unobserved.
        digests.catch(() => undefined)
        return readLayer(tree, tar, { index, label }).catch(async (e: unknown) => {
          throw (isBaleError(e) && e.code === 'E_DIGEST' ? undefined : await storedBytesMismatch(blob, label)) ?? e
        })
      })
      reading.catch(() => undefined)
      return { blob, opened, reading }
    }
    let next = image.layers.length > 0 ? read(0) : undefined
    try {
      for (let index = 0; next !== undefined; index++) {
        const cur = next
        next = index + 1 < image.layers.length ? read(index + 1) : undefined
        const stats = await applyReadLayer(tree, await cur.reading)
        const d = await (await cur.opened).digests
        layerRecords.push({ digest: cur.blob.digest, diff_id: d.diffId, media_type: cur.blob.mediaType, size: cur.blob.size ?? d.size })
        onEvent({ stage: 'layer', index, total: image.layers.length, digest: cur.blob.digest, entries: stats.entries, bytes: stats.bytes })
      }
    } catch (e) {
      // The layer read ahead must be stopped, and its blob writer done, before staging goes.
      if (next !== undefined) {
        const ahead = next
        await ahead.opened.then(({ tar }) => tar.destroy(), () => undefined)
        await ahead.reading.catch(() => undefined)
      }
      throw e
    }

    const epoch = opts.sourceDateEpoch ?? imageEpoch(image) ?? newestMtime(tree)
    const injected = await injectGuest(tree, { initBinary: opts.initBinary, config: image.config, mtime: epoch })

    // Reproducible identity: the filesystem UUID and htree hash seed come from the content,
    // so the same layers, config, guest and options give the same bytes.
    const contentKey = JSON.stringify({
      layers: layerRecords.map((l) => l.diff_id),
      config: injected.config,
      init: injected.initSha256,
      size: opts.sizeBytes ?? null,
      epoch,
    })
    // Read from the staged blobs before the ext4 stage, which may consume them.
    const distro = opts.distro ?? (await detectDistro(tree)) ?? 'unknown'
    const rootfsTmp = path.join(staging, 'rootfs.ext4')
    const plan = await buildExt4(tree, rootfsTmp, {
      sizeBytes: opts.sizeBytes,
      uuid: uuidFrom('fs-uuid', contentKey),
      hashSeed: uuidFrom('hash-seed', contentKey),
      timestamp: epoch,
      // Nothing reads the tree's blobs after this; the staging directory goes with them.
      consumeBlobs: true,
      input: tarInput ? 'tar' : 'dir',
    })
    onEvent({ stage: 'ext4', sizeBytes: plan.sizeBytes, inodes: plan.inodes })

    const manifest: BundleManifestDraft = {
      schema_version: 1,
      name: opts.name ?? defaultName(image.ref),
      version: opts.version ?? defaultVersion(image.ref),
      description: opts.description,
      distro,
      arch: opts.arch ?? image.architecture ?? 'amd64',
      kernel_ref: opts.kernelRef,
      created: new Date(epoch * 1000).toISOString(),
      source: {
        ref: image.ref,
        platform: image.platform,
        manifest_digest: image.manifestDigest,
        config_digest: image.configDigest,
        layers: layerRecords,
      },
      config: {
        entrypoint: image.config.entrypoint ?? [],
        cmd: image.config.cmd ?? [],
        env: image.config.env ?? [],
        user: image.config.user ?? '',
        workdir: image.config.workingDir ?? '',
        exposed_ports: image.config.exposedPorts ?? [],
      },
      // sha256: taken by the writer as it compresses the image.
      rootfs: { file: 'rootfs.ext4', size: plan.sizeBytes },
      agent: { version: opts.agentVersion, sha256: injected.initSha256 },
    }

    onEvent({ stage: 'bundle' })
    return await writeBundle({ manifest, rootfsPath: rootfsTmp, out: opts.out, level: opts.level })
  } finally {
    await opts.source.close().catch(() => undefined)
    await fs.rm(staging, { recursive: true, force: true })
    unregister()
  }
}

function imageEpoch(image: ResolvedImage): number | undefined {
  if (!image.created) return undefined
  const t = Date.parse(image.created)
  return Number.isFinite(t) && t >= 0 ? Math.floor(t / 1000) : undefined
}

/** A bare rootfs tar has no `created`: the newest entry is the most honest stable date. */
function newestMtime(tree: FlatTree): number {
  let max = 0
  for (const inode of tree.entries.values()) if (inode.mtime > max) max = inode.mtime
  return max
}

/** RFC 4122 version-4-shaped UUID from a hash, so mkfs accepts it and it is stable for the content. */
export function uuidFrom(purpose: string, key: string): string {
  const h = createHash('sha256').update(`bale:${purpose}\0${key}`).digest()
  h[6] = (h[6]! & 0x0f) | 0x40
  h[8] = (h[8]! & 0x3f) | 0x80
  const x = h.subarray(0, 16).toString('hex')
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`
}

/** `registry:5000/team/app:1.2` → `app`; `/x/demo.tar.gz` → `demo`; `oci-layout:/x/img:tag` → `img`. */
export function defaultName(ref: string): string {
  let s = ref.replace(/@sha256:[0-9a-f]+$/, '')
  s = s.replace(/^[a-z-]+:(?=\/)/, '') // strip 'oci-layout:' style prefixes before a path
  const last = s.split('/').filter(Boolean).pop() ?? 'image'
  const base = last.replace(/:[^:]*$/, '').replace(/\.(tar(\.(gz|zst|zstd))?|tgz)$/, '')
  const clean = base.toLowerCase().replace(/[^a-z0-9._-]+/g, '-').replace(/^[-.]+|[-.]+$/g, '')
  return clean || 'image'
}

export function defaultVersion(ref: string): string {
  const noDigest = ref.replace(/@sha256:[0-9a-f]+$/, '')
  const last = noDigest.split('/').pop() ?? ''
  const i = last.lastIndexOf(':')
  return i > 0 ? last.slice(i + 1) : 'latest'
}

/** `ID-VERSION_ID` from the image's os-release (following one in-image symlink), e.g. `debian-12`. */
async function detectDistro(tree: FlatTree): Promise<string | undefined> {
  for (const candidate of ['etc/os-release', 'usr/lib/os-release']) {
    let inode = tree.entries.get(candidate)
    if (inode?.kind === 'symlink' && inode.linkTarget) {
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(`/${candidate}`), inode.linkTarget)).replace(/^\/+/, '')
      inode = tree.entries.get(target)
    }
    if (inode?.kind !== 'file' || inode.size > 64 * 1024) continue
    const text = (await readContent(tree, inode)).toString('utf8')
    const field = (k: string): string | undefined => text.match(new RegExp(`^${k}="?([^"\\n]*)"?$`, 'm'))?.[1]
    const id = field('ID')
    if (!id) continue
    const ver = field('VERSION_ID')
    return ver ? `${id}-${ver}` : id
  }
  return undefined
}
