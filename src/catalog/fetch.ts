import { promises as fs } from 'node:fs'
import path from 'node:path'
import { removeQuietly } from '../lib/atomic.js'
import { BaleError } from '../lib/errors.js'
import { cacheDir } from '../lib/paths.js'
import { parseOciTarget } from './artifact.js'
import { digestFile } from './integrity.js'
import { checkManifest, selectEntry } from './install.js'
import { HttpClient } from './http.js'
import { kernelInstalled, stageKernel } from './kernels.js'
import { withFileLock } from './lock.js'
import { INDEX_FILE } from './layout.js'
import { fetchOciKernel, openOciBundle } from './oci.js'
import { parseIndex, parseNameAtVersion } from './schema.js'
import { commitBundle, type CommitStatus, findInstalled, incomingPath, type InstalledBundle } from './store.js'

/**
 * `bale fetch NAME[@VERSION] --catalog URL|oci://HOST/REPO`: download a published bundle (and
 * its kernel, if not imported yet) into the local store, verified, so `bale runtime boot NAME`
 * can boot it.
 *
 * - From a directory served over HTTP: index.json names the file, its size, sha256 and ssri
 *   integrity. The download goes to `<cache>/downloads/<sha256>.partial`, resumes with Range
 *   after an interruption (also across runs), is hashed as it arrives and checked against the
 *   index; a mismatch deletes it and fails naming the entry.
 * - From a registry: the bundle artifact's layer goes through the registry store (verified by
 *   digest, resumable), the rootfs is checked against manifest.json's sha256, and the bundle
 *   file is written again from the two (bundles are reproducible: with the recorded zstd level
 *   this gives the published file's bytes, which `reproduced` reports).
 *
 * Already installed with the same bytes: nothing is downloaded (`cached`).
 */
export interface FetchOptions {
  readonly selector: string
  /** http(s)://…[/index.json] or oci://HOST/REPO. */
  readonly catalog: string
  readonly insecure?: boolean
  readonly creds?: string
  /** Fetch the bundle's kernel too when it is not imported (default true). */
  readonly kernel?: boolean
  readonly env?: NodeJS.ProcessEnv
}

export interface FetchResult {
  readonly name: string
  readonly version: string
  readonly status: 'downloaded' | 'cached'
  readonly install: CommitStatus
  readonly path: string
  readonly size: number
  readonly sha256: string
  readonly integrity: string
  readonly source: string
  /** Bytes already on disk when the download started (a resumed download). */
  readonly resumed_from: number
  /** From a registry: whether the rebuilt file is byte-identical to the published one. */
  readonly reproduced?: boolean
  readonly kernel: { ref: string; status: 'installed' | 'unchanged' | 'present' | 'not-published' | 'skipped' }
}

/** Another process downloading the same bundle is waited for up to 30 min (a large bundle on a slow link), as the registry store does. */
const DOWNLOAD_LOCK_WAIT_MS = 30 * 60 * 1000

export function isOciCatalog(catalog: string): boolean {
  return catalog.startsWith('oci://')
}

/** `http://host/dir`, `http://host/dir/`, `http://host/dir/index.json` → the index.json URL. */
export function indexUrl(catalog: string): URL {
  let u: URL
  try {
    u = new URL(catalog)
  } catch {
    throw new BaleError('E_USAGE', `--catalog ${catalog}: not a URL (want http(s)://…/index.json or oci://HOST/REPO)`, { subject: catalog })
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new BaleError('E_USAGE', `--catalog ${catalog}: want http(s)://…/index.json or oci://HOST/REPO`, { subject: catalog })
  }
  if (!u.pathname.endsWith('.json')) u.pathname = `${u.pathname.replace(/\/*$/, '')}/${INDEX_FILE}`
  return u
}

/** The installed file still has the recorded bytes (a damaged one is fetched again, not trusted). */
async function intact(b: InstalledBundle): Promise<boolean> {
  try {
    const d = await digestFile(b.path, 'sha256')
    return d.size === b.size && d.sha256 === b.sha256
  } catch {
    return false
  }
}

export async function fetchBundle(opts: FetchOptions): Promise<FetchResult> {
  return isOciCatalog(opts.catalog) ? fetchFromRegistry(opts) : fetchFromHttp(opts)
}

