import { createReadStream, promises as fs } from 'node:fs'
import path from 'node:path'
import { BaleError } from '../../lib/errors.js'
import {
  checkDigest,
  type Descriptor,
  formatPlatform,
  isIndexMediaType,
  isManifestMediaType,
  layerCompression,
  MAX_CONFIG_BYTES,
  MAX_INDEX_DEPTH,
  MAX_MANIFEST_BYTES,
  parseImageConfig,
  parseImageManifest,
  parseIndex,
  parsePlatform,
  type Platform,
  platformMatches,
  verifyBlob,
} from './oci.js'
import { readCapped, statOr } from './read.js'
import type { ImageSource, LayerBlob, ResolvedImage } from './types.js'

/**
 * Index, manifest and config documents read while resolving one image. Real layouts need a
 * handful (a multi-platform index lists tens of manifests); a hostile index.json listing the
 * same nested index thousands of times must not turn into gigabytes of reads.
 */
const MAX_DOCUMENTS = 512

/** The annotation an OCI layout uses for a tag (image-spec annotations.md). */
const REF_NAME = 'org.opencontainers.image.ref.name'

/**
 * An OCI image layout on disk (`DIR` or `DIR:TAG`, as skopeo's `oci:` transport spells it).
 * index.json → (nested) index → the manifest for the platform → config and layers. Every
 * manifest, index and config blob is read under a size cap and checked against its
 * descriptor; layer blobs are checked as they stream (layer.ts). Digests are validated before
 * they become paths, so no descriptor can name a file outside `DIR/blobs/sha256/`.
 */
export function ociLayoutSource(spec: string, opts: { platform: string }): ImageSource {
  return {
    resolve: async () => resolveLayout(spec, parsePlatform(opts.platform)),
    close: async () => undefined,
  }
}

interface Candidate {
  desc: Descriptor
  /** From the descriptor, or (when it has none) from the manifest's config. */
  platform?: Platform
}

