import { createReadStream, promises as fs } from 'node:fs'
import { Readable } from 'node:stream'
import { z } from 'zod'
import { BaleError, fromSystemError } from '../../lib/errors.js'
import {
  checkDigest,
  DIGEST_RE,
  formatPlatform,
  isManifestMediaType,
  MAX_CONFIG_BYTES,
  MAX_MANIFEST_BYTES,
  parseImageConfig,
  parseImageManifest,
  parseIndex,
  parseJson,
  parsePlatform,
  type Platform,
  platformMatches,
  sha256Of,
  verifyBlob,
} from './oci.js'
import { statOr } from './read.js'
import { indexTar, normalize, resolveMember, type TarMember } from './tar-index.js'
import type { ImageSource, LayerBlob, ResolvedImage } from './types.js'

/** What `docker save` records for layers that have no better media type. */
const DOCKER_LAYER_MEDIA_TYPE = 'application/vnd.docker.image.rootfs.diff.tar'

const dockerManifestSchema = z
  .array(
    z.object({
      Config: z.string(),
      RepoTags: z.array(z.string()).nullish(),
      Layers: z.array(z.string()),
    }),
  )
  .min(1)

/**
 * `docker save` output, read in place: the tar is indexed once (headers only), and members
 * are opened with ranged reads, so nothing is extracted and no layer is buffered. Both layouts
 * are read through `manifest.json`:
 *   - legacy (Docker < 25): `<id>.json` config, `<id>/layer.tar` layers (repeated layers are
 *     symlinks to the first copy);
 *   - OCI-style (Docker ≥ 25): config and layers are `blobs/sha256/<hex>`; their names are
 *     their digests and are checked as such, and the OCI manifest (found through index.json)
 *     gives the manifest digest and the layers' media types.
 * Every layer's uncompressed digest is checked against the config's diff_ids (layer.ts).
 */
export function dockerArchiveSource(file: string, opts: { platform?: string } = {}): ImageSource {
  return {
    resolve: async () => resolveArchive(file, opts.platform === undefined ? undefined : parsePlatform(opts.platform)),
    close: async () => undefined,
  }
}

async function resolveArchive(file: string, want: Platform | undefined): Promise<ResolvedImage> {
  const ref = `docker-archive:${file}`
  const st = await statOr(file, () => new BaleError('E_NOT_FOUND', `${file}: no such file`, { subject: file }))
  if (!st.isFile()) throw new BaleError('E_INPUT', `${file}: not a regular file (a docker archive is the tar written by docker save)`, { subject: file })
  await refuseCompressed(file)
  const members = await indexTar(file)
  const archive = new Archive(file, members)

  const manifestJson = await archive.readSmall('manifest.json', MAX_MANIFEST_BYTES, () => new BaleError('E_INPUT', `${file}: not a docker save archive (no manifest.json)`, { subject: file }))
  const entries = parseJson(manifestJson, dockerManifestSchema, `${file}: manifest.json`)
  if (entries.length > 1) {
    const tags = entries.flatMap((e) => e.RepoTags ?? [])
    throw new BaleError('E_INPUT', `${file}: holds ${entries.length} images (${tags.join(', ') || 'untagged'}); save one image per archive`, { subject: file })
  }
  const entry = entries[0] as z.infer<typeof dockerManifestSchema>[number]

  const configName = normalize(entry.Config)
  const configData = await archive.readSmall(configName, MAX_CONFIG_BYTES, archive.missing(configName, 'config'))
  // Both layouts name the config by its digest (`<hex>.json` or `blobs/sha256/<hex>`): check it.
  const configDigest = digestFromName(configName) ?? sha256Of(configData)
  verifyBlob(configData, { digest: configDigest }, `${file}: config`)
  const parsed = parseImageConfig(configData, `${file}: ${configName}`)
  if (parsed.diffIds.length !== entry.Layers.length) {
    throw new BaleError('E_INPUT', `${file}: manifest.json lists ${entry.Layers.length} layers but the config lists ${parsed.diffIds.length} diff_ids`, { subject: file })
  }

  const platform: Platform = {
    os: parsed.os ?? 'linux',
    architecture: parsed.architecture ?? 'amd64',
    ...(parsed.variant === undefined ? {} : { variant: parsed.variant }),
  }
  if (want !== undefined && !platformMatches(want, platform)) {
    throw new BaleError('E_NOT_FOUND', `${file}: the image is for ${formatPlatform(platform)}, not ${formatPlatform(want)} (available: ${formatPlatform(platform)})`, { subject: file })
  }

  const oci = await archive.ociManifestFor(configDigest)
  const layers: LayerBlob[] = []
  for (const [i, name] of entry.Layers.entries()) {
    const layerName = normalize(name)
    const member = archive.member(layerName, `layer ${i + 1}`)
    const digest = digestFromName(layerName)
    const ociLayer = oci?.layers[i]
    layers.push({
      ...(digest === undefined ? {} : { digest }),
      // Known from the tar header: a member that reads short (the file changed) is caught.
      size: member.size,
      mediaType: ociLayer?.mediaType ?? DOCKER_LAYER_MEDIA_TYPE,
      // docker save writes plain tars, but docker load accepts compressed ones: look at the bytes.
      compression: 'detect',
      diffId: parsed.diffIds[i],
      open: async () => archive.open(member),
    })
  }
  return {
    ref,
    platform: formatPlatform(platform),
    ...(oci === undefined ? {} : { manifestDigest: oci.digest }),
    configDigest,
    ...(parsed.created === undefined ? {} : { created: parsed.created }),
    architecture: platform.architecture,
    os: platform.os,
    config: parsed.config,
    layers,
  }
}

