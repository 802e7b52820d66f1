import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { writeFileAtomic } from '../lib/atomic.js'
import { BaleError } from '../lib/errors.js'
import { readJsonIfExists } from '../lib/json-file.js'
import { parseSize } from '../lib/size.js'
import { makeBundle, type MakeBundleEvent } from '../pipeline/make-bundle.js'
import { registrySource } from '../pipeline/source/registry.js'
import { digestFile } from './integrity.js'
import { bundleFileName } from './layout.js'
import { type CatalogEntry, compareVersions, INTEGRITY_PATTERN, loadCatalog, NAME_PATTERN, parseNameAtVersion, SHA256_HEX_PATTERN, VERSION_PATTERN } from './schema.js'

/**
 * `bale catalog build`: make-bundle for each catalog entry, into a build directory
 *
 *   <out>/<name>/<name>-<version>.bundle.tar.zst
 *   <out>/<name>/<name>-<version>.build.json      what was built from what (the build record)
 *
 * Bundles are reproducible, so a build is identified by its inputs: the pinned source digest,
 * platform, every field that reaches the manifest or the ext4 image, the zstd level, the guest
 * binary's sha256 and bale's own version. When the record's key matches and the bundle still
 * hashes to what the record says, the entry is `cached` and nothing is rebuilt.
 */
export interface CatalogBuildOptions {
  readonly catalogFile: string
  /** Entry names to build; empty for all. */
  readonly names: readonly string[]
  readonly outDir: string
  readonly level: number
  readonly initBinary: string
  readonly agentVersion: string
  /** bale's version: a new bale may write different bytes for the same inputs. */
  readonly baleVersion: string
  readonly tmpDir?: string
  readonly sourceDateEpoch?: number
  /** Registry access for the sources (`user:pass`; else $BALE_REGISTRY_CREDS / docker config). */
  readonly creds?: string
  readonly insecure?: boolean
  /** Rebuild even when the record says the inputs are unchanged. */
  readonly force?: boolean
}

export type CatalogBuildEvent =
  | { type: 'start'; name: string; version: string; source: string }
  | { type: 'stage'; name: string; event: MakeBundleEvent }
  | { type: 'done'; entry: BuiltEntry }

export interface BuiltEntry {
  readonly name: string
  readonly version: string
  readonly status: 'built' | 'cached'
  readonly path: string
  readonly size: number
  readonly sha256: string
  readonly integrity: string
  readonly kernel_ref: string
  /** Identity of the inputs (sha256 over them): equal keys give equal bundles. */
  readonly key: string
}

export interface CatalogBuildResult {
  readonly out: string
  readonly entries: readonly BuiltEntry[]
}

/** Bump when the meaning of the key's fields changes. */
const KEY_FORMAT = 1

export const BuildRecordSchema = z.strictObject({
  schema_version: z.literal(1),
  key: z.string().regex(new RegExp(SHA256_HEX_PATTERN)),
  inputs: z.record(z.string(), z.unknown()),
  bundle: z.strictObject({
    file: z.string().regex(/^[^/]+\.bundle\.tar\.zst$/),
    size: z.number().int().nonnegative(),
    sha256: z.string().regex(new RegExp(SHA256_HEX_PATTERN)),
    integrity: z.string().regex(new RegExp(INTEGRITY_PATTERN)),
    zstd_level: z.number().int().positive(),
  }),
  manifest: z.strictObject({
    name: z.string().regex(new RegExp(NAME_PATTERN)),
    version: z.string().regex(new RegExp(VERSION_PATTERN)),
    kernel_ref: z.string(),
    created: z.string(),
    description: z.string(),
    arch: z.string(),
    distro: z.string(),
  }),
})
export type BuildRecord = z.infer<typeof BuildRecordSchema>

function recordPath(outDir: string, name: string, version: string): string {
  return path.join(outDir, name, `${name}-${version}.build.json`)
}

