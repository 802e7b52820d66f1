/**
 * Test fixtures: write OCI image layouts and `docker save` archives from in-memory layer tars.
 *
 * Everything is deterministic (fixed `created`, sorted JSON keys as written, no timestamps from the
 * clock), so tests can compare digests across runs. Tests that need a hostile layout write a good
 * one with these helpers and then edit index.json / blobs by hand.
 */
import { createHash } from 'node:crypto'
import { createWriteStream, promises as fs } from 'node:fs'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import { gzipSync } from 'node:zlib'
import { compress as zstdCompress } from '@mongodb-js/zstd'
import * as tarStream from 'tar-stream'

export interface FixtureLayer {
  tar: Buffer
  compression: 'none' | 'gzip' | 'zstd'
}

export interface FixtureImage {
  platform?: { os: string; architecture: string; variant?: string }
  layers: FixtureLayer[]
  config?: Partial<{
    Entrypoint: string[]
    Cmd: string[]
    Env: string[]
    User: string
    WorkingDir: string
    ExposedPorts: Record<string, object>
  }>
  created?: string
}

export interface OciLayoutResult {
  /** Digest of each image manifest, in the order of `images`. */
  manifestDigests: string[]
  /** Digest of the nested image index (only with `index: true`). */
  indexDigest?: string
  /** Digest of each image's config blob. */
  configDigests: string[]
  /** Stored (compressed) digest of each layer, per image. */
  layerDigests: string[][]
  /** Uncompressed digest of each layer, per image (what the config's rootfs.diff_ids holds). */
  diffIds: string[][]
}

export const FIXTURE_CREATED = '2024-01-02T03:04:05Z'

export const MEDIA = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: {
    none: 'application/vnd.oci.image.layer.v1.tar',
    gzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
    zstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  },
} as const

export function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

export async function compressLayer(layer: FixtureLayer): Promise<Buffer> {
  switch (layer.compression) {
    case 'none':
      return layer.tar
    case 'gzip':
      // mtime 0 in the gzip header comes from zlib's default, so the bytes are reproducible.
      return gzipSync(layer.tar)
    case 'zstd':
      return zstdCompress(layer.tar, 3)
  }
}

interface BuiltImage {
  config: Buffer
  configDigest: string
  layers: Array<{ stored: Buffer; digest: string; diffId: string; mediaType: string }>
  manifest: Buffer
  manifestDigest: string
}

async function buildImage(image: FixtureImage): Promise<BuiltImage> {
  const layers: BuiltImage['layers'] = []
  for (const layer of image.layers) {
    const stored = await compressLayer(layer)
    layers.push({ stored, digest: sha256(stored), diffId: sha256(layer.tar), mediaType: MEDIA.layer[layer.compression] })
  }
  const platform = image.platform ?? { os: 'linux', architecture: 'amd64' }
  const config = Buffer.from(
    JSON.stringify({
      architecture: platform.architecture,
      os: platform.os,
      ...(platform.variant === undefined ? {} : { variant: platform.variant }),
      created: image.created ?? FIXTURE_CREATED,
      config: image.config ?? {},
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
      history: layers.map(() => ({ created: image.created ?? FIXTURE_CREATED, created_by: 'bale test fixture' })),
    }),
  )
  const configDigest = sha256(config)
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA.manifest,
      config: { mediaType: MEDIA.config, digest: configDigest, size: config.length },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.stored.length })),
    }),
  )
  return { config, configDigest, layers, manifest, manifestDigest: sha256(manifest) }
}

async function writeBlob(dir: string, data: Buffer): Promise<string> {
  const digest = sha256(data)
  await fs.writeFile(path.join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length)), data)
  return digest
}

function platformOf(image: FixtureImage): { os: string; architecture: string; variant?: string } {
  return image.platform ?? { os: 'linux', architecture: 'amd64' }
}

/**
 * Write an OCI image layout at `dir` (created if needed).
 * - Without `index`: index.json lists every image manifest directly, each with its platform and,
 *   when `tag` is given, the `org.opencontainers.image.ref.name` annotation.
 * - With `index: true`: the manifests go into one nested image index blob, and index.json holds a
 *   single descriptor of that index (tagged when `tag` is given), as `skopeo copy --all` writes.
 */
