import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { writeFileAtomic } from '../lib/atomic.js'
import { BaleError } from '../lib/errors.js'
import type { BuiltBundle } from './build.js'
import { formatSha256Sums } from './checksums.js'
import { copyVerified, digestFile } from './integrity.js'
import { kernelFiles } from './kernels.js'
import { bundleUrl, INDEX_FILE, kernelUrl, SUMS_FILE } from './layout.js'
import { withDirLock } from './lock.js'
import { type CatalogIndex, type IndexBundle, type IndexKernel, parseIndex, readDocument, serializeIndex } from './schema.js'

/**
 * Publishing to a directory (served over HTTP as it is, or carried on removable media), laid
 * out as layout.ts says. Files are copied to a temp name and renamed once their bytes verified against the build
 * record; index.json is written last, atomically. A publish killed at any point leaves the old
 * index.json (and so the old catalog) intact: new files are either absent, complete but not yet
 * listed, or temp files that the next publish removes. Entries already in the index for other
 * names or versions are kept; publishing the same bundles again changes nothing.
 */
export type PublishStatus = 'added' | 'updated' | 'unchanged'

export interface DirPublishOptions {
  readonly dir: string
  readonly bundles: readonly BuiltBundle[]
  /** Also carry the bundles' kernels from the local kernel store. */
  readonly kernels: boolean
  /** Also write SHA256SUMS (a mirror). */
  readonly checksums: boolean
  readonly env?: NodeJS.ProcessEnv
  readonly onEvent?: (e: { type: 'copy'; what: string; bytes: number }) => void
}

export interface DirPublishResult {
  readonly dir: string
  readonly index: string
  readonly index_changed: boolean
  readonly bundles: ReadonlyArray<{ name: string; version: string; url: string; status: PublishStatus }>
  readonly kernels: ReadonlyArray<{ ref: string; status: PublishStatus }>
  readonly checksums?: string
}

/** The existing index.json of a publish directory, or an empty one. A foreign or damaged file is refused, not overwritten. */
export async function readDirIndex(dir: string): Promise<{ index: CatalogIndex; text: string | undefined }> {
  const file = path.join(dir, INDEX_FILE)
  let text: string
  try {
    text = await readDocument(file)
  } catch (e) {
    if (e instanceof BaleError && e.code === 'E_NOT_FOUND') return { index: { schema_version: 1, bundles: [], kernels: [] }, text: undefined }
    throw e
  }
  return { index: parseIndex(text, file), text }
}

/** Temp files (`.NAME.tmp-PID-HEX`) left by a publish that was killed; removed when their process is gone. */
async function sweepStaleTemps(dir: string): Promise<void> {
  let names: string[]
  try {
    names = await fs.readdir(dir)
  } catch {
    return
  }
  for (const n of names) {
    const m = /^\..+\.tmp-(\d+)-[0-9a-f]{8}$/.exec(n)
    if (m === null) continue
    const pid = Number(m[1])
    let alive = true
    try {
      process.kill(pid, 0)
    } catch (e) {
      alive = (e as NodeJS.ErrnoException).code === 'EPERM'
    }
    if (!alive || pid === process.pid) await fs.rm(path.join(dir, n), { recursive: true, force: true })
  }
}

/** True when `file` exists with the expected size and sha256 (a damaged published copy is replaced). */
async function alreadyThere(file: string, size: number, sha256: string): Promise<boolean> {
  try {
    const st = await fs.stat(file)
    if (!st.isFile() || st.size !== size) return false
    return (await digestFile(file, 'sha256')).sha256 === sha256
  } catch {
    return false
  }
}

