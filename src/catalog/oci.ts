import { randomBytes } from 'node:crypto'
import { createReadStream, createWriteStream, promises as fs } from 'node:fs'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import { removeQuietly, writeFileAtomic } from '../lib/atomic.js'
import { registerCleanup } from '../lib/cleanup.js'
import { BaleError } from '../lib/errors.js'
import { cacheDir, ociStoreDir } from '../lib/paths.js'
import { parseManifestBytes, MAX_BUNDLE_MANIFEST_BYTES, type BundleManifest } from '../pipeline/bundle/manifest.js'
import { DEFAULT_ZSTD_LEVEL, writeBundle } from '../pipeline/bundle/writer.js'
import { findCredentials } from '../registry/auth.js'
import { RegistryClient } from '../registry/client.js'
import { RegistryPusher } from '../registry/push.js'
import type { ImageReference } from '../registry/reference.js'
import { backoffDelay, DEFAULT_RETRY, errorCode, isTransientNetworkError, sleep } from '../registry/retry.js'
import { OciStore } from '../registry/store.js'
import {
  type ArtifactManifest,
  BUNDLE_ARTIFACT_TYPE,
  BUNDLE_CONFIG_TYPE,
  BUNDLE_LEVEL,
  BUNDLE_SHA256,
  CREATED,
  type Descriptor,
  DESCRIPTION,
  EMPTY_CONFIG,
  EMPTY_CONFIG_TYPE,
  encodeManifest,
  KERNEL_ARTIFACT_TYPE,
  KERNEL_CONFIG_TYPE,
  KERNEL_FILE_TYPE,
  KERNEL_REF,
  KERNELS_REPOSITORY,
  LATEST_TAG,
  OCI_MANIFEST_TYPE,
  parseArtifactManifest,
  readZstdLayer,
  ROOTFS_LAYER_TYPE,
  sha256Digest,
  subReference,
  TITLE,
  VERSION,
  writeZstdLayer,
} from './artifact.js'
import { readBundle } from './bundle-io.js'
import type { BuiltBundle } from './build.js'
import { DigestingStream } from './integrity.js'
import { kernelFiles, stageKernel } from './kernels.js'
import type { PublishStatus } from './publish-dir.js'
import { compareVersions } from './schema.js'

/**
 * Publishing to and fetching from a registry (artifact.ts describes the artifacts). Push is
 * idempotent: a tag already pointing at the manifest we would write is left alone, and a blob
 * the registry has is never uploaded again. The zstd rootfs layer is derived from the bundle,
 * so its digest is remembered per bundle sha256 and level (`<cache>/catalog/layers/`): a second
 * publish of an unchanged bundle does not recompress anything.
 */
export interface RegistryAccess {
  readonly creds?: string
  readonly insecure?: boolean
  readonly env?: NodeJS.ProcessEnv
}

export interface OciPublishOptions extends RegistryAccess {
  readonly base: ImageReference
  readonly bundles: readonly BuiltBundle[]
  readonly kernels: boolean
  /** zstd level for the rootfs layer (default: the level the bundle was built with). */
  readonly level?: number
  readonly onEvent?: (e: { type: 'push'; what: string; bytes: number }) => void
}

export interface OciPublishResult {
  readonly target: string
  readonly bundles: ReadonlyArray<{ name: string; version: string; reference: string; digest: string; status: PublishStatus }>
  readonly kernels: ReadonlyArray<{ ref: string; reference: string; digest: string; status: PublishStatus }>
}

function layerRecordPath(env: NodeJS.ProcessEnv, sha256: string, level: number): string {
  return path.join(cacheDir(env), 'catalog', 'layers', `${sha256}-l${level}.json`)
}

async function readLayerRecord(file: string): Promise<Descriptor | undefined> {
  try {
    const doc = JSON.parse(await fs.readFile(file, 'utf8')) as { digest?: unknown; size?: unknown }
    if (typeof doc.digest === 'string' && /^sha256:[0-9a-f]{64}$/.test(doc.digest) && typeof doc.size === 'number') {
      return { mediaType: ROOTFS_LAYER_TYPE, digest: doc.digest, size: doc.size }
    }
  } catch {
    // No record (or a damaged one): the layer is derived again.
  }
  return undefined
}