async function resolveLayout(spec: string, want: Platform): Promise<ResolvedImage> {
  const { dir, tag } = await splitSpec(spec)
  const ref = `oci-layout:${dir}${tag === undefined ? '' : `:${tag}`}`
  const st = await statOr(dir, () => new BaleError('E_NOT_FOUND', `${dir}: no such directory`, { subject: dir }))
  if (!st.isDirectory()) throw new BaleError('E_INPUT', `${dir}: not a directory (an OCI image layout is a directory)`, { subject: dir })

  const layoutFile = path.join(dir, 'oci-layout')
  const notLayout = (what: string) => () => new BaleError('E_INPUT', `${dir}: not an OCI image layout (no ${what})`, { subject: dir })
  const layoutJson = await readCapped(layoutFile, MAX_MANIFEST_BYTES, 'oci-layout file', notLayout('oci-layout file'))
  let version: unknown
  try {
    version = (JSON.parse(layoutJson.toString('utf8')) as { imageLayoutVersion?: unknown }).imageLayoutVersion
  } catch {
    throw new BaleError('E_INPUT', `${layoutFile}: not valid JSON`, { subject: layoutFile })
  }
  if (typeof version !== 'string') throw new BaleError('E_INPUT', `${layoutFile}: imageLayoutVersion missing`, { subject: layoutFile })

  const indexFile = path.join(dir, 'index.json')
  const index = parseIndex(await readCapped(indexFile, MAX_MANIFEST_BYTES, 'index', notLayout('index.json')), indexFile)
  index.manifests.forEach((d, i) => checkDigest(d.digest, `${indexFile}: manifests[${i}]`))

  let tops = index.manifests
  const tags = [...new Set(tops.map((d) => d.annotations?.[REF_NAME]).filter((t): t is string => t !== undefined))]
  if (tag !== undefined) {
    tops = tops.filter((d) => d.annotations?.[REF_NAME] === tag)
    if (tops.length === 0) {
      throw new BaleError('E_NOT_FOUND', `${dir}: no image tagged '${tag}' (tags: ${tags.length > 0 ? tags.join(', ') : 'none'})`, { subject: `${dir}:${tag}` })
    }
  } else if (tags.length > 1) {
    throw new BaleError('E_NOT_FOUND', `${dir}: holds several images (tags: ${tags.join(', ')}); name one as ${dir}:TAG`, { subject: dir })
  }
  if (tops.length === 0) throw new BaleError('E_NOT_FOUND', `${indexFile}: lists no images`, { subject: indexFile })

  const blobs = new BlobReader(dir)
  const candidates: Candidate[] = []
  await collect(blobs, tops, 0, candidates)

  // Descriptors without a platform (single-image layouts written by skopeo/umoci): the config says.
  const loaded = new Map<Descriptor, Awaited<ReturnType<typeof loadManifest>>>()
  for (const c of candidates) {
    if (c.platform !== undefined) continue
    const m = await loadManifest(blobs, c.desc)
    loaded.set(c.desc, m)
    if (m.parsed.os !== undefined && m.parsed.architecture !== undefined) {
      c.platform = { os: m.parsed.os, architecture: m.parsed.architecture, ...(m.parsed.variant === undefined ? {} : { variant: m.parsed.variant }) }
    }
  }
  const chosen = candidates.find((c) => c.platform !== undefined && platformMatches(want, c.platform))
  if (chosen === undefined) {
    // Attestation manifests carry the platform unknown/unknown: not images, not worth listing.
    const available = [...new Set(candidates.flatMap((c) => (c.platform && c.platform.os !== 'unknown' ? [formatPlatform(c.platform)] : [])))]
    throw new BaleError('E_NOT_FOUND', `${ref}: no image for ${formatPlatform(want)} (available: ${available.length > 0 ? available.join(', ') : 'none'})`, { subject: ref })
  }

  const { manifest, configDigest, parsed } = loaded.get(chosen.desc) ?? (await loadManifest(blobs, chosen.desc))
  const where = `${ref} manifest ${chosen.desc.digest}`
  if (parsed.diffIds.length !== manifest.layers.length) {
    throw new BaleError('E_INPUT', `${where}: ${manifest.layers.length} layers but the config lists ${parsed.diffIds.length} diff_ids`, { subject: chosen.desc.digest })
  }
  const layers: LayerBlob[] = []
  for (const [i, l] of manifest.layers.entries()) {
    const what = `${where}: layer ${i + 1}`
    const compression = layerCompression(l.mediaType, what)
    const file = await blobs.existing(l.digest, `layer ${i + 1}`)
    layers.push({
      digest: l.digest,
      size: l.size,
      mediaType: l.mediaType ?? '',
      compression,
      diffId: parsed.diffIds[i],
      open: async () => createReadStream(file),
    })
  }
  const platform = chosen.platform ?? want
  return {
    ref,
    platform: formatPlatform(platform),
    manifestDigest: chosen.desc.digest,
    configDigest,
    ...(parsed.created === undefined ? {} : { created: parsed.created }),
    architecture: parsed.architecture ?? platform.architecture,
    os: parsed.os ?? platform.os,
    config: parsed.config,
    layers,
  }
}

/** Walk (nested) indexes and gather every image manifest descriptor, in order. */
async function collect(blobs: BlobReader, descs: Descriptor[], depth: number, out: Candidate[]): Promise<void> {
  for (const d of descs) {
    checkDigest(d.digest, `${blobs.dir}: descriptor`)
    let mediaType = d.mediaType
    if (mediaType === undefined) {
      // Optional in descriptors; the document itself says what it is.
      const doc = await blobs.read(d, 'manifest', MAX_MANIFEST_BYTES)
      mediaType = sniffMediaType(doc)
    }
    if (isIndexMediaType(mediaType)) {
      if (depth >= MAX_INDEX_DEPTH) {
        throw new BaleError('E_INPUT', `${blobs.dir}: indexes nested more than ${MAX_INDEX_DEPTH} deep at ${d.digest}`, { subject: d.digest })
      }
      const nested = parseIndex(await blobs.read(d, 'index', MAX_MANIFEST_BYTES), `${blobs.dir} index ${d.digest}`)
      await collect(blobs, nested.manifests, depth + 1, out)
    } else if (isManifestMediaType(mediaType)) {
      out.push({ desc: d, ...(d.platform === undefined ? {} : { platform: d.platform }) })
    }
    // Anything else (artifacts, signatures) is not an image: skipped.
  }
}