/** The inputs that decide a bundle's bytes, and their key. */
export function buildInputs(entry: CatalogEntry, o: Pick<CatalogBuildOptions, 'level' | 'agentVersion' | 'baleVersion' | 'sourceDateEpoch'>, agentSha256: string): { inputs: Record<string, unknown>; key: string } {
  const inputs: Record<string, unknown> = {
    key_format: KEY_FORMAT,
    source: entry.source,
    platform: entry.platform,
    name: entry.name,
    version: entry.version,
    description: entry.description,
    distro: entry.distro ?? null,
    size: entry.size ?? null,
    kernel_ref: entry.kernel_ref,
    zstd_level: o.level,
    agent_version: o.agentVersion,
    agent_sha256: agentSha256,
    bale_version: o.baleVersion,
    source_date_epoch: o.sourceDateEpoch ?? null,
  }
  const key = createHash('sha256').update(JSON.stringify(inputs)).digest('hex')
  return { inputs, key }
}

export async function readBuildRecord(file: string): Promise<BuildRecord | undefined> {
  // A damaged or absent record only means the entry is rebuilt.
  const r = BuildRecordSchema.safeParse(await readJsonIfExists(file, () => undefined))
  return r.success ? r.data : undefined
}

function selectEntries(entries: readonly CatalogEntry[], names: readonly string[], catalogFile: string): CatalogEntry[] {
  if (names.length === 0) return [...entries]
  return names.map((n) => {
    const e = entries.find((x) => x.name === n)
    if (e === undefined) {
      throw new BaleError('E_NOT_FOUND', `${catalogFile}: no entry named '${n}' (entries: ${entries.map((x) => x.name).join(', ')})`, { subject: n })
    }
    return e
  })
}

export async function buildCatalog(opts: CatalogBuildOptions, onEvent: (e: CatalogBuildEvent) => void = () => {}): Promise<CatalogBuildResult> {
  const catalog = await loadCatalog(opts.catalogFile)
  const selected = selectEntries(catalog.entries, opts.names, opts.catalogFile)
  // Validate every entry's size up front: a typo in the last entry should not cost the first builds.
  const sizes = new Map(selected.map((e) => [e.name, e.size === undefined ? undefined : parseSize(e.size, `${e.name}: size`)]))
  const agentSha256 = (await digestFile(opts.initBinary, 'sha256')).sha256
  const built: BuiltEntry[] = []
  for (const entry of selected) {
    const { inputs, key } = buildInputs(entry, opts, agentSha256)
    const dir = path.join(opts.outDir, entry.name)
    const file = path.join(dir, bundleFileName(entry.name, entry.version))
    const recFile = recordPath(opts.outDir, entry.name, entry.version)
    const old = opts.force ? undefined : await readBuildRecord(recFile)
    if (old !== undefined && old.key === key && (await stillIntact(file, old))) {
      const done: BuiltEntry = { name: entry.name, version: entry.version, status: 'cached', path: file, ...pick(old), kernel_ref: entry.kernel_ref, key }
      built.push(done)
      onEvent({ type: 'done', entry: done })
      continue
    }
    onEvent({ type: 'start', name: entry.name, version: entry.version, source: entry.source })
    await fs.mkdir(dir, { recursive: true })
    const res = await makeBundle(
      {
        source: registrySource(entry.source, { platform: entry.platform, creds: opts.creds, insecure: opts.insecure }),
        out: file,
        name: entry.name,
        version: entry.version,
        description: entry.description,
        distro: entry.distro,
        kernelRef: entry.kernel_ref,
        sizeBytes: sizes.get(entry.name),
        level: opts.level,
        initBinary: opts.initBinary,
        agentVersion: opts.agentVersion,
        tmpDir: opts.tmpDir,
        sourceDateEpoch: opts.sourceDateEpoch,
      },
      (event) => onEvent({ type: 'stage', name: entry.name, event }),
    )
    const m = res.manifest
    const record: BuildRecord = {
      schema_version: 1,
      key,
      inputs,
      bundle: { file: path.basename(file), size: res.size, sha256: res.sha256, integrity: res.integrity, zstd_level: opts.level },
      manifest: { name: m.name, version: m.version, kernel_ref: m.kernel_ref, created: m.created, description: m.description, arch: m.arch, distro: m.distro },
    }
    // The record is written after the bundle is in place: a record always describes a complete bundle.
    await writeFileAtomic(recFile, `${JSON.stringify(record, null, 2)}\n`)
    const done: BuiltEntry = { name: entry.name, version: entry.version, status: 'built', path: file, ...pick(record), kernel_ref: entry.kernel_ref, key }
    built.push(done)
    onEvent({ type: 'done', entry: done })
  }
  return { out: opts.outDir, entries: built }
}

