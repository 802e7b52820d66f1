import { promises as fs } from 'node:fs'
import { z } from 'zod'
import { BaleError, fromSystemError } from '../lib/errors.js'
import { parseReference } from '../registry/reference.js'

/**
 * The catalog's documents, as zod schemas that are the single source of truth: the JSON
 * Schema files in `catalog/` are generated from them (`z.toJSONSchema`) and a unit test keeps
 * the committed files equal to the generated ones, so the documented contract and the checks
 * bale runs cannot drift apart.
 *
 * - catalog.json: what the project builds (one entry per bundle name).
 * - index.json: what a publish/mirror directory serves (bundles and kernels with integrity).
 */

/**
 * A bundle name is used as an OCI repository path component (`oci://HOST/REPO/<name>`) and as a
 * directory name, so it follows distribution's path-component grammar; 64 characters keeps the
 * whole `HOST/REPO/<name>` well inside distribution's 255-character name limit. `kernels` is
 * reserved: kernels are pushed to `HOST/REPO/kernels`. (Reservations are lookaheads in the
 * patterns, so the generated JSON Schema carries them too.)
 */
export const NAME_PATTERN = '^(?!kernels$)(?=.{1,64}$)[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$'
/** OCI tag grammar (distribution/reference), which also makes a safe file name. */
export const TAG_PATTERN = '^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$'
/** A version is pushed as a tag; `latest` is reserved for the tag a versionless fetch follows. */
export const VERSION_PATTERN = '^(?!latest$)[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$'
/** A kernel ref names a kernel store entry and a tag; `default` means a different kernel on every host. */
export const KERNEL_REF_PATTERN = '^(?!default$)[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$'
export const PLATFORM_PATTERN = '^[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?$'
/** `--size` syntax (see lib/size.ts): digits, optional fraction, binary unit. */
export const SIZE_PATTERN = '^[0-9]+(?:\\.[0-9]+)?[KMGTkmgt]?(?:i?[Bb])?$'
/** ssri strings bale writes and accepts: one sha256/384/512 hash (base64), as npm's lockfiles carry them. */
export const INTEGRITY_PATTERN = '^sha(?:256|384|512)-[A-Za-z0-9+/]+={0,2}$'
export const SHA256_HEX_PATTERN = '^[0-9a-f]{64}$'

const name = z
  .string()
  .regex(new RegExp(NAME_PATTERN), 'want lowercase letters, digits and . _ - (at most 64); "kernels" is reserved')
  .meta({ description: 'Bundle name: an OCI repository path component (lowercase, digits, . _ -), at most 64 characters; "kernels" is reserved.' })
const version = z
  .string()
  .regex(new RegExp(VERSION_PATTERN), 'want an OCI tag (letters, digits, . _ -, at most 128); "latest" is reserved')
  .meta({ description: 'Bundle version: an OCI tag (letters, digits, . _ -, at most 128); "latest" is reserved for the tag a versionless fetch follows.' })
const kernelRef = z
  .string()
  .regex(new RegExp(KERNEL_REF_PATTERN), 'want a kernel ref that is an OCI tag; not "default", which means a different kernel on every host')
  .meta({ description: 'Kernel the bundle boots with, as `bale kernel ls` names it: an OCI tag, not "default".' })
const oneLine = (max: number): z.ZodString => z.string().min(1).max(max).regex(/^[^\r\n]*$/)

export const CatalogEntrySchema = z
  .strictObject({
    name,
    version,
    source: z
      .string()
      .regex(/^[^\s@]+@sha256:[0-9a-f]{64}$/)
      .superRefine((s, ctx) => {
        try {
          parseReference(s)
        } catch (e) {
          ctx.addIssue({ code: 'custom', message: (e as Error).message })
        }
      })
      .meta({ description: 'Source image reference pinned by digest (REGISTRY/REPO[:TAG]@sha256:HEX); the tag, if any, is informational.' }),
    platform: z.string().regex(new RegExp(PLATFORM_PATTERN)).meta({ description: 'OS/ARCH[/VARIANT] chosen from the image index, e.g. linux/amd64.' }),
    kernel_ref: kernelRef,
    description: oneLine(500).meta({ description: 'One line shown by `bale catalog ls`.' }),
    distro: z
      .string()
      .regex(/^[a-z0-9][a-z0-9._-]{0,63}$/)
      .optional()
      .meta({ description: "Overrides the distro detected from the image's os-release (e.g. debian-12)." }),
    size: z.string().regex(new RegExp(SIZE_PATTERN)).optional().meta({ description: 'ext4 image size (e.g. 2G); computed from the content when absent.' }),
  })
  .meta({ title: 'Catalog entry' })