async function pusherFor(ref: ImageReference, access: RegistryAccess): Promise<RegistryPusher> {
  const credentials = await findCredentials(ref.domain, { creds: access.creds, env: access.env ?? process.env })
  return new RegistryPusher(ref, { insecure: access.insecure, ...(credentials === undefined ? {} : { credentials }) })
}

/** Push `manifest` with its blobs under each tag unless the tag already points at it. */
async function pushArtifact(
  pusher: RegistryPusher,
  tags: readonly string[],
  manifest: ArtifactManifest,
  blobs: ReadonlyArray<{ desc: Descriptor; source: () => Promise<{ path: string } | { bytes: Buffer }> }>,
  onPush?: (what: string, bytes: number) => void,
): Promise<{ digest: string; status: PublishStatus }> {
  const bytes = encodeManifest(manifest)
  const digest = sha256Digest(bytes)
  const current = await Promise.all(tags.map((t) => pusher.manifestDigest(t, OCI_MANIFEST_TYPE)))
  if (current.every((d) => d === digest)) return { digest, status: 'unchanged' }
  for (const b of blobs) {
    if (await pusher.hasBlob(b.desc)) continue
    onPush?.(`${pusher.name}@${b.desc.digest}`, b.desc.size)
    await pusher.pushBlob(b.desc, await b.source())
  }
  for (const t of tags) await pusher.pushManifest(t, bytes, OCI_MANIFEST_TYPE)
  return { digest, status: current.every((d) => d === undefined) ? 'added' : 'updated' }
}

