import { createHash } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { compressFrame } from '../pipeline/bundle/zstd-native.js'
import { z } from 'zod'
import { BaleError } from '../lib/errors.js'
import { defaultConcurrency, fixedChunks, FRAME_SIZE } from '../pipeline/bundle/writer.js'
import { decompressFrames } from '../pipeline/bundle/zstd-frames.js'
import { DescriptorSchema } from '../registry/schemas.js'
import { parseReference, type ImageReference } from '../registry/reference.js'

/**
 * Bundles and kernels as OCI artifacts (image-spec v1.1 "artifacts" guidance: an image
 * manifest with `artifactType`, a config blob of the artifact's own media type, and layers of
 * their own media types). Plain image manifests, so any v2 registry stores them and `skopeo copy`
 * / `oras` move them without knowing what they are.
 *
 *   <REPO>/<name>:<version>   (and :latest)   a bundle
 *     config  application/vnd.bale.bundle.manifest.v1+json   the bundle's manifest.json, byte for byte
 *     layer   application/vnd.bale.rootfs.ext4.v1+zstd       rootfs.ext4 as independent zstd frames
 *   <REPO>/kernels:<kernel_ref>                          a kernel
 *     config  application/vnd.bale.kernel.config.v1+json     kernel.json (or the OCI empty config)
 *     layers  application/vnd.bale.kernel.file.v1           each other file, named by its title annotation
 */
export const OCI_MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json'
export const BUNDLE_ARTIFACT_TYPE = 'application/vnd.bale.bundle.v1'
export const BUNDLE_CONFIG_TYPE = 'application/vnd.bale.bundle.manifest.v1+json'
export const ROOTFS_LAYER_TYPE = 'application/vnd.bale.rootfs.ext4.v1+zstd'
export const KERNEL_ARTIFACT_TYPE = 'application/vnd.bale.kernel.v1'
export const KERNEL_CONFIG_TYPE = 'application/vnd.bale.kernel.config.v1+json'
export const KERNEL_FILE_TYPE = 'application/vnd.bale.kernel.file.v1'
/** image-spec v1.1's empty descriptor, for a kernel directory without kernel.json. */
export const EMPTY_CONFIG_TYPE = 'application/vnd.oci.empty.v1+json'
export const EMPTY_CONFIG = Buffer.from('{}')

export const TITLE = 'org.opencontainers.image.title'
export const VERSION = 'org.opencontainers.image.version'
export const CREATED = 'org.opencontainers.image.created'
export const DESCRIPTION = 'org.opencontainers.image.description'
export const KERNEL_REF = 'org.bale.kernel_ref'
/** The published bundle file's sha256 and the zstd level it was written with: fetch rebuilds the file with them. */
export const BUNDLE_SHA256 = 'org.bale.bundle.sha256'
export const BUNDLE_LEVEL = 'org.bale.bundle.zstd_level'

/** The repository kernels are pushed to under a target; the catalog schema reserves the name. */
export const KERNELS_REPOSITORY = 'kernels'
export const LATEST_TAG = 'latest'

export const ArtifactManifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.literal(OCI_MANIFEST_TYPE),
  artifactType: z.string().optional(),
  config: DescriptorSchema,
  layers: z.array(DescriptorSchema),
  annotations: z.record(z.string(), z.string()).optional(),
})
export type ArtifactManifest = z.infer<typeof ArtifactManifestSchema>
export type Descriptor = z.infer<typeof DescriptorSchema>

export function sha256Digest(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

/** Serialise a manifest the one way bale does (key order as built), so equal content gives an equal digest. */
export function encodeManifest(m: ArtifactManifest): Buffer {
  return Buffer.from(JSON.stringify(m))
}

export function parseArtifactManifest(bytes: Buffer, where: string, artifactType: string, configType: string | readonly string[]): ArtifactManifest {
  let doc: unknown
  try {
    doc = JSON.parse(bytes.toString('utf8'))
  } catch {
    throw new BaleError('E_INPUT', `${where}: manifest is not valid JSON`, { subject: where })
  }
  const r = ArtifactManifestSchema.safeParse(doc)
  if (!r.success) throw new BaleError('E_INPUT', `${where}: not an OCI artifact manifest (${r.error.issues[0]?.message ?? 'invalid'})`, { subject: where })
  const m = r.data
  const configTypes = typeof configType === 'string' ? [configType] : configType
  // Registries that predate image-spec 1.1 may drop artifactType; the config media type still says what it is.
  if ((m.artifactType !== undefined && m.artifactType !== artifactType) || !configTypes.includes(m.config.mediaType)) {
    throw new BaleError('E_INPUT', `${where}: not a ${artifactType} artifact (artifactType ${m.artifactType ?? 'none'}, config ${m.config.mediaType})`, { subject: where })
  }
  return m
}

/** `oci://HOST[:PORT]/REPO[/…]` → the base reference (no tag). */
export function parseOciTarget(target: string): ImageReference {
  const rest = target.slice('oci://'.length)
  if (rest === '' || rest.includes('@') || /:[^/]*$/.test(rest.slice(rest.indexOf('/') + 1))) {
    throw new BaleError('E_USAGE', `${target}: want oci://HOST[:PORT]/REPOSITORY (no tag or digest: bale adds /<name>:<version>)`, { subject: target })
  }
  if (!rest.includes('/')) throw new BaleError('E_USAGE', `${target}: want oci://HOST[:PORT]/REPOSITORY`, { subject: target })
  return parseReference(rest)
}

/** `<base>/<sub>:<tag>` as a reference. */
export function subReference(base: ImageReference, sub: string, tag: string): ImageReference {
  return parseReference(`${base.domain}/${base.repository}/${sub}:${tag}`)
}

/**
 * Compress a rootfs stream into `dest` as independent zstd frames of FRAME_SIZE, several in
 * flight on the libuv pool (the bundle writer's scheme, so the bytes are deterministic for a
 * level), hashing as it writes. Memory: `concurrency` frames in and out, whatever the rootfs size.
 */
export async function writeZstdLayer(rootfs: AsyncIterable<Buffer>, dest: string, level: number): Promise<{ digest: string; size: number }> {
  const hash = createHash('sha256')
  let size = 0
  const out = createWriteStream(dest, { flags: 'wx', mode: 0o644 })
  const write = (b: Buffer): Promise<void> =>
    new Promise((resolve, reject) => {
      out.write(b, (e) => (e ? reject(e) : resolve()))
    })
  const concurrency = defaultConcurrency()
  const inFlight: Array<Promise<Buffer>> = []
  const writeNext = async (): Promise<void> => {
    const frame = await (inFlight.shift() as Promise<Buffer>)
    hash.update(frame)
    size += frame.length
    await write(frame)
  }
  try {
    for await (const chunk of fixedChunks(rootfs, FRAME_SIZE)) {
      const p = compressFrame(chunk, level)
      p.catch(() => undefined)
      inFlight.push(p)
      if (inFlight.length >= concurrency) await writeNext()
    }
    while (inFlight.length > 0) await writeNext()
  } finally {
    await new Promise<void>((resolve) => out.end(() => resolve()))
  }
  return { digest: `sha256:${hash.digest('hex')}`, size }
}

/** The decompressed bytes of a zstd layer file (frames decompressed in parallel, bounded memory). */
export function readZstdLayer(file: string, name: string): AsyncGenerator<Buffer> {
  return decompressFrames(createReadStream(file) as AsyncIterable<Buffer>, { name, concurrency: defaultConcurrency() })
}

