import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import zlib from 'node:zlib'
import { promisify } from 'node:util'
import { decompress as zstdDecompress } from 'fzstd'
import { BaleError } from '../../lib/errors.js'
import { readSection } from './elf.js'

/**
 * The virtio drivers a bale guest needs, in the order a human would load them. Debian builds them
 * as modules; the initramfs carries them and stage 1 loads them in the order written to
 * `modules.order` (dependencies first). `optional` ones are skipped when the kernel has neither a
 * module nor a built-in driver for them.
 */
export const GUEST_MODULES: readonly { name: string; optional?: boolean }[] = [
  { name: 'virtio_ring' },
  { name: 'virtio' },
  { name: 'virtio_mmio' }, // microvm's virtio transport
  { name: 'virtio_blk' }, // the root disk
  { name: 'virtio_console' }, // the agent's virtio-serial port
  { name: 'failover' },
  { name: 'net_failover' },
  { name: 'virtio_net' },
  { name: 'virtio_rng', optional: true }, // entropy for the guest's first getrandom()
]

/** A module's identity as the kernel sees it: file names use '-' and '_' interchangeably. */
export function moduleName(fileOrName: string): string {
  return path.basename(fileOrName).replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_')
}

export interface ModInfo {
  name?: string
  depends: string[]
  vermagic?: string
}

/** Parse a `.modinfo` section: NUL-separated `key=value` strings (include/linux/moduleparam.h). */
export function parseModinfo(section: Buffer): ModInfo {
  const info: ModInfo = { depends: [] }
  for (const raw of section.toString('latin1').split('\0')) {
    const eq = raw.indexOf('=')
    if (eq <= 0) continue
    const key = raw.slice(0, eq)
    const value = raw.slice(eq + 1)
    if (key === 'name') info.name = value
    else if (key === 'vermagic') info.vermagic = value
    else if (key === 'depends') info.depends = value.split(',').map((d) => d.trim()).filter(Boolean).map(moduleName)
  }
  return info
}

/** Read a module file, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz` (CONFIG_MODULE_COMPRESS_*). */
export async function readModuleFile(file: string): Promise<Buffer> {
  const data = await fs.readFile(file)
  if (file.endsWith('.ko')) return data
  try {
    if (file.endsWith('.ko.gz')) return await promisify(zlib.gunzip)(data)
    if (file.endsWith('.ko.zst')) return Buffer.from(zstdDecompress(data))
    if (file.endsWith('.ko.xz')) return await xzDecompressBuffer(data)
  } catch (e) {
    throw new BaleError('E_INPUT', `${file}: cannot decompress module: ${(e as Error).message}`, { subject: file, cause: e })
  }
  throw new BaleError('E_INPUT', `${file}: not a kernel module file name (.ko, .ko.xz, .ko.zst, .ko.gz)`, { subject: file })
}

/** Modules are at most a few MB: xz -dc on a buffer is enough (no xz library is a dependency). */
async function xzDecompressBuffer(data: Buffer): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const child = spawn('xz', ['-dc'], { stdio: ['pipe', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (b: Buffer) => out.push(b))
    child.stderr.on('data', (b: Buffer) => err.push(b))
    child.on('error', (e: NodeJS.ErrnoException) => reject(e.code === 'ENOENT' ? new Error('xz not found on PATH (install xz-utils)') : e))
    child.on('close', (code) => (code === 0 ? resolve(Buffer.concat(out)) : reject(new Error(Buffer.concat(err).toString('utf8').trim() || `xz exited ${code}`))))
    child.stdin.on('error', () => undefined)
    child.stdin.end(data)
  })
}

export interface ResolvedModule {
  /** Kernel module name (underscores), e.g. `virtio_rng`. */
  name: string
  /** Where it was found (possibly compressed). */
  source: string
  /** File name inside the initramfs: always uncompressed, e.g. `virtio-rng.ko`. */
  file: string
  /** Uncompressed module bytes' sha256. */
  sha256: string
  depends: string[]
  vermagic?: string
}

export interface ModuleResolution {
  /** Load order: every module after all of its dependencies. */
  modules: ResolvedModule[]
  /** Requested modules the kernel has built in (nothing to load). */
  builtin: string[]
  /** Optional requested modules the kernel has in neither form. */
  absent: string[]
}

/**
 * Index `<modulesDir>` (a `lib/modules/<release>` directory): every module file under it by module
 * name, and the built-in list from `modules.builtin` (absent for hand-made trees: then nothing is
 * known to be built in).
 */
