import { z } from 'zod'
import { BaleError } from '../../lib/errors.js'

/**
 * manifest.json, the first member of every bundle (docs/bundle-format.md). snake_case JSON.
 * The schema is the single definition: the TypeScript type is inferred from it, the writer
 * serializes what it parses (so key order, and therefore the bytes, do not depend on how a
 * caller built the object), and the reader and verifier check bundles against it.
 */
export const BUNDLE_SCHEMA_VERSION = 1
export const MANIFEST_FILE = 'manifest.json'
export const ROOTFS_FILE = 'rootfs.ext4'
/** Far above any real manifest (a few KiB even with hundreds of layers); bounds a hostile one. */
export const MAX_BUNDLE_MANIFEST_BYTES = 1024 * 1024

const digest = z.string().regex(/^sha256:[0-9a-f]{64}$/, 'expected sha256:<64 hex digits>')
const hex256 = z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits')
/** One line of printable text: these fields end up in terminals, file names and catalogs. */
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const text = z.string().regex(/^[^\u0000-\u001f\u007f]*$/, 'must not contain control characters')
const nonEmpty = text.min(1, 'must not be empty')

const layerSchema = z.object({
  digest: digest.optional(),
  diff_id: digest,
  media_type: nonEmpty,
  size: z.number().int().nonnegative().optional(),
})

export const bundleManifestSchema = z.object({
  schema_version: z.literal(BUNDLE_SCHEMA_VERSION),
  name: nonEmpty,
  version: nonEmpty,
  description: text,
  distro: text,
  arch: nonEmpty,
  kernel_ref: nonEmpty,
  created: z.iso.datetime({ offset: true }),
  source: z.object({
    ref: nonEmpty,
    platform: nonEmpty,
    manifest_digest: digest.optional(),
    config_digest: digest.optional(),
    layers: z.array(layerSchema),
  }),
  config: z.object({
    entrypoint: z.array(z.string()),
    cmd: z.array(z.string()),
    env: z.array(z.string()),
    user: z.string(),
    workdir: z.string(),
    exposed_ports: z.array(z.string()),
  }),
  rootfs: z.object({
    file: z.literal(ROOTFS_FILE),
    size: z.number().int().positive(),
    sha256: hex256,
  }),
  agent: z.object({
    version: nonEmpty,
    sha256: hex256,
  }),
})

export type BundleManifest = z.infer<typeof bundleManifestSchema>

/**
 * Validate a parsed manifest.json. `where` names the document (a bundle path, a file) in the
 * one-line E_INPUT, which also names the first bad field: `bundle.tar.zst: manifest.json:
 * rootfs.sha256: expected 64 lowercase hex digits`.
 */
export function parseManifest(json: unknown, where: string): BundleManifest {
  const r = bundleManifestSchema.safeParse(json)
  if (r.success) return r.data
  const issue = r.error.issues[0]
  const field = issue && issue.path.length > 0 ? issue.path.join('.') : '(top level)'
  const msg = issue?.message ?? 'invalid'
  if (issue?.path[0] === 'schema_version' && typeof json === 'object' && json !== null && 'schema_version' in json) {
    const v = (json as { schema_version: unknown }).schema_version
    throw new BaleError('E_INPUT', `${where}: schema_version ${JSON.stringify(v)} is not supported (this bale reads ${BUNDLE_SCHEMA_VERSION})`, { subject: where })
  }
  throw new BaleError('E_INPUT', `${where}: ${field}: ${msg}`, { subject: where })
}

/** Parse manifest.json bytes (JSON errors included) into a validated manifest. */
export function parseManifestBytes(data: Buffer, where: string): BundleManifest {
  let json: unknown
  try {
    json = JSON.parse(data.toString('utf8'))
  } catch (e) {
    throw new BaleError('E_INPUT', `${where}: not valid JSON (${e instanceof Error ? e.message : String(e)})`, { subject: where, cause: e })
  }
  return parseManifest(json, where)
}

/** The canonical bytes of a manifest: schema key order, two-space indent, final newline. */
export function serializeManifest(manifest: BundleManifest): Buffer {
  const canonical = parseManifest(manifest, 'manifest')
  return Buffer.from(`${JSON.stringify(canonical, null, 2)}\n`, 'utf8')
}
