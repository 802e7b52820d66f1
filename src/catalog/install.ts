import { createHash } from 'node:crypto'
import path from 'node:path'
import { BaleError } from '../lib/errors.js'
import { readBundle } from './bundle-io.js'
import { isSafeRelativePath, parseSha256Sums } from './checksums.js'
import { copyVerified } from './integrity.js'
import { kernelInstalled, stageKernel, type StagedKernel } from './kernels.js'
import { INDEX_FILE, SUMS_FILE } from './layout.js'
import { type CatalogIndex, type IndexBundle, parseIndex, parseNameAtVersion, readDocument, compareVersions } from './schema.js'
import { commitBundle, type CommitStatus, incomingPath } from './store.js'

/**
 * `bale install --from DIR NAME…`: install bundles (and their kernels) from a mirror written by
 * `bale catalog mirror`, on a host with no network. Nothing on this path opens a socket or
 * creates an HTTP client (a unit test walks this module's imports to keep it that way).
 *
 * Trust: SHA256SUMS lists index.json and every file; index.json carries each file's size,
 * sha256 and ssri integrity. Both must agree, and every byte copied into the store is hashed as
 * it is copied and checked against both before it is committed. `sumsSha256` (printed by
 * `bale catalog mirror`) pins SHA256SUMS itself, for a site that receives that value by a
 * separate channel; without it, the checks catch corruption and tampering with a file, not a
 * rewrite of the whole mirror.
 */
export interface InstallOptions {
  readonly from: string
  /** NAME or NAME@VERSION, at least one. */
  readonly selectors: readonly string[]
  /** Expected sha256 (hex) of the mirror's SHA256SUMS file. */
  readonly sumsSha256?: string
  readonly env?: NodeJS.ProcessEnv
}

export interface InstallResult {
  readonly from: string
  readonly bundles: ReadonlyArray<{ name: string; version: string; path: string; sha256: string; status: CommitStatus }>
  readonly kernels: ReadonlyArray<{ ref: string; status: 'installed' | 'unchanged' | 'present' }>
}

export function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

/** Read and cross-check a mirror's SHA256SUMS and index.json. */
export async function openMirror(from: string, sumsSha256?: string): Promise<{ index: CatalogIndex; sums: Map<string, string> }> {
  const sumsFile = path.join(from, SUMS_FILE)
  const sumsText = await readDocument(sumsFile)
  if (sumsSha256 !== undefined && sha256Hex(sumsText) !== sumsSha256.toLowerCase()) {
    throw new BaleError('E_DIGEST', `${sumsFile}: expected sha256:${sumsSha256.toLowerCase()} got sha256:${sha256Hex(sumsText)}`, { subject: sumsFile })
  }
  const sums = parseSha256Sums(sumsText, sumsFile)
  const indexFile = path.join(from, INDEX_FILE)
  const indexText = await readDocument(indexFile)
  const listed = sums.get(INDEX_FILE)
  if (listed === undefined) throw new BaleError('E_INPUT', `${sumsFile}: does not list ${INDEX_FILE}`, { subject: sumsFile })
  const got = sha256Hex(indexText)
  if (got !== listed) throw new BaleError('E_DIGEST', `${indexFile}: expected sha256:${listed} (${SUMS_FILE}) got sha256:${got}`, { subject: indexFile })
  return { index: parseIndex(indexText, indexFile), sums }
}

/** The index entry for NAME (newest version) or NAME@VERSION; `where` names the catalog in the error. */
export function selectEntry(index: CatalogIndex, selector: string, where: string): IndexBundle {
  const { name, version } = parseNameAtVersion(selector)
  const candidates = index.bundles.filter((b) => b.name === name && (version === undefined || b.version === version)).sort((a, b) => compareVersions(b.version, a.version))
  const best = candidates[0]
  if (best === undefined) {
    const have = [...new Set(index.bundles.map((b) => (b.name === name ? `${b.name}@${b.version}` : b.name)))].join(', ') || 'none'
    throw new BaleError('E_NOT_FOUND', `${selector}: not in ${where} (it has: ${have})`, { subject: selector })
  }
  return best
}