export async function publishToRegistry(opts: OciPublishOptions): Promise<OciPublishResult> {
  const env = opts.env ?? process.env
  const target = `oci://${opts.base.domain}/${opts.base.repository}`
  const bundles: Array<{ name: string; version: string; reference: string; digest: string; status: PublishStatus }> = []
  const kernels: Array<{ ref: string; reference: string; digest: string; status: PublishStatus }> = []
  for (const b of opts.bundles) {
    const ref = subReference(opts.base, b.name, b.version)
    const pusher = await pusherFor(ref, opts)
    try {
      const level = opts.level ?? b.zstdLevel
      const { manifestBytes, manifest } = await readBundle(b.file)
      if (manifest.name !== b.name || manifest.version !== b.version) {
        throw new BaleError('E_INPUT', `${b.file}: manifest.json says ${manifest.name}@${manifest.version}, the build record ${b.name}@${b.version}`, { subject: b.file })
      }
      const config: Descriptor = { mediaType: BUNDLE_CONFIG_TYPE, digest: sha256Digest(manifestBytes), size: manifestBytes.length }
      const recFile = layerRecordPath(env, b.sha256, level)
      let layer = await readLayerRecord(recFile)
      let layerFile: string | undefined
      const unregister: Array<() => void> = []
      try {
        if (layer === undefined || !(await pusher.hasBlob(layer))) {
          // Derive the layer (and remember its digest) only when the registry lacks it.
          await fs.mkdir(path.dirname(recFile), { recursive: true })
          layerFile = path.join(path.dirname(recFile), `.${b.sha256}-l${level}.${process.pid}-${randomBytes(4).toString('hex')}.zst`)
          unregister.push(registerCleanup(layerFile))
          const out = layerFile
          let made: { digest: string; size: number } | undefined
          await readBundle(b.file, async (rootfs) => {
            made = await writeZstdLayer(rootfs, out, level)
          })
          if (made === undefined) throw new BaleError('E_INPUT', `${b.file}: no rootfs`, { subject: b.file })
          layer = { mediaType: ROOTFS_LAYER_TYPE, ...made }
          await writeFileAtomic(recFile, JSON.stringify({ digest: made.digest, size: made.size }))
        }
        const layerDesc: Descriptor = { ...layer, annotations: { [TITLE]: 'rootfs.ext4.zst' } }
        const artifact = bundleArtifact(b, manifest, config, layerDesc, level)
        const from = layerFile
        const tags = (await latestMayMove(ref, b.version, opts)) ? [b.version, LATEST_TAG] : [b.version]
        const res = await pushArtifact(
          pusher,
          tags,
          artifact,
          [
            { desc: config, source: async () => ({ bytes: manifestBytes }) },
            {
              desc: layerDesc,
              source: async () => {
                if (from === undefined) throw new BaleError('E_STATE', `layer ${layerDesc.digest} vanished from ${pusher.name} during the publish`, { subject: layerDesc.digest })
                return { path: from }
              },
            },
          ],
          (what, bytes) => opts.onEvent?.({ type: 'push', what, bytes }),
        )
        bundles.push({ name: b.name, version: b.version, reference: `${ref.domain}/${ref.repository}:${b.version}`, digest: res.digest, status: res.status })
      } finally {
        if (layerFile !== undefined) await removeQuietly(layerFile)
        for (const u of unregister) u()
      }
    } finally {
      await pusher.close()
    }
  }
  if (opts.kernels) {
    const refs = new Map<string, string>()
    for (const b of opts.bundles) if (!refs.has(b.kernel_ref)) refs.set(b.kernel_ref, `${b.name}@${b.version}`)
    for (const [kref, neededBy] of refs) {
      const ref = subReference(opts.base, KERNELS_REPOSITORY, kref)
      const pusher = await pusherFor(ref, opts)
      try {
        const files = await kernelFiles(kref, neededBy, env)
        const cfgFile = files.find((f) => f.name === 'kernel.json')
        const cfgBytes = cfgFile === undefined ? EMPTY_CONFIG : await fs.readFile(cfgFile.path)
        const config: Descriptor = { mediaType: cfgFile === undefined ? EMPTY_CONFIG_TYPE : KERNEL_CONFIG_TYPE, digest: sha256Digest(cfgBytes), size: cfgBytes.length }
        const layers: Array<{ desc: Descriptor; source: () => Promise<{ path: string }> }> = []
        for (const f of files) {
          if (f === cfgFile) continue
          const d = new DigestingStream('sha256')
          await pipeline(createReadStream(f.path), d, async (s: AsyncIterable<unknown>) => {
            for await (const _ of s) {
              // hashing only
            }
          })
          const dg = d.digests()
          layers.push({ desc: { mediaType: KERNEL_FILE_TYPE, digest: `sha256:${dg.sha256}`, size: dg.size, annotations: { [TITLE]: f.name } }, source: async () => ({ path: f.path }) })
        }
        const artifact: ArtifactManifest = {
          schemaVersion: 2,
          mediaType: OCI_MANIFEST_TYPE,
          artifactType: KERNEL_ARTIFACT_TYPE,
          config,
          layers: layers.map((l) => l.desc),
          annotations: { [TITLE]: kref, [KERNEL_REF]: kref },
        }
        const res = await pushArtifact(pusher, [kref], artifact, [{ desc: config, source: async () => ({ bytes: cfgBytes }) }, ...layers], (what, bytes) =>
          opts.onEvent?.({ type: 'push', what, bytes }),
        )
        kernels.push({ ref: kref, reference: `${ref.domain}/${ref.repository}:${kref}`, digest: res.digest, status: res.status })
      } finally {
        await pusher.close()
      }
    }
  }
  return { target, bundles, kernels }
}

/**
 * `latest` follows the newest version by natural order (what a directory catalog serves for a
 * versionless fetch too), not the last one published: republishing an old version must not
 * move it back. The current `latest` manifest's version annotation says where it points.
 */
async function latestMayMove(ref: ImageReference, version: string, access: RegistryAccess): Promise<boolean> {
  const client = await clientFor(ref, access)
  try {
    const { bytes } = await client.fetchManifest(LATEST_TAG)
    const current = parseArtifactManifest(bytes, `${ref.domain}/${ref.repository}:${LATEST_TAG}`, BUNDLE_ARTIFACT_TYPE, BUNDLE_CONFIG_TYPE).annotations?.[VERSION]
    return current === undefined || compareVersions(version, current) >= 0
  } catch (e) {
    if (e instanceof BaleError && e.code === 'E_NOT_FOUND') return true
    throw e
  } finally {
    await client.close()
  }
}