export async function indexModulesDir(modulesDir: string): Promise<{ files: Map<string, string>; builtin: Set<string> }> {
  const files = new Map<string, string>()
  let entries: string[]
  try {
    entries = (await fs.readdir(modulesDir, { recursive: true })).map(String)
  } catch (e) {
    throw new BaleError('E_NOT_FOUND', `${modulesDir}: cannot read the modules directory (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { subject: modulesDir, cause: e })
  }
  for (const rel of entries.sort()) {
    if (!/\.ko(\.(xz|zst|gz))?$/.test(rel)) continue
    const name = moduleName(rel)
    // Two files for one module (e.g. updates/ overriding kernel/): depmod prefers updates/.
    if (!files.has(name) || rel.startsWith('updates/')) files.set(name, path.join(modulesDir, rel))
  }
  const builtin = new Set<string>()
  const list = await fs.readFile(path.join(modulesDir, 'modules.builtin'), 'utf8').catch(() => '')
  for (const line of list.split('\n')) if (line.trim()) builtin.add(moduleName(line.trim()))
  return { files, builtin }
}

/**
 * Resolve the requested modules and everything they depend on (from each module's own
 * `.modinfo` `depends=`, never modules.dep, which a hand-made tree may lack or have stale), and
 * order them so that each comes after its dependencies; ties keep the requested order, then
 * name order, so the result is deterministic.
 */
export async function resolveModules(
  modulesDir: string,
  wanted: readonly { name: string; optional?: boolean }[] = GUEST_MODULES,
): Promise<ModuleResolution> {
  const { files, builtin } = await indexModulesDir(modulesDir)
  const found = new Map<string, ResolvedModule>()
  const builtinHit: string[] = []
  const absent: string[] = []

  const visit = async (name: string, optional: boolean, neededBy: string | undefined): Promise<void> => {
    if (found.has(name) || builtinHit.includes(name)) return
    const file = files.get(name)
    if (file === undefined) {
      if (builtin.has(name)) builtinHit.push(name)
      else if (optional) absent.push(name)
      else {
        const why = neededBy ? `needed by ${neededBy}` : 'a virtio driver bale guests need'
        throw new BaleError('E_INPUT', `${modulesDir}: kernel module ${name} (${why}) is neither a module file here nor listed in modules.builtin`, { subject: modulesDir })
      }
      return
    }
    const data = await readModuleFile(file)
    const section = readSection(data, '.modinfo', file)
    if (section === undefined) throw new BaleError('E_INPUT', `${file}: no .modinfo section: not a kernel module`, { subject: file })
    const info = parseModinfo(section)
    if (info.name !== undefined && moduleName(info.name) !== name) {
      throw new BaleError('E_INPUT', `${file}: .modinfo says its name is ${info.name}, the file name says ${name}`, { subject: file })
    }
    found.set(name, {
      name,
      source: file,
      file: `${path.basename(file).replace(/\.(xz|zst|gz)$/, '')}`,
      sha256: createHash('sha256').update(data).digest('hex'),
      depends: info.depends,
      vermagic: info.vermagic,
    })
    for (const dep of info.depends) await visit(dep, false, name)
  }

  for (const w of wanted) await visit(moduleName(w.name), w.optional ?? false, undefined)
  const rank = new Map(wanted.map((w, i) => [moduleName(w.name), i]))
  return { modules: orderModules([...found.values()], rank), builtin: builtinHit, absent }
}

/**
 * Topological order (Kahn's algorithm) over the modules' `depends`, with ties broken by `rank`
 * (the requested order) and then by name. Dependencies outside the set are built in. A cycle is
 * impossible for modules the kernel loaded, so meeting one means corrupt input.
 */
export function orderModules<T extends { name: string; depends: readonly string[] }>(mods: readonly T[], rank: ReadonlyMap<string, number> = new Map()): T[] {
  const byName = new Map(mods.map((m) => [m.name, m]))
  const indegree = new Map<string, number>()
  const dependents = new Map<string, string[]>()
  for (const m of mods) {
    const deps = [...new Set(m.depends)].filter((d) => byName.has(d))
    indegree.set(m.name, deps.length)
    for (const d of deps) dependents.set(d, [...(dependents.get(d) ?? []), m.name])
  }
  const key = (n: string): [number, string] => [rank.get(n) ?? Number.MAX_SAFE_INTEGER, n]
  const before = (a: string, b: string): number => {
    const [ra, na] = key(a)
    const [rb, nb] = key(b)
    return ra !== rb ? ra - rb : na < nb ? -1 : na > nb ? 1 : 0
  }
  const ready = mods.filter((m) => indegree.get(m.name) === 0).map((m) => m.name)
  const out: T[] = []
  while (ready.length > 0) {
    ready.sort(before)
    const n = ready.shift()!
    out.push(byName.get(n)!)
    for (const d of dependents.get(n) ?? []) {
      const left = indegree.get(d)! - 1
      indegree.set(d, left)
      if (left === 0) ready.push(d)
    }
  }
  if (out.length !== mods.length) {
    const stuck = mods.filter((m) => !out.includes(m)).map((m) => m.name)
    throw new BaleError('E_INPUT', `kernel modules depend on each other in a cycle: ${stuck.join(', ')}`, { subject: stuck.join(',') })
  }
  return out
}