/** `blobs/sha256/<hex>` or `<hex>.json` → `sha256:<hex>`; anything else has no digest in its name. */
function digestFromName(name: string): string | undefined {
  const m = /^(?:blobs\/sha256\/([0-9a-f]{64})|([0-9a-f]{64})\.json)$/.exec(name)
  const hex = m?.[1] ?? m?.[2]
  return hex === undefined ? undefined : `sha256:${hex}`
}

/** `docker save | gzip` is common; say what to do rather than "bad header checksum". */
async function refuseCompressed(file: string): Promise<void> {
  const fh = await fs.open(file, 'r')
  try {
    const head = Buffer.alloc(4)
    await fh.read(head, 0, 4, 0)
    if (head[0] === 0x1f && head[1] === 0x8b) throw new BaleError('E_INPUT', `${file}: gzip-compressed; decompress it first (gunzip -k ${file})`, { subject: file })
    if (head.readUInt32LE(0) === 0xfd2fb528) throw new BaleError('E_INPUT', `${file}: zstd-compressed; decompress it first (zstd -d ${file})`, { subject: file })
  } finally {
    await fh.close()
  }
}

class Archive {
  constructor(
    readonly file: string,
    private readonly members: Map<string, TarMember>,
  ) {}

  missing(name: string, what: string): () => BaleError {
    return () => new BaleError('E_INPUT', `${this.file}: ${what} ${name} is not in the archive`, { subject: this.file })
  }

  member(name: string, what: string): TarMember {
    const m = resolveMember(this.members, name)
    if (m === undefined) throw this.missing(name, what)()
    return m
  }

  has(name: string): boolean {
    return resolveMember(this.members, name) !== undefined
  }

  async readSmall(name: string, cap: number, missing: () => BaleError): Promise<Buffer> {
    const m = resolveMember(this.members, name)
    if (m === undefined) throw missing()
    if (m.size > cap) throw new BaleError('E_INPUT', `${this.file}: ${name} is ${m.size} bytes, over the ${cap}-byte limit`, { subject: this.file })
    const fh = await fs.open(this.file, 'r')
    try {
      const buf = Buffer.alloc(m.size)
      const { bytesRead } = await fh.read(buf, 0, m.size, m.offset)
      if (bytesRead !== m.size) throw new BaleError('E_INPUT', `${this.file}: ${name}: truncated`, { subject: this.file })
      return buf
    } finally {
      await fh.close()
    }
  }

  async open(m: TarMember): Promise<Readable> {
    try {
      await fs.access(this.file)
    } catch (e) {
      throw fromSystemError(e, this.file) ?? e
    }
    // `end` is inclusive, so an empty member cannot be expressed as a range.
    if (m.size === 0) return Readable.from([])
    return createReadStream(this.file, { start: m.offset, end: m.offset + m.size - 1 })
  }

  /**
   * The OCI manifest of the Docker ≥ 25 layout, when present: the one index.json points at
   * whose config is ours. Verified against its descriptor like any blob. Absent in the legacy
   * layout, which has no manifest digest to offer.
   */
  async ociManifestFor(configDigest: string): Promise<{ digest: string; layers: Array<{ mediaType?: string }> } | undefined> {
    if (!this.has('index.json')) return undefined
    const where = `${this.file}: index.json`
    const index = parseIndex(await this.readSmall('index.json', MAX_MANIFEST_BYTES, this.missing('index.json', 'index')), where)
    for (const d of index.manifests) {
      if (!isManifestMediaType(d.mediaType) || !DIGEST_RE.test(d.digest)) continue
      const name = `blobs/sha256/${checkDigest(d.digest, where).slice('sha256:'.length)}`
      if (!this.has(name)) continue
      const data = await this.readSmall(name, MAX_MANIFEST_BYTES, this.missing(name, 'manifest'))
      verifyBlob(data, d, `${this.file}: manifest`)
      const m = parseImageManifest(data, `${this.file}: manifest ${d.digest}`)
      if (m.config.digest === configDigest) return { digest: d.digest, layers: m.layers }
    }
    return undefined
  }
}