export type CatalogEntry = z.infer<typeof CatalogEntrySchema>

export const CatalogSchema = z
  .strictObject({
    $schema: z.string().optional().meta({ description: 'Path or URL of this schema, for editors.' }),
    schema_version: z.literal(1),
    entries: z.array(CatalogEntrySchema).min(1).meta({ description: 'One entry per bundle; names are unique.' }),
  })
  .meta({ $id: 'https://bale.dev/schemas/catalog.schema.json', title: 'bale catalog definitions' })
export type Catalog = z.infer<typeof CatalogSchema>

const sha256Hex = z.string().regex(new RegExp(SHA256_HEX_PATTERN))
const integrity = z.string().regex(new RegExp(INTEGRITY_PATTERN)).meta({ description: 'ssri (Subresource Integrity) string of the file.' })
/** A relative URL (resolved against index.json's own URL) or an absolute http(s) one. */
const url = z.string().min(1).max(2048).regex(/^[^\s]+$/)

export const IndexBundleSchema = z
  .strictObject({
    name,
    version,
    url: url.meta({ description: 'Bundle file, relative to index.json (or absolute http/https).' }),
    size: z.number().int().nonnegative(),
    integrity,
    sha256: sha256Hex,
    kernel_ref: kernelRef,
    created: z.string().regex(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z$/).meta({ description: "The bundle manifest's created (UTC)." }),
    description: z.string().max(500).optional(),
    arch: z.string().optional(),
    distro: z.string().optional(),
  })
  .meta({ title: 'Published bundle' })
export type IndexBundle = z.infer<typeof IndexBundleSchema>

export const IndexFileSchema = z
  .strictObject({
    name: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,255}$/)
      .refine((s) => s !== '.' && s !== '..', { message: 'not a file name' }),
    url: url.meta({ description: 'Kernel file, relative to index.json (or absolute http/https).' }),
    size: z.number().int().nonnegative(),
    integrity,
    sha256: sha256Hex,
  })
  .meta({ title: 'Kernel file' })
export type IndexFile = z.infer<typeof IndexFileSchema>

export const IndexKernelSchema = z
  .strictObject({
    ref: kernelRef,
    files: z.array(IndexFileSchema).min(1),
  })
  .meta({ title: 'Published kernel' })
export type IndexKernel = z.infer<typeof IndexKernelSchema>

export const IndexSchema = z
  .strictObject({
    schema_version: z.literal(1),
    bundles: z.array(IndexBundleSchema),
    kernels: z.array(IndexKernelSchema),
  })
  .meta({ $id: 'https://bale.dev/schemas/index.schema.json', title: 'bale published catalog index' })
export type CatalogIndex = z.infer<typeof IndexSchema>

/** index.json and catalog.json are read into memory: 16 MiB is thousands of entries, and refuses a runaway file. */
export const MAX_DOCUMENT_BYTES = 16 * 1024 * 1024

function describeIssues(err: z.ZodError): string {
  const first = err.issues[0]
  if (first === undefined) return 'invalid'
  const where = first.path.length === 0 ? '' : `${first.path.map(String).join('.')}: `
  return `${where}${first.message}`
}

/** Parse a catalog document; `where` (its path) names it in errors. Names must be unique. */
export function parseCatalog(text: string, where: string): Catalog {
  const doc = parseJson(text, where)
  const r = CatalogSchema.safeParse(doc)
  if (!r.success) throw new BaleError('E_INPUT', `${where}: ${describeIssues(r.error)}`, { subject: where })
  const seen = new Set<string>()
  for (const [i, e] of r.data.entries.entries()) {
    if (seen.has(e.name)) throw new BaleError('E_INPUT', `${where}: entries.${i}.name: '${e.name}' appears twice`, { subject: where })
    seen.add(e.name)
  }
  return r.data
}

