import { createHash } from 'node:crypto'
import { z } from 'zod'
import { BaleError } from '../../lib/errors.js'
import type { ImageConfig, LayerCompression } from './types.js'
import { ConfigFileSchema } from '../../registry/schemas.js'

/**
 * OCI / Docker image JSON shared by every source that reads manifests: descriptors, indexes,
 * manifests, configs, media types, platforms. Parsing is strict about what bale uses and
 * tolerant of everything else (unknown fields are ignored, as the image spec requires).
 */

/**
 * Caps on JSON documents read whole into memory. The distribution spec has registries accept
 * manifests up to 4 MiB, and indexes are manifests. Configs carry a history entry per layer and
 * stay far below 1 MiB in practice; 8 MiB bounds a hostile one without refusing a large honest one.
 */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024
export const MAX_CONFIG_BYTES = 8 * 1024 * 1024
/** Nested indexes deeper than this are a loop or an attack, not an image (real ones nest once). */
export const MAX_INDEX_DEPTH = 4

export const MEDIA_TYPES = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const

/** Only sha256 is accepted: it is what every producer writes, and a digest becomes a path. */
export const DIGEST_RE = /^sha256:[0-9a-f]{64}$/

export function checkDigest(digest: unknown, where: string): string {
  if (typeof digest !== 'string' || !DIGEST_RE.test(digest)) {
    throw new BaleError('E_INPUT', `${where}: invalid digest ${JSON.stringify(digest)} (expected sha256:<64 hex digits>)`, { subject: String(digest) })
  }
  return digest
}

export function sha256Of(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

/** A blob read whole must match its descriptor: size first (cheap), then digest. */
export function verifyBlob(data: Buffer, desc: { digest: string; size?: number }, what: string): void {
  if (desc.size !== undefined && data.length !== desc.size) {
    throw new BaleError('E_DIGEST', `${what} ${desc.digest}: expected ${desc.size} bytes, got ${data.length}`, { subject: desc.digest })
  }
  const got = sha256Of(data)
  if (got !== desc.digest) {
    throw new BaleError('E_DIGEST', `${what} ${desc.digest}: expected ${desc.digest} got ${got}`, { subject: desc.digest })
  }
}

const platformSchema = z.object({
  os: z.string(),
  architecture: z.string(),
  variant: z.string().optional(),
})

const descriptorSchema = z.object({
  mediaType: z.string().optional(),
  digest: z.string(),
  size: z.number().int().nonnegative(),
  platform: platformSchema.optional(),
  annotations: z.record(z.string(), z.string()).optional(),
})
export type Descriptor = z.infer<typeof descriptorSchema>

const indexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(descriptorSchema),
})
export type ImageIndex = z.infer<typeof indexSchema>

const manifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: descriptorSchema,
  layers: z.array(descriptorSchema),
})
export type ImageManifest = z.infer<typeof manifestSchema>

// The image config schema is the registry layer's: one definition for every source.
const configSchema = ConfigFileSchema

export interface ParsedConfig {
  config: ImageConfig
  diffIds: string[]
  created?: string
  os?: string
  architecture?: string
  variant?: string
}

/** Parse JSON text with a one-line E_INPUT naming the document on failure. */
export function parseJson<T>(data: Buffer, schema: z.ZodType<T>, where: string): T {
  let value: unknown
  try {
    value = JSON.parse(data.toString('utf8'))
  } catch (e) {
    throw new BaleError('E_INPUT', `${where}: not valid JSON (${e instanceof Error ? e.message : String(e)})`, { subject: where, cause: e })
  }
  const r = schema.safeParse(value)
  if (!r.success) {
    const issue = r.error.issues[0]
    const at = issue && issue.path.length > 0 ? issue.path.join('.') : '(top level)'
    throw new BaleError('E_INPUT', `${where}: ${at}: ${issue?.message ?? 'invalid'}`, { subject: where })
  }
  return r.data
}

export function parseIndex(data: Buffer, where: string): ImageIndex {
  return parseJson(data, indexSchema, where)
}

export function parseImageManifest(data: Buffer, where: string): ImageManifest {
  const m = parseJson(data, manifestSchema, where)
  checkDigest(m.config.digest, `${where}: config`)
  m.layers.forEach((l, i) => checkDigest(l.digest, `${where}: layers[${i}]`))
  return m
}