function sniffMediaType(doc: Buffer): string | undefined {
  try {
    const v = JSON.parse(doc.toString('utf8')) as { mediaType?: unknown; manifests?: unknown; layers?: unknown }
    if (typeof v.mediaType === 'string') return v.mediaType
    if (Array.isArray(v.manifests)) return 'application/vnd.oci.image.index.v1+json'
    if (Array.isArray(v.layers)) return 'application/vnd.oci.image.manifest.v1+json'
  } catch {
    // Not JSON: not a manifest.
  }
  return undefined
}

async function loadManifest(blobs: BlobReader, desc: Descriptor) {
  const where = `${blobs.dir} manifest ${desc.digest}`
  const manifest = parseImageManifest(await blobs.read(desc, 'manifest', MAX_MANIFEST_BYTES), where)
  const configDigest = manifest.config.digest
  const parsed = parseImageConfig(await blobs.read(manifest.config, 'config', MAX_CONFIG_BYTES), `${blobs.dir} config ${configDigest}`)
  return { manifest, configDigest, parsed }
}

/** Reads blobs of one layout by digest; the digest is validated before it is joined to a path. */
class BlobReader {
  private documents = 0

  constructor(readonly dir: string) {}

  pathOf(digest: string, what: string): string {
    checkDigest(digest, `${this.dir}: ${what}`)
    return path.join(this.dir, 'blobs', 'sha256', digest.slice('sha256:'.length))
  }

  missing(digest: string, what: string): () => BaleError {
    return () => new BaleError('E_NOT_FOUND', `${this.dir}: ${what} blob ${digest} not found`, { subject: digest })
  }

  async read(desc: { digest: string; size?: number }, what: string, cap: number): Promise<Buffer> {
    if (++this.documents > MAX_DOCUMENTS) {
      throw new BaleError('E_INPUT', `${this.dir}: more than ${MAX_DOCUMENTS} index/manifest/config documents to read for one image`, { subject: this.dir })
    }
    if (desc.size !== undefined && desc.size > cap) {
      throw new BaleError('E_INPUT', `${this.dir}: ${what} ${desc.digest} is ${desc.size} bytes, over the ${cap}-byte limit`, { subject: desc.digest })
    }
    const data = await readCapped(this.pathOf(desc.digest, what), cap, what, this.missing(desc.digest, what))
    verifyBlob(data, desc, `${this.dir}: ${what}`)
    return data
  }

  async existing(digest: string, what: string): Promise<string> {
    const file = this.pathOf(digest, what)
    const st = await statOr(file, this.missing(digest, what))
    if (!st.isFile()) throw new BaleError('E_INPUT', `${file}: ${what} blob is not a regular file`, { subject: digest })
    return file
  }
}

/**
 * `DIR:TAG` or `DIR`. A path may itself contain ':', so an existing directory named by the
 * whole spec wins; otherwise the part after the last ':' is the tag when it has no '/'.
 */
async function splitSpec(spec: string): Promise<{ dir: string; tag?: string }> {
  if (spec === '') throw new BaleError('E_USAGE', '--oci-layout: empty path', { subject: '--oci-layout' })
  const isDir = (p: string): Promise<boolean> =>
    fs.stat(p).then(
      (s) => s.isDirectory(),
      () => false,
    )
  if (await isDir(spec)) return { dir: spec }
  // The tag may itself hold ':' (the registry store names images by full reference, e.g.
  // `STORE:127.0.0.1:5000/repo:tag`), so split at the first ':' whose left side is a directory,
  // as skopeo's oci: transport does; else at the last ':' so the error names the directory.
  for (let i = spec.indexOf(':'); i > 0; i = spec.indexOf(':', i + 1)) {
    if (await isDir(spec.slice(0, i))) return tagged(spec, i)
  }
  const colon = spec.lastIndexOf(':')
  if (colon <= 0 || spec.slice(colon + 1).includes('/')) return { dir: spec }
  return tagged(spec, colon)
}

function tagged(spec: string, colon: number): { dir: string; tag: string } {
  const tag = spec.slice(colon + 1)
  if (tag === '') throw new BaleError('E_USAGE', `--oci-layout ${spec}: empty tag after ':'`, { subject: spec })
  return { dir: spec.slice(0, colon), tag }
}