function pick(r: BuildRecord): { size: number; sha256: string; integrity: string } {
  return { size: r.bundle.size, sha256: r.bundle.sha256, integrity: r.bundle.integrity }
}

/** The bundle the record describes is there and still hashes to the recorded digest. */
async function stillIntact(file: string, rec: BuildRecord): Promise<boolean> {
  try {
    const st = await fs.stat(file)
    if (st.size !== rec.bundle.size) return false
    return (await digestFile(file, 'sha256')).sha256 === rec.bundle.sha256
  } catch {
    return false
  }
}

/** A built bundle, as publish and mirror take it from a build directory. */
export interface BuiltBundle {
  readonly name: string
  readonly version: string
  readonly file: string
  readonly size: number
  readonly sha256: string
  readonly integrity: string
  readonly zstdLevel: number
  readonly kernel_ref: string
  readonly created: string
  readonly description: string
  readonly arch: string
  readonly distro: string
}

/**
 * The built bundles in `outDir` that `selectors` (NAME or NAME@VERSION; empty: every name)
 * ask for; NAME alone picks its newest version there. Errors name what is missing.
 */
export async function loadBuilt(outDir: string, selectors: readonly string[]): Promise<BuiltBundle[]> {
  const all: BuiltBundle[] = []
  let names: string[]
  try {
    names = (await fs.readdir(outDir, { withFileTypes: true })).filter((d) => d.isDirectory() && new RegExp(NAME_PATTERN).test(d.name)).map((d) => d.name)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new BaleError('E_NOT_FOUND', `${outDir}: no build directory (run bale catalog build first)`, { subject: outDir })
    throw e
  }
  for (const name of names.sort()) {
    for (const f of (await fs.readdir(path.join(outDir, name))).sort()) {
      if (!f.endsWith('.build.json')) continue
      const rec = await readBuildRecord(path.join(outDir, name, f))
      if (rec === undefined || rec.manifest.name !== name) continue
      all.push({
        name,
        version: rec.manifest.version,
        file: path.join(outDir, name, rec.bundle.file),
        size: rec.bundle.size,
        sha256: rec.bundle.sha256,
        integrity: rec.bundle.integrity,
        zstdLevel: rec.bundle.zstd_level,
        kernel_ref: rec.manifest.kernel_ref,
        created: rec.manifest.created,
        description: rec.manifest.description,
        arch: rec.manifest.arch,
        distro: rec.manifest.distro,
      })
    }
  }
  if (selectors.length === 0) {
    if (all.length === 0) throw new BaleError('E_NOT_FOUND', `${outDir}: no built bundles (run bale catalog build first)`, { subject: outDir })
    return all
  }
  return selectors.map((s) => {
    const { name, version } = parseNameAtVersion(s)
    const candidates = all.filter((b) => b.name === name && (version === undefined || b.version === version)).sort((a, b) => compareVersions(b.version, a.version))
    const best = candidates[0]
    if (best === undefined) throw new BaleError('E_NOT_FOUND', `${s}: not built in ${outDir} (run bale catalog build ${name})`, { subject: s })
    return best
  })
}