export async function writeOciLayout(
  dir: string,
  images: FixtureImage[],
  opts: { tag?: string; index?: boolean } = {},
): Promise<OciLayoutResult> {
  await fs.mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true })
  await fs.writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))
  const built: BuiltImage[] = []
  for (const image of images) {
    const b = await buildImage(image)
    for (const l of b.layers) await writeBlob(dir, l.stored)
    await writeBlob(dir, b.config)
    await writeBlob(dir, b.manifest)
    built.push(b)
  }
  const annotations = opts.tag === undefined ? {} : { annotations: { 'org.opencontainers.image.ref.name': opts.tag } }
  const manifestDescriptors = built.map((b, i) => ({
    mediaType: MEDIA.manifest,
    digest: b.manifestDigest,
    size: b.manifest.length,
    platform: platformOf(images[i] as FixtureImage),
  }))
  let indexDigest: string | undefined
  let top: unknown[]
  if (opts.index) {
    const nested = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.index, manifests: manifestDescriptors }))
    indexDigest = await writeBlob(dir, nested)
    top = [{ mediaType: MEDIA.index, digest: indexDigest, size: nested.length, ...annotations }]
  } else {
    top = manifestDescriptors.map((d) => ({ ...d, ...annotations }))
  }
  await fs.writeFile(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.index, manifests: top }))
  return {
    manifestDigests: built.map((b) => b.manifestDigest),
    ...(indexDigest === undefined ? {} : { indexDigest }),
    configDigests: built.map((b) => b.configDigest),
    layerDigests: built.map((b) => b.layers.map((l) => l.digest)),
    diffIds: built.map((b) => b.layers.map((l) => l.diffId)),
  }
}

export interface DockerArchiveResult {
  configDigest: string
  diffIds: string[]
  /** Member names of the layers inside the archive, in order. */
  layerPaths: string[]
}

/**
 * Write a `docker save`-style archive to `file`.
 * - `layout: 'legacy'` (default; Docker < 25): `manifest.json` with Config/RepoTags/Layers,
 *   `<id>.json` config, `<id>/layer.tar` (+ `VERSION`, `json`), and a `repositories` file.
 * - `layout: 'oci'` (Docker ≥ 25): the same `manifest.json`, but Config and Layers name
 *   `blobs/sha256/<hex>` members, with `oci-layout` and `index.json` beside them.
 * A layer's `compression` is honoured (docker save writes plain tars, but `docker load` accepts
 * compressed ones), so readers must detect it by magic bytes.
 */
export async function writeDockerArchive(
  file: string,
  image: FixtureImage,
  opts: { layout?: 'legacy' | 'oci'; repoTag?: string } = {},
): Promise<DockerArchiveResult> {
  const b = await buildImage(image)
  const repoTag = opts.repoTag ?? 'fixture:latest'
  const layout = opts.layout ?? 'legacy'
  const members: Array<{ name: string; data: Buffer }> = []
  const dirs: string[] = []
  let configName: string
  const layerPaths: string[] = []
  if (layout === 'legacy') {
    configName = `${b.configDigest.slice('sha256:'.length)}.json`
    members.push({ name: configName, data: b.config })
    let parent: string | undefined
    for (const l of b.layers) {
      // Docker's legacy layer id is a chain-derived hash; any stable unique hex works for readers.
      const id = createHash('sha256').update(`${parent ?? ''}\n${l.diffId}`).digest('hex')
      dirs.push(`${id}/`)
      members.push({ name: `${id}/VERSION`, data: Buffer.from('1.0') })
      members.push({ name: `${id}/json`, data: Buffer.from(JSON.stringify({ id, ...(parent === undefined ? {} : { parent }) })) })
      members.push({ name: `${id}/layer.tar`, data: l.stored })
      layerPaths.push(`${id}/layer.tar`)
      parent = id
    }
    const [repo, tag] = repoTag.split(':')
    members.push({ name: 'repositories', data: Buffer.from(JSON.stringify({ [repo ?? 'fixture']: { [tag ?? 'latest']: parent ?? '' } })) })
  } else {
    dirs.push('blobs/', 'blobs/sha256/')
    configName = `blobs/sha256/${b.configDigest.slice('sha256:'.length)}`
    for (const l of b.layers) {
      const name = `blobs/sha256/${l.digest.slice('sha256:'.length)}`
      if (!layerPaths.includes(name)) members.push({ name, data: l.stored })
      layerPaths.push(name)
    }
    members.push({ name: configName, data: b.config })
    members.push({ name: `blobs/sha256/${b.manifestDigest.slice('sha256:'.length)}`, data: b.manifest })
    members.push({ name: 'oci-layout', data: Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })) })
    members.push({
      name: 'index.json',
      data: Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MEDIA.index,
          manifests: [{ mediaType: MEDIA.manifest, digest: b.manifestDigest, size: b.manifest.length, annotations: { 'io.containerd.image.name': repoTag, 'org.opencontainers.image.ref.name': repoTag.split(':')[1] ?? 'latest' } }],
        }),
      ),
    })
  }
  members.push({ name: 'manifest.json', data: Buffer.from(JSON.stringify([{ Config: configName, RepoTags: [repoTag], Layers: layerPaths }])) })

  const pack = tarStream.pack()
  const done = pipeline(pack, createWriteStream(file))
  const mtime = new Date(0)
  for (const d of dirs) pack.entry({ name: d, type: 'directory', mode: 0o755, mtime })
  for (const m of members) pack.entry({ name: m.name, mode: 0o644, mtime, size: m.data.length }, m.data)
  pack.finalize()
  await done
  return { configDigest: b.configDigest, diffIds: b.layers.map((l) => l.diffId), layerPaths }
}