export function parseImageConfig(data: Buffer, where: string): ParsedConfig {
  const c = parseJson(data, configSchema, where)
  c.rootfs.diff_ids.forEach((d, i) => checkDigest(d, `${where}: rootfs.diff_ids[${i}]`))
  const cc = c.config ?? {}
  const config: ImageConfig = {}
  if (cc.Entrypoint) config.entrypoint = cc.Entrypoint
  if (cc.Cmd) config.cmd = cc.Cmd
  if (cc.Env) config.env = cc.Env
  if (cc.User) config.user = cc.User
  if (cc.WorkingDir) config.workingDir = cc.WorkingDir
  if (cc.ExposedPorts) config.exposedPorts = Object.keys(cc.ExposedPorts).sort()
  if (cc.Labels) config.labels = cc.Labels
  if (cc.StopSignal) config.stopSignal = cc.StopSignal
  return {
    config,
    diffIds: c.rootfs.diff_ids,
    ...(c.created === undefined ? {} : { created: c.created }),
    ...(c.os === undefined ? {} : { os: c.os }),
    ...(c.architecture === undefined ? {} : { architecture: c.architecture }),
    ...(c.variant === undefined ? {} : { variant: c.variant }),
  }
}

export function isIndexMediaType(mt: string | undefined): boolean {
  return mt === MEDIA_TYPES.ociIndex || mt === MEDIA_TYPES.dockerList
}

export function isManifestMediaType(mt: string | undefined): boolean {
  return mt === MEDIA_TYPES.ociManifest || mt === MEDIA_TYPES.dockerManifest
}

/**
 * Layer media types bale can unpack, and how they are compressed. Non-distributable (OCI) and
 * foreign (Docker) layers are ordinary tars whose blobs may be absent from a registry; when the
 * blob is present locally they are read like any other.
 */
const LAYER_MEDIA_TYPES: Record<string, Exclude<LayerCompression, 'detect'>> = {
  'application/vnd.oci.image.layer.v1.tar': 'none',
  'application/vnd.oci.image.layer.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd': 'zstd',
  'application/vnd.oci.image.layer.nondistributable.v1.tar': 'none',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd': 'zstd',
  'application/vnd.docker.image.rootfs.diff.tar': 'none',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'gzip',
  'application/vnd.docker.image.rootfs.diff.tar.zstd': 'zstd',
  'application/vnd.docker.image.rootfs.foreign.diff.tar': 'none',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'gzip',
}

export function layerCompression(mediaType: string | undefined, where: string): Exclude<LayerCompression, 'detect'> {
  const c = mediaType === undefined ? undefined : LAYER_MEDIA_TYPES[mediaType]
  if (c === undefined) {
    throw new BaleError('E_INPUT', `${where}: unsupported layer media type ${JSON.stringify(mediaType ?? null)} (not an image layer)`, { subject: where })
  }
  return c
}

export interface Platform {
  os: string
  architecture: string
  variant?: string
}

/** Architecture names as Go (and so OCI) spells them; `uname -m` spellings are accepted too. */
const ARCH_ALIASES: Record<string, string> = { x86_64: 'amd64', aarch64: 'arm64', armhf: 'arm', armel: 'arm', i386: '386', i686: '386' }

export function parsePlatform(spec: string): Platform {
  const parts = spec.split('/')
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === '')) {
    throw new BaleError('E_USAGE', `--platform ${spec}: expected OS/ARCH[/VARIANT], e.g. linux/amd64`, { subject: spec })
  }
  const [os, arch, variant] = parts as [string, string, string | undefined]
  return { os, architecture: ARCH_ALIASES[arch] ?? arch, ...(variant === undefined ? {} : { variant }) }
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`
}

/**
 * containerd's rule, simplified: OS and architecture must be equal; a requested variant must
 * be equal; when none is requested, any variant matches (the caller prefers the best one).
 * arm64's only variant in use is v8, so it is the same as none.
 */
export function platformMatches(want: Platform, have: Platform): boolean {
  if (want.os !== have.os || want.architecture !== (ARCH_ALIASES[have.architecture] ?? have.architecture)) return false
  if (want.variant === undefined) return true
  return normVariant(want) === normVariant(have)
}

function normVariant(p: Platform): string | undefined {
  if (p.architecture === 'arm64' && (p.variant === undefined || p.variant === 'v8')) return undefined
  return p.variant
}
