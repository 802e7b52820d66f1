import { BaleError } from '../lib/errors.js'
import type { ConfigFile, ImageIndex, ImageManifest } from './schemas.js'
import { checkConfigFile, checkIndex, checkManifest, Invalid } from './validate.js'

// The zod schemas live in schemas.ts so that `bale pull` does not load zod (see validate.ts):
// the modules that parse with zod (catalog/, pipeline/source/) import schemas.ts themselves.
export type { ConfigFile, Descriptor, ImageIndex, ImageManifest } from './schemas.js'

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

function why(e: unknown): string {
  if (e instanceof Invalid) return e.message
  throw e
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
  const checked = <T>(check: (o: unknown) => T, what: string): T => {
    try {
      return check(obj)
    } catch (e) {
      throw new BaleError('E_INPUT', `${where}: malformed ${what}: ${why(e)}`, { subject: where })
    }
  }
  if (INDEX_TYPES.has(type)) return { kind: 'index', mediaType: type, index: checked(checkIndex, 'image index') }
  if (MANIFEST_TYPES.has(type)) return { kind: 'manifest', mediaType: type, manifest: checked(checkManifest, 'image manifest') }
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

export function parseConfigFile(bytes: Buffer, where: string): ConfigFile {
  let doc: unknown
  try {
    doc = JSON.parse(bytes.toString('utf8'))
  } catch {
    throw new BaleError('E_INPUT', `${where}: image config is not valid JSON`, { subject: where })
  }
  try {
    return checkConfigFile(doc)
  } catch (e) {
    throw new BaleError('E_INPUT', `${where}: malformed image config: ${why(e)}`, { subject: where })
  }
}

/** How a layer's stored bytes are compressed, from its media type ('detect' for the unknown). */
export function layerCompression(mediaType: string): 'none' | 'gzip' | 'zstd' | 'detect' {
  if (mediaType.endsWith('+gzip') || mediaType.endsWith('.tar.gzip')) return 'gzip'
  if (mediaType.endsWith('+zstd') || mediaType.endsWith('.tar.zstd')) return 'zstd'
  if (mediaType.endsWith('.tar')) return 'none'
  return 'detect'
}