async function fetchFromHttp(opts: FetchOptions): Promise<FetchResult> {
  const env = opts.env ?? process.env
  const url = indexUrl(opts.catalog)
  const http = new HttpClient({ insecure: opts.insecure })
  try {
    const doc = await http.getDocument(url)
    const index = parseIndex(doc.text, String(doc.url))
    const entry = selectEntry(index, opts.selector, String(doc.url))
    const what = `${entry.name}@${entry.version}`
    const kernel = async (): Promise<FetchResult['kernel']> => {
      const ref = entry.kernel_ref
      if (opts.kernel === false) return { ref, status: 'skipped' }
      if (await kernelInstalled(ref, env)) return { ref, status: 'present' }
      const k = index.kernels.find((x) => x.ref === ref)
      if (k === undefined) return { ref, status: 'not-published' }
      const stage = await stageKernel(ref, env)
      try {
        for (const f of k.files) {
          const part = path.join(stage.dir, f.name)
          await http.download(new URL(f.url, doc.url), part, { size: f.size, sha256: f.sha256, integrity: f.integrity }, `kernel ${ref} ${f.name}`)
        }
        return { ref, status: await stage.commit() }
      } finally {
        await stage.discard()
      }
    }

    const installed = await findInstalled(entry.name, entry.version, env)
    if (installed !== undefined && installed.sha256 === entry.sha256 && installed.size === entry.size && (await intact(installed))) {
      return {
        name: entry.name,
        version: entry.version,
        status: 'cached',
        install: 'unchanged',
        path: installed.path,
        size: entry.size,
        sha256: entry.sha256,
        integrity: entry.integrity,
        source: String(doc.url),
        resumed_from: 0,
        kernel: await kernel(),
      }
    }
    const downloads = path.join(cacheDir(env), 'downloads')
    await fs.mkdir(downloads, { recursive: true })
    // Named by the expected sha256: a rerun (or another entry with the same bytes) resumes it.
    const partial = path.join(downloads, `${entry.sha256}.partial`)
    const bundleUrl = new URL(entry.url, doc.url)
    // One process per partial file: two fetches of the same bundle must not append to it at once.
    const { got, c, k } = await withFileLock(
      `${partial}.lock`,
      `fetch ${what}`,
      async () => {
        const got = await http.download(bundleUrl, partial, { size: entry.size, sha256: entry.sha256, integrity: entry.integrity }, `${what} (${bundleUrl})`)
        try {
          await checkManifest(partial, entry, `${what} (${bundleUrl})`)
        } catch (e) {
          await removeQuietly(partial)
          throw e
        }
        const k = await kernel()
        const c = await commitBundle(
          partial,
          { name: entry.name, version: entry.version, size: entry.size, sha256: entry.sha256, integrity: entry.integrity, kernel_ref: entry.kernel_ref, created: entry.created, origin: String(doc.url) },
          env,
        )
        return { got, c, k }
      },
      DOWNLOAD_LOCK_WAIT_MS,
    )
    return {
      name: entry.name,
      version: entry.version,
      status: 'downloaded',
      install: c.status,
      path: c.path,
      size: got.size,
      sha256: got.sha256,
      integrity: got.integrity,
      source: String(bundleUrl),
      resumed_from: got.resumedFrom,
      kernel: k,
    }
  } finally {
    await http.close()
  }
}

async function fetchFromRegistry(opts: FetchOptions): Promise<FetchResult> {
  const env = opts.env ?? process.env
  const base = parseOciTarget(opts.catalog)
  const { name, version } = parseNameAtVersion(opts.selector)
  const access = { creds: opts.creds, insecure: opts.insecure, env }
  const art = await openOciBundle(base, name, version ?? 'latest', access)
  try {
    const m = art.manifest
    if (version !== undefined && m.version !== version) {
      throw new BaleError('E_INPUT', `${art.reference}: manifest.json says version '${m.version}'`, { subject: art.reference })
    }
    const kernel = async (): Promise<FetchResult['kernel']> => {
      const ref = m.kernel_ref
      if (opts.kernel === false) return { ref, status: 'skipped' }
      if (await kernelInstalled(ref, env)) return { ref, status: 'present' }
      try {
        return { ref, status: await fetchOciKernel(base, ref, access) }
      } catch (e) {
        if (e instanceof BaleError && e.code === 'E_NOT_FOUND') return { ref, status: 'not-published' }
        throw e
      }
    }
    const installed = await findInstalled(m.name, m.version, env)
    if (installed !== undefined && art.bundleSha256 !== undefined && installed.sha256 === art.bundleSha256 && (await intact(installed))) {
      return {
        name: m.name,
        version: m.version,
        status: 'cached',
        install: 'unchanged',
        path: installed.path,
        size: installed.size,
        sha256: installed.sha256,
        integrity: installed.integrity,
        source: `${art.reference}@${art.manifestDigest}`,
        resumed_from: 0,
        reproduced: true,
        kernel: await kernel(),
      }
    }
    const incoming = await incomingPath(env)
    try {
      const got = await art.assemble(incoming.path)
      const k = await kernel()
      const c = await commitBundle(
        incoming.path,
        { name: m.name, version: m.version, size: got.size, sha256: got.sha256, integrity: got.integrity, kernel_ref: m.kernel_ref, created: m.created, origin: `oci://${art.reference}@${art.manifestDigest}` },
        env,
      )
      return {
        name: m.name,
        version: m.version,
        status: got.downloaded ? 'downloaded' : 'cached',
        install: c.status,
        path: c.path,
        size: got.size,
        sha256: got.sha256,
        integrity: got.integrity,
        source: `${art.reference}@${art.manifestDigest}`,
        resumed_from: got.resumedFrom,
        ...(art.bundleSha256 === undefined ? {} : { reproduced: art.bundleSha256 === got.sha256 }),
        kernel: k,
      }
    } finally {
      await incoming.release()
    }
  } finally {
    await art.close()
  }
}