export function parseIndex(text: string, where: string): CatalogIndex {
  const doc = parseJson(text, where)
  const r = IndexSchema.safeParse(doc)
  if (!r.success) throw new BaleError('E_INPUT', `${where}: ${describeIssues(r.error)}`, { subject: where })
  const seen = new Set<string>()
  for (const b of r.data.bundles) {
    const key = `${b.name}@${b.version}`
    if (seen.has(key)) throw new BaleError('E_INPUT', `${where}: bundle ${key} appears twice`, { subject: where })
    seen.add(key)
  }
  const refs = new Set<string>()
  for (const k of r.data.kernels) {
    if (refs.has(k.ref)) throw new BaleError('E_INPUT', `${where}: kernel ${k.ref} appears twice`, { subject: where })
    refs.add(k.ref)
  }
  return r.data
}

function parseJson(text: string, where: string): unknown {
  try {
    return JSON.parse(text)
  } catch (e) {
    throw new BaleError('E_INPUT', `${where}: not valid JSON (${(e as Error).message})`, { subject: where })
  }
}

/** Read a small JSON document from disk, refusing more than MAX_DOCUMENT_BYTES. */
export async function readDocument(file: string): Promise<string> {
  let fh: fs.FileHandle
  try {
    fh = await fs.open(file, 'r')
  } catch (e) {
    throw fromSystemError(e, file) ?? e
  }
  try {
    const st = await fh.stat()
    if (!st.isFile()) throw new BaleError('E_INPUT', `${file}: not a regular file`, { subject: file })
    if (st.size > MAX_DOCUMENT_BYTES) throw new BaleError('E_INPUT', `${file}: larger than the ${MAX_DOCUMENT_BYTES}-byte limit`, { subject: file })
    return await fh.readFile('utf8')
  } finally {
    await fh.close()
  }
}

export async function loadCatalog(file: string): Promise<Catalog> {
  return parseCatalog(await readDocument(file), file)
}

/** The index serialised the one way bale writes it: sorted, two-space indent, newline (so equal content gives equal bytes). */
export function serializeIndex(index: CatalogIndex): string {
  const bundles = [...index.bundles].sort((a, b) => a.name.localeCompare(b.name, 'en') || compareVersions(a.version, b.version))
  const kernels = [...index.kernels].sort((a, b) => (a.ref < b.ref ? -1 : a.ref > b.ref ? 1 : 0))
  return `${JSON.stringify({ schema_version: 1, bundles, kernels }, null, 2)}\n`
}

/**
 * Order versions the way people read them: digit runs compare as numbers, everything else as
 * text (`3.9` < `3.10`, `12` < `12.1`). Used to pick the newest version when none is given.
 */
export function compareVersions(a: string, b: string): number {
  const pa = a.match(/\d+|\D+/g) ?? []
  const pb = b.match(/\d+|\D+/g) ?? []
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i]
    const y = pb[i]
    if (x === undefined) return -1
    if (y === undefined) return 1
    const nx = /^\d/.test(x)
    const ny = /^\d/.test(y)
    if (nx && ny) {
      const d = BigInt(x) - BigInt(y)
      if (d !== 0n) return d < 0n ? -1 : 1
    } else if (x !== y) {
      return x < y ? -1 : 1
    }
  }
  return 0
}

/** `NAME` or `NAME@VERSION`, validated against the catalog grammar. */
export function parseNameAtVersion(s: string): { name: string; version?: string } {
  const at = s.indexOf('@')
  const n = at < 0 ? s : s.slice(0, at)
  const v = at < 0 ? undefined : s.slice(at + 1)
  if (!new RegExp(NAME_PATTERN).test(n)) throw new BaleError('E_USAGE', `'${s}': not a bundle name (want NAME or NAME@VERSION)`, { subject: s })
  if (v !== undefined && !new RegExp(VERSION_PATTERN).test(v)) throw new BaleError('E_USAGE', `'${s}': '${v}' is not a version`, { subject: s })
  return v === undefined ? { name: n } : { name: n, version: v }
}