/** A file named by the index must be a plain relative path inside the mirror, listed in SHA256SUMS with the index's sha256. */
function mirrorFile(from: string, url: string, sha256: string, sums: Map<string, string>, what: string): string {
  if (!isSafeRelativePath(url)) throw new BaleError('E_UNSAFE_PATH', `${what}: '${url}' is not a path inside the mirror`, { subject: url })
  const listed = sums.get(url)
  if (listed === undefined) throw new BaleError('E_INPUT', `${what}: ${url} is not listed in ${SUMS_FILE}`, { subject: url })
  if (listed !== sha256) throw new BaleError('E_DIGEST', `${what}: ${SUMS_FILE} says sha256:${listed} but ${INDEX_FILE} says sha256:${sha256}`, { subject: url })
  return path.join(from, url)
}

export async function installFromMirror(opts: InstallOptions): Promise<InstallResult> {
  if (opts.selectors.length === 0) throw new BaleError('E_USAGE', 'name at least one bundle to install', { subject: 'NAME' })
  if (opts.sumsSha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(opts.sumsSha256)) {
    throw new BaleError('E_USAGE', `--sha256sums ${opts.sumsSha256}: want 64 hex digits`, { subject: '--sha256sums' })
  }
  const env = opts.env ?? process.env
  const from = path.resolve(opts.from)
  const { index, sums } = await openMirror(from, opts.sumsSha256)
  const entries = opts.selectors.map((s) => selectEntry(index, s, from))

  // Verify everything into staging first; commit only when every file checked out.
  const staged: Array<{ entry: IndexBundle; file: string; release: () => Promise<void> }> = []
  const kernels: Array<{ ref: string; staged?: StagedKernel }> = []
  try {
    for (const ref of new Set(entries.map((e) => e.kernel_ref))) {
      const k = index.kernels.find((x) => x.ref === ref)
      if (k === undefined) {
        if (await kernelInstalled(ref, env)) {
          kernels.push({ ref })
          continue
        }
        throw new BaleError('E_NOT_FOUND', `kernel ${ref}: not in the mirror ${from} and not installed`, { subject: ref })
      }
      const stage = await stageKernel(ref, env)
      kernels.push({ ref, staged: stage })
      for (const f of k.files) {
        const what = `kernel ${ref} ${f.name}`
        const src = mirrorFile(from, f.url, f.sha256, sums, what)
        await copyVerified(src, path.join(stage.dir, f.name), { size: f.size, sha256: f.sha256, integrity: f.integrity }, `${what} (${src})`)
      }
    }
    for (const entry of entries) {
      const what = `${entry.name}@${entry.version}`
      const src = mirrorFile(from, entry.url, entry.sha256, sums, what)
      const incoming = await incomingPath(env)
      staged.push({ entry, file: incoming.path, release: incoming.release })
      await copyVerified(src, incoming.path, { size: entry.size, sha256: entry.sha256, integrity: entry.integrity }, `${what} (${src})`)
      await checkManifest(incoming.path, entry, src)
    }

    const kernelResults: Array<{ ref: string; status: 'installed' | 'unchanged' | 'present' }> = []
    for (const k of kernels) kernelResults.push({ ref: k.ref, status: k.staged === undefined ? 'present' : await k.staged.commit() })
    const bundleResults: Array<{ name: string; version: string; path: string; sha256: string; status: CommitStatus }> = []
    for (const s of staged) {
      const e = s.entry
      const c = await commitBundle(
        s.file,
        { name: e.name, version: e.version, size: e.size, sha256: e.sha256, integrity: e.integrity, kernel_ref: e.kernel_ref, created: e.created, origin: from },
        env,
      )
      bundleResults.push({ name: e.name, version: e.version, path: c.path, sha256: e.sha256, status: c.status })
    }
    return { from, bundles: bundleResults, kernels: kernelResults }
  } finally {
    for (const s of staged) await s.release()
    for (const k of kernels) await k.staged?.discard()
  }
}

/** The bundle's own manifest must say what the index says it is. */
export async function checkManifest(file: string, entry: IndexBundle, what: string): Promise<void> {
  const { manifest } = await readBundle(file)
  for (const [field, want, got] of [
    ['name', entry.name, manifest.name],
    ['version', entry.version, manifest.version],
    ['kernel_ref', entry.kernel_ref, manifest.kernel_ref],
  ] as const) {
    if (want !== got) throw new BaleError('E_INPUT', `${what}: manifest.json says ${field} '${got}', the index says '${want}'`, { subject: what })
  }
}
