import { z } from 'zod'
import { BaleError } from '../lib/errors.js'
import { SHA256_DIGEST } from './reference.js'

/**
 * Manifests, indexes and image configs as the distribution and image specs define them,
 * parsed strictly enough that an ambiguous or contradictory document is refused by name.
 */
export const MEDIA_TYPES = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
} as const

const INDEX_TYPES: ReadonlySet<string> = new Set([MEDIA_TYPES.ociIndex, MEDIA_TYPES.dockerList])
const MANIFEST_TYPES: ReadonlySet<string> = new Set([MEDIA_TYPES.ociManifest, MEDIA_TYPES.dockerManifest])
const SCHEMA1_TYPES: ReadonlySet<string> = new Set([MEDIA_TYPES.dockerSchema1, MEDIA_TYPES.dockerSchema1Signed])

/** What we ask registries for: both specs' indexes and image manifests, never schema 1. */
export const MANIFEST_ACCEPT = [MEDIA_TYPES.ociIndex, MEDIA_TYPES.ociManifest, MEDIA_TYPES.dockerList, MEDIA_TYPES.dockerManifest].join(', ')

/**
 * Manifests are read into memory, so they are capped. 4 MiB is the size the OCI distribution
 * spec says registries SHOULD accept at minimum, and containerd's client limit; a real image
 * manifest or index is a few KiB.
 */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024
/** Image configs are parsed in memory too; real ones are KiBs (a long `history` reaches ~1 MiB). */
export const MAX_CONFIG_BYTES = 16 * 1024 * 1024

export const DescriptorSchema = z.object({
  mediaType: z.string().min(1),
  digest: z.string().regex(SHA256_DIGEST, 'not a sha256 digest'),
  size: z.number().int().nonnegative(),
  platform: z
    .object({
      os: z.string(),
      architecture: z.string(),
      variant: z.string().optional(),
      'os.version': z.string().optional(),
    })
    .optional(),
  annotations: z.record(z.string(), z.string()).optional(),
  urls: z.array(z.string()).optional(),
})
export type Descriptor = z.infer<typeof DescriptorSchema>

const IndexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(DescriptorSchema),
  annotations: z.record(z.string(), z.string()).optional(),
})
export type ImageIndex = z.infer<typeof IndexSchema>

const ManifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: DescriptorSchema,
  layers: z.array(DescriptorSchema),
  annotations: z.record(z.string(), z.string()).optional(),
})
export type ImageManifest = z.infer<typeof ManifestSchema>

export type ParsedManifest =
  | { kind: 'index'; mediaType: string; index: ImageIndex }
  | { kind: 'manifest'; mediaType: string; manifest: ImageManifest }

function mediaTypeOnly(contentType: string | undefined): string | undefined {
  if (contentType === undefined) return undefined
  const t = contentType.split(';')[0]?.trim().toLowerCase()
  return t === '' ? undefined : t
}

function isManifestType(t: string | undefined): t is string {
  return t !== undefined && (INDEX_TYPES.has(t) || MANIFEST_TYPES.has(t))
}

function zodWhy(e: z.ZodError): string {
  const issue = e.issues[0]
  if (issue === undefined) return 'does not match the schema'
  const at = issue.path.length === 0 ? '' : `${issue.path.join('.')}: `
  return `${at}${issue.message}`
}

/**
 * Parse a manifest or index. `where` names it in errors (a URL or `REF@digest`).
 * `declared` is what described it: the response Content-Type, or the parent descriptor's
 * mediaType. A body whose own `mediaType` contradicts it is refused, and so is a body that
 * is both an index and a manifest (CVE-2021-41190's ambiguity).
 */
