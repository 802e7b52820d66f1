import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { removeQuietly, tempPathFor, writeFileAtomic } from '../lib/atomic.js'
import { registerCleanup } from '../lib/cleanup.js'
import { BaleError } from '../lib/errors.js'
import { readJsonIfExists } from '../lib/json-file.js'
import { dataDir } from '../lib/paths.js'
import { withDirLock } from './lock.js'
import { compareVersions, INTEGRITY_PATTERN, KERNEL_REF_PATTERN, NAME_PATTERN, parseNameAtVersion, SHA256_HEX_PATTERN, VERSION_PATTERN } from './schema.js'

/**
 * The local store of installed bundles: what `bale fetch` and `bale install` fill and
 * `bale runtime boot NAME` boots.
 *
 *   <data>/bundles/index.json                         one record per installed NAME@VERSION
 *   <data>/bundles/<name>/<version>/bundle.tar.zst    the bundle, exactly as verified
 *   <data>/bundles/.incoming/                         files being verified (same filesystem, so
 *                                                     committing one is a rename)
 *
 * Every change takes the store's lock, writes the bundle under a temp name, renames it into
 * place, then rewrites index.json atomically: a reader sees either the old or the new state.
 */
export interface InstalledBundle {
  readonly name: string
  readonly version: string
  /** Absolute path of the bundle file. */
  readonly path: string
  readonly size: number
  readonly sha256: string
  readonly integrity: string
  readonly kernel_ref: string
  readonly created: string
  readonly installed: string
  /** Where it came from: a catalog URL, `oci://…` reference, or a mirror directory. */
  readonly origin: string
}

const RecordSchema = z.strictObject({
  name: z.string().regex(new RegExp(NAME_PATTERN)),
  version: z.string().regex(new RegExp(VERSION_PATTERN)),
  file: z.string(),
  size: z.number().int().nonnegative(),
  sha256: z.string().regex(new RegExp(SHA256_HEX_PATTERN)),
  integrity: z.string().regex(new RegExp(INTEGRITY_PATTERN)),
  kernel_ref: z.string().regex(new RegExp(KERNEL_REF_PATTERN)),
  created: z.string(),
  installed: z.string(),
  origin: z.string(),
})
type StoreRecord = z.infer<typeof RecordSchema>
const StoreIndexSchema = z.strictObject({ schema_version: z.literal(1), bundles: z.array(RecordSchema) })

export function bundleStoreDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(dataDir(env), 'bundles')
}

const BUNDLE_FILE = 'bundle.tar.zst'

function indexPath(env: NodeJS.ProcessEnv): string {
  return path.join(bundleStoreDir(env), 'index.json')
}

async function readRecords(env: NodeJS.ProcessEnv): Promise<StoreRecord[]> {
  const file = indexPath(env)
  const doc = await readJsonIfExists(file, () => {
    throw new BaleError('E_STATE', `${file}: not valid JSON (the local bundle store index is damaged)`, { subject: file })
  })
  if (doc === undefined) return []
  const r = StoreIndexSchema.safeParse(doc)
  if (!r.success) throw new BaleError('E_STATE', `${file}: not a bale store index (${r.error.issues[0]?.message ?? 'invalid'})`, { subject: file })
  return r.data.bundles
}

async function writeRecords(env: NodeJS.ProcessEnv, records: StoreRecord[]): Promise<void> {
  const sorted = [...records].sort((a, b) => a.name.localeCompare(b.name, 'en') || compareVersions(a.version, b.version))
  await writeFileAtomic(indexPath(env), `${JSON.stringify({ schema_version: 1, bundles: sorted }, null, 2)}\n`)
}

function toInstalled(env: NodeJS.ProcessEnv, r: StoreRecord): InstalledBundle {
  const { file, ...rest } = r
  return { ...rest, path: path.join(bundleStoreDir(env), file) }
}

export async function listInstalled(env: NodeJS.ProcessEnv = process.env): Promise<InstalledBundle[]> {
  return (await readRecords(env)).map((r) => toInstalled(env, r))
}

/** The installed record for NAME (its newest version) or NAME@VERSION, if any. */
export async function findInstalled(name: string, version?: string, env: NodeJS.ProcessEnv = process.env): Promise<InstalledBundle | undefined> {
  const matches = (await readRecords(env)).filter((r) => r.name === name && (version === undefined || r.version === version))
  matches.sort((a, b) => compareVersions(b.version, a.version))
  const best = matches[0]
  return best === undefined ? undefined : toInstalled(env, best)
}