export async function publishToDir(opts: DirPublishOptions): Promise<DirPublishResult> {
  const dir = path.resolve(opts.dir)
  const env = opts.env ?? process.env
  return withDirLock(dir, 'publish to', async () => {
    const { index: old, text: oldText } = await readDirIndex(dir)
    const bundles = new Map(old.bundles.map((b) => [`${b.name}@${b.version}`, b]))
    const kernels = new Map(old.kernels.map((k) => [k.ref, k]))
    const bundleResults: Array<{ name: string; version: string; url: string; status: PublishStatus }> = []
    const kernelResults: Array<{ ref: string; status: PublishStatus }> = []
    // Kernels are looked up first: a missing kernel fails the publish before any bundle is copied.
    const kernelPlan: Array<{ ref: string; files: Awaited<ReturnType<typeof kernelFiles>> }> = []
    if (opts.kernels) {
      const refs = new Map<string, string>()
      for (const b of opts.bundles) if (!refs.has(b.kernel_ref)) refs.set(b.kernel_ref, `${b.name}@${b.version}`)
      for (const [ref, neededBy] of refs) kernelPlan.push({ ref, files: await kernelFiles(ref, neededBy, env) })
    }

    for (const b of opts.bundles) {
      const url = bundleUrl(b.name, b.version)
      const dest = path.join(dir, url)
      await fs.mkdir(path.dirname(dest), { recursive: true })
      await sweepStaleTemps(path.dirname(dest))
      const key = `${b.name}@${b.version}`
      const prev = bundles.get(key)
      if (!(await alreadyThere(dest, b.size, b.sha256))) {
        opts.onEvent?.({ type: 'copy', what: url, bytes: b.size })
        await copyVerified(b.file, dest, { size: b.size, sha256: b.sha256, integrity: b.integrity }, `${key} (${b.file})`)
      }
      const entry: IndexBundle = {
        name: b.name,
        version: b.version,
        url,
        size: b.size,
        integrity: b.integrity,
        sha256: b.sha256,
        kernel_ref: b.kernel_ref,
        created: b.created,
        description: b.description,
        arch: b.arch,
        distro: b.distro,
      }
      bundles.set(key, entry)
      bundleResults.push({ name: b.name, version: b.version, url, status: prev === undefined ? 'added' : JSON.stringify(prev) === JSON.stringify(entry) ? 'unchanged' : 'updated' })
    }

    for (const { ref, files } of kernelPlan) {
      const entry: IndexKernel = { ref, files: [] }
      const kdir = path.join(dir, 'kernels', ref)
      await fs.mkdir(kdir, { recursive: true })
      await sweepStaleTemps(kdir)
      for (const f of files) {
        const url = kernelUrl(ref, f.name)
        const d = await digestFile(f.path)
        const dest = path.join(dir, url)
        if (!(await alreadyThere(dest, d.size, d.sha256))) {
          opts.onEvent?.({ type: 'copy', what: url, bytes: d.size })
          await copyVerified(f.path, dest, d, `kernel ${ref} ${f.name} (${f.path})`)
        }
        entry.files.push({ name: f.name, url, size: d.size, integrity: d.integrity, sha256: d.sha256 })
      }
      const prev = kernels.get(ref)
      kernels.set(ref, entry)
      kernelResults.push({ ref, status: prev === undefined ? 'added' : JSON.stringify(prev) === JSON.stringify(entry) ? 'unchanged' : 'updated' })
    }

    await sweepStaleTemps(dir)
    const next: CatalogIndex = { schema_version: 1, bundles: [...bundles.values()], kernels: [...kernels.values()] }
    const text = serializeIndex(next)
    const indexFile = path.join(dir, INDEX_FILE)
    const indexChanged = text !== oldText
    if (indexChanged) await writeFileAtomic(indexFile, text)

    let sums: string | undefined
    if (opts.checksums) {
      sums = path.join(dir, SUMS_FILE)
      const content = formatSha256Sums(checksumLines(next, text))
      const current = await fs.readFile(sums, 'utf8').catch(() => undefined)
      if (current !== content) await writeFileAtomic(sums, content)
    }
    return { dir, index: indexFile, index_changed: indexChanged, bundles: bundleResults, kernels: kernelResults, ...(sums === undefined ? {} : { checksums: sums }) }
  })
}

/** Every file the index lists, plus index.json itself, with its sha256. */
function checksumLines(index: CatalogIndex, indexText: string): Array<{ sha256: string; file: string }> {
  const lines: Array<{ sha256: string; file: string }> = []
  for (const b of index.bundles) lines.push({ sha256: b.sha256, file: b.url })
  for (const k of index.kernels) for (const f of k.files) lines.push({ sha256: f.sha256, file: f.url })
  lines.push({ sha256: sha256Hex(indexText), file: INDEX_FILE })
  return lines
}

function sha256Hex(s: string): string {
  return createHash('sha256').update(s).digest('hex')
}