export function parseManifest(bytes: Buffer, declared: string | undefined, where: string): ParsedManifest {
  let doc: unknown
  try {
    doc = JSON.parse(bytes.toString('utf8'))
  } catch {
    throw new BaleError('E_INPUT', `${where}: manifest is not valid JSON`, { subject: where })
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw new BaleError('E_INPUT', `${where}: manifest is not a JSON object`, { subject: where })
  }
  const obj = doc as Record<string, unknown>
  const bodyType = typeof obj.mediaType === 'string' ? obj.mediaType : undefined
  const header = mediaTypeOnly(declared)
  if (bodyType !== undefined && SCHEMA1_TYPES.has(bodyType)) throw schema1(where)
  if (header !== undefined && SCHEMA1_TYPES.has(header)) throw schema1(where)
  if (obj.schemaVersion === 1) throw schema1(where)
  if (bodyType !== undefined && isManifestType(header) && bodyType !== header) {
    throw new BaleError('E_INPUT', `${where}: mediaType ${bodyType} in the body contradicts ${header} it was served or described as`, { subject: where })
  }
  if ('manifests' in obj && ('layers' in obj || 'config' in obj)) {
    throw new BaleError('E_INPUT', `${where}: document has both 'manifests' and 'layers'/'config'; refusing an ambiguous manifest`, { subject: where })
  }
  // A body without mediaType (allowed by OCI) takes the declared type, else its shape decides.
  const type = bodyType ?? (isManifestType(header) ? header : 'manifests' in obj ? MEDIA_TYPES.ociIndex : MEDIA_TYPES.ociManifest)
  if (INDEX_TYPES.has(type)) {
    const r = IndexSchema.safeParse(obj)
    if (!r.success) throw new BaleError('E_INPUT', `${where}: malformed image index: ${zodWhy(r.error)}`, { subject: where })
    return { kind: 'index', mediaType: type, index: r.data }
  }
  if (MANIFEST_TYPES.has(type)) {
    const r = ManifestSchema.safeParse(obj)
    if (!r.success) throw new BaleError('E_INPUT', `${where}: malformed image manifest: ${zodWhy(r.error)}`, { subject: where })
    return { kind: 'manifest', mediaType: type, manifest: r.data }
  }
  throw new BaleError('E_INPUT', `${where}: unsupported manifest media type ${type}`, { subject: where })
}

function schema1(where: string): BaleError {
  return new BaleError('E_INPUT', `${where}: Docker schema 1 manifests are not supported (deprecated since 2019); re-push the image with a v2 or OCI manifest`, {
    subject: where,
  })
}

export function isIndexMediaType(t: string): boolean {
  return INDEX_TYPES.has(t)
}

const nullableStrings = z.array(z.string()).nullish()

/** The parts of an image config bale uses (OCI image-spec config.md; Docker's is a superset). */
export const ConfigFileSchema = z.object({
  architecture: z.string().optional(),
  os: z.string().optional(),
  variant: z.string().optional(),
  created: z.string().optional(),
  config: z
    .object({
      Entrypoint: nullableStrings,
      Cmd: nullableStrings,
      Env: nullableStrings,
      User: z.string().nullish(),
      WorkingDir: z.string().nullish(),
      ExposedPorts: z.record(z.string(), z.unknown()).nullish(),
      Labels: z.record(z.string(), z.string()).nullish(),
      StopSignal: z.string().nullish(),
    })
    .nullish(),
  rootfs: z.object({
    type: z.literal('layers'),
    diff_ids: z.array(z.string().regex(SHA256_DIGEST, 'not a sha256 digest')),
  }),
})
export type ConfigFile = z.infer<typeof ConfigFileSchema>

export function parseConfigFile(bytes: Buffer, where: string): ConfigFile {
  let doc: unknown
  try {
    doc = JSON.parse(bytes.toString('utf8'))
  } catch {
    throw new BaleError('E_INPUT', `${where}: image config is not valid JSON`, { subject: where })
  }
  const r = ConfigFileSchema.safeParse(doc)
  if (!r.success) throw new BaleError('E_INPUT', `${where}: malformed image config: ${zodWhy(r.error)}`, { subject: where })
  return r.data
}

/** How a layer's stored bytes are compressed, from its media type ('detect' for the unknown). */
export function layerCompression(mediaType: string): 'none' | 'gzip' | 'zstd' | 'detect' {
  if (mediaType.endsWith('+gzip') || mediaType.endsWith('.tar.gzip')) return 'gzip'
  if (mediaType.endsWith('+zstd') || mediaType.endsWith('.tar.zstd')) return 'zstd'
  if (mediaType.endsWith('.tar')) return 'none'
  return 'detect'
}