function bundleArtifact(b: BuiltBundle, m: BundleManifest, config: Descriptor, layer: Descriptor, level: number): ArtifactManifest {
  return {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST_TYPE,
    artifactType: BUNDLE_ARTIFACT_TYPE,
    config,
    layers: [layer],
    annotations: {
      [TITLE]: m.name,
      [VERSION]: m.version,
      [CREATED]: m.created,
      ...(m.description === '' ? {} : { [DESCRIPTION]: m.description }),
      [KERNEL_REF]: m.kernel_ref,
      [BUNDLE_SHA256]: b.sha256,
      [BUNDLE_LEVEL]: String(level),
    },
  }
}

/** A blob from the registry into the content-addressed store, resuming an interrupted download; returns its path. */
async function ensureBlob(store: OciStore, client: RegistryClient, desc: Descriptor, what: string): Promise<{ path: string; downloaded: boolean; resumedFrom: number }> {
  if (await store.hasBlob(desc.digest, desc.size)) return { path: store.blobPath(desc.digest), downloaded: false, resumedFrom: 0 }
  await store.init()
  const partial = await store.openPartial(desc)
  if (partial === undefined) return { path: store.blobPath(desc.digest), downloaded: false, resumedFrom: 0 }
  const resumedFrom = partial.offset
  try {
    let failures = 0
    while (partial.offset < desc.size) {
      const before = partial.offset
      try {
        const { res, start } = await client.openBlob(desc.digest, partial.offset)
        if (start === 0 && partial.offset > 0) await partial.restart()
        await partial.append(res.body, () => undefined)
        if (partial.offset < desc.size) throw new BaleError('E_NETWORK', `${what}: response ended at byte ${partial.offset} of ${desc.size}`, { subject: desc.digest, temporary: true })
      } catch (e) {
        const transient = e instanceof BaleError ? e.temporary : isTransientNetworkError(e)
        failures = partial.offset > before ? 1 : failures + 1
        if (!transient || failures >= DEFAULT_RETRY.attempts) {
          if (e instanceof BaleError) throw e
          throw new BaleError('E_NETWORK', `${what}: ${errorCode(e) ?? (e as Error).message} (${partial.offset} of ${desc.size} bytes kept; rerun to resume)`, { subject: desc.digest, cause: e })
        }
        await sleep(backoffDelay(DEFAULT_RETRY, failures))
      }
    }
    try {
      await partial.commit()
    } catch (e) {
      throw new BaleError('E_DIGEST', `${what}: ${(e as Error).message}`, { subject: desc.digest, cause: e })
    }
    return { path: store.blobPath(desc.digest), downloaded: true, resumedFrom }
  } finally {
    await partial.release()
  }
}

async function clientFor(ref: ImageReference, access: RegistryAccess): Promise<RegistryClient> {
  const credentials = await findCredentials(ref.domain, { creds: access.creds, env: access.env ?? process.env })
  return new RegistryClient(ref, { insecure: access.insecure, ...(credentials === undefined ? {} : { credentials }) })
}

export interface OciBundle {
  readonly reference: string
  readonly manifestDigest: string
  readonly manifest: BundleManifest
  /** The published bundle file's sha256, when the artifact records it. */
  readonly bundleSha256?: string
  readonly level: number
  /** Assemble the bundle file at `out` (downloading the layer if needed); returns its digests. */
  assemble(out: string): Promise<{ sha256: string; size: number; integrity: string; resumedFrom: number; downloaded: boolean }>
  close(): Promise<void>
}