/**
 * `NAME` or `NAME@VERSION` → the installed bundle's path (NAME alone: its newest version by
 * natural version order). This is what `bale runtime boot NAME` calls.
 */
export async function resolveInstalled(nameOrNameAtVersion: string, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const { name, version } = parseNameAtVersion(nameOrNameAtVersion)
  const found = await findInstalled(name, version, env)
  if (found === undefined) {
    throw new BaleError(
      'E_NOT_FOUND',
      `bundle ${nameOrNameAtVersion} is not installed (bale fetch ${nameOrNameAtVersion}, or bale install --from DIR ${nameOrNameAtVersion})`,
      { subject: nameOrNameAtVersion },
    )
  }
  try {
    await fs.access(found.path)
  } catch {
    throw new BaleError('E_STATE', `bundle ${found.name}@${found.version}: ${found.path} is missing from the store (install it again)`, { subject: found.path })
  }
  return found.path
}

/**
 * A fresh path under the store's `.incoming/` directory, for a file being downloaded or copied
 * and verified before it is committed (same filesystem as the store, so commit is a rename).
 * Registered for removal on SIGINT; the returned `release` unregisters and removes it.
 */
export async function incomingPath(env: NodeJS.ProcessEnv = process.env): Promise<{ path: string; release: () => Promise<void> }> {
  const dir = path.join(bundleStoreDir(env), '.incoming')
  await fs.mkdir(dir, { recursive: true })
  const p = path.join(dir, `${process.pid}-${randomBytes(6).toString('hex')}`)
  const unregister = registerCleanup(p)
  return {
    path: p,
    release: async () => {
      unregister()
      await removeQuietly(p)
    },
  }
}

export interface CommitBundle {
  readonly name: string
  readonly version: string
  readonly size: number
  readonly sha256: string
  readonly integrity: string
  readonly kernel_ref: string
  readonly created: string
  readonly origin: string
}

export type CommitStatus = 'installed' | 'replaced' | 'unchanged'

/**
 * Move an already-verified bundle file into the store as NAME@VERSION and record it. `file` is
 * moved (renamed, or copied when it lives on another filesystem) and is gone afterwards. If
 * the same bytes are already installed under that name the store is left as it is.
 */
export async function commitBundle(file: string, b: CommitBundle, env: NodeJS.ProcessEnv = process.env): Promise<{ status: CommitStatus; path: string }> {
  const root = bundleStoreDir(env)
  const rel = path.join(b.name, b.version, BUNDLE_FILE)
  const dest = path.join(root, rel)
  return withDirLock(root, 'bundle store', async () => {
    const records = await readRecords(env)
    const old = records.find((r) => r.name === b.name && r.version === b.version)
    if (old !== undefined && old.sha256 === b.sha256 && old.size === b.size && (await sizeOf(dest)) === b.size) {
      await removeQuietly(file)
      return { status: 'unchanged' as const, path: dest }
    }
    const candidate: StoreRecord = {
      name: b.name,
      version: b.version,
      file: rel,
      size: b.size,
      sha256: b.sha256,
      integrity: b.integrity,
      kernel_ref: b.kernel_ref,
      created: b.created,
      installed: new Date().toISOString(),
      origin: b.origin,
    }
    // Check the record before touching the store: an index that readRecords would refuse
    // (e.g. the reserved version 'latest') must never be written.
    const parsed = RecordSchema.safeParse(candidate)
    if (!parsed.success) {
      throw new BaleError('E_INPUT', `bundle ${b.name}@${b.version}: cannot be installed (${parsed.error.issues[0]?.message ?? 'invalid'})`, { subject: `${b.name}@${b.version}` })
    }
    const record = parsed.data
    await fs.mkdir(path.dirname(dest), { recursive: true })
    await moveInto(file, dest)
    await writeRecords(env, [...records.filter((r) => r !== old), record])
    return { status: old === undefined ? ('installed' as const) : ('replaced' as const), path: dest }
  })
}

async function sizeOf(p: string): Promise<number | undefined> {
  try {
    return (await fs.stat(p)).size
  } catch {
    return undefined
  }
}

/** Rename `src` to `dest` atomically; across filesystems, copy to a temp beside `dest` and rename that. */
export async function moveInto(src: string, dest: string): Promise<void> {
  try {
    await fs.rename(src, dest)
    return
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e
  }
  const tmp = tempPathFor(dest)
  const unregister = registerCleanup(tmp)
  try {
    await fs.copyFile(src, tmp)
    await fs.rename(tmp, dest)
    await removeQuietly(src)
  } catch (e) {
    await removeQuietly(tmp)
    throw e
  } finally {
    unregister()
  }
}