/** Resolve `<base>/<name>:<tag>` to a bundle artifact and read its manifest.json (small); the rootfs layer is fetched by assemble(). */
export async function openOciBundle(base: ImageReference, name: string, tag: string, access: RegistryAccess): Promise<OciBundle> {
  const env = access.env ?? process.env
  const ref = subReference(base, name, tag)
  const reference = `${ref.domain}/${ref.repository}:${tag}`
  const client = await clientFor(ref, access)
  try {
    const { bytes, digest } = await client.fetchManifest(tag)
    const art = parseArtifactManifest(bytes, reference, BUNDLE_ARTIFACT_TYPE, BUNDLE_CONFIG_TYPE)
    const layerDesc = art.layers[0]
    if (art.layers.length !== 1 || layerDesc === undefined || layerDesc.mediaType !== ROOTFS_LAYER_TYPE) {
      throw new BaleError('E_INPUT', `${reference}: a bundle artifact has exactly one ${ROOTFS_LAYER_TYPE} layer`, { subject: reference })
    }
    if (art.config.size > MAX_BUNDLE_MANIFEST_BYTES) throw new BaleError('E_INPUT', `${reference}: config of ${art.config.size} bytes is too large for a bundle manifest`, { subject: reference })
    const store = new OciStore(ociStoreDir(env))
    const cfg = await ensureBlob(store, client, art.config, `config ${art.config.digest} of ${reference}`)
    const manifest = parseManifestBytes(await fs.readFile(cfg.path), `${reference}: manifest.json`)
    if (manifest.name !== name) throw new BaleError('E_INPUT', `${reference}: manifest.json names bundle '${manifest.name}'`, { subject: reference })
    const levelText = art.annotations?.[BUNDLE_LEVEL]
    const level = levelText !== undefined && /^\d{1,2}$/.test(levelText) ? Number(levelText) : DEFAULT_ZSTD_LEVEL
    const bundleSha256 = art.annotations?.[BUNDLE_SHA256]
    return {
      reference,
      manifestDigest: digest,
      manifest,
      ...(bundleSha256 === undefined ? {} : { bundleSha256 }),
      level,
      assemble: async (out) => {
        const layer = await ensureBlob(store, client, layerDesc, `layer ${layerDesc.digest} of ${reference}`)
        const rootfsTmp = `${out}.rootfs-${randomBytes(4).toString('hex')}`
        const unregister = registerCleanup(rootfsTmp)
        try {
          const d = new DigestingStream('sha256')
          const frames = readZstdLayer(layer.path, `layer ${layerDesc.digest}`)
          await pipeline(frames, d, createWriteStream(rootfsTmp, { flags: 'wx' }))
          const got = d.digests()
          if (got.size !== manifest.rootfs.size || got.sha256 !== manifest.rootfs.sha256) {
            throw new BaleError('E_DIGEST', `${reference}: rootfs.ext4 expected sha256:${manifest.rootfs.sha256} (${manifest.rootfs.size} bytes) got sha256:${got.sha256} (${got.size} bytes)`, {
              subject: reference,
            })
          }
          const written = await writeBundle({ manifest, rootfsPath: rootfsTmp, out, level })
          return { sha256: written.sha256, size: written.size, integrity: written.integrity, resumedFrom: layer.resumedFrom, downloaded: layer.downloaded }
        } finally {
          await removeQuietly(rootfsTmp)
          unregister()
        }
      },
      close: () => client.close(),
    }
  } catch (e) {
    await client.close()
    throw e
  }
}

/** Fetch `<base>/kernels:<ref>` into the kernel store. */
export async function fetchOciKernel(base: ImageReference, kref: string, access: RegistryAccess): Promise<'installed' | 'unchanged'> {
  const env = access.env ?? process.env
  const ref = subReference(base, KERNELS_REPOSITORY, kref)
  const reference = `${ref.domain}/${ref.repository}:${kref}`
  const client = await clientFor(ref, access)
  const stage = await stageKernel(kref, env)
  try {
    const { bytes } = await client.fetchManifest(kref)
    const art = parseArtifactManifest(bytes, reference, KERNEL_ARTIFACT_TYPE, [KERNEL_CONFIG_TYPE, EMPTY_CONFIG_TYPE])
    const store = new OciStore(ociStoreDir(env))
    const names = new Set<string>()
    const place = async (desc: Descriptor, name: string): Promise<void> => {
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/.test(name) || names.has(name)) {
        throw new BaleError('E_UNSAFE_PATH', `${reference}: kernel file name '${name}' is not a plain, unique file name`, { subject: reference })
      }
      names.add(name)
      const blob = await ensureBlob(store, client, desc, `${name} (${desc.digest}) of ${reference}`)
      await fs.copyFile(blob.path, path.join(stage.dir, name))
    }
    if (art.config.mediaType === KERNEL_CONFIG_TYPE) await place(art.config, 'kernel.json')
    for (const l of art.layers) {
      if (l.mediaType !== KERNEL_FILE_TYPE) throw new BaleError('E_INPUT', `${reference}: unexpected layer type ${l.mediaType}`, { subject: reference })
      await place(l, l.annotations?.[TITLE] ?? '')
    }
    return await stage.commit()
  } finally {
    await stage.discard()
    await client.close()
  }
}
