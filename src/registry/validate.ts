import { SHA256_DIGEST } from './reference.js'
import type { ConfigFile, Descriptor, ImageIndex, ImageManifest } from './schemas.js'

/**
 * Hand-written checks for the documents `bale pull` reads on every run (descriptors, indexes,
 * manifests, image configs), accepting exactly what manifest.ts's zod schemas accept and
 * returning the same objects (unknown keys dropped). Why not zod here: loading it costs ~30 ms
 * of a cold or warm `bale pull` before anything else happens, and each schema's first parse
 * compiles code, for documents of a few KiB. The schemas stay the reference:
 * test/unit/registry/validate.test.ts checks both against each other on generated documents.
 */
export class Invalid extends Error {
  constructor(
    readonly path: ReadonlyArray<string | number>,
    readonly why: string,
  ) {
    super(`${path.join('.')}: ${why}`)
  }
}

type Path = ReadonlyArray<string | number>

function object(v: unknown, path: Path): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Invalid(path, 'expected an object')
  return v as Record<string, unknown>
}

function string(v: unknown, path: Path): string {
  if (typeof v !== 'string') throw new Invalid(path, 'expected a string')
  return v
}

function array<T>(v: unknown, path: Path, item: (x: unknown, p: Path) => T): T[] {
  if (!Array.isArray(v)) throw new Invalid(path, 'expected an array')
  return v.map((x, i) => item(x, [...path, i]))
}

function digest(v: unknown, path: Path): string {
  const s = string(v, path)
  if (!SHA256_DIGEST.test(s)) throw new Invalid(path, 'not a sha256 digest')
  return s
}

function stringRecord(v: unknown, path: Path): Record<string, string> {
  const o = object(v, path)
  const out: Record<string, string> = {}
  for (const [k, x] of Object.entries(o)) out[k] = string(x, [...path, k])
  return out
}

/** Copy `key` through `check` when present; absent (or undefined) stays absent, as zod's optional(). */
function optional<T>(o: Record<string, unknown>, key: string, path: Path, check: (x: unknown, p: Path) => T, out: Record<string, unknown>): void {
  if (o[key] !== undefined) out[key] = check(o[key], [...path, key])
}

/** zod's nullish(): absent stays absent, null stays null. */
function nullish<T>(o: Record<string, unknown>, key: string, path: Path, check: (x: unknown, p: Path) => T, out: Record<string, unknown>): void {
  if (o[key] === null) out[key] = null
  else optional(o, key, path, check, out)
}

function schemaVersion2(o: Record<string, unknown>, path: Path): 2 {
  if (o.schemaVersion !== 2) throw new Invalid([...path, 'schemaVersion'], 'expected 2')
  return 2
}

export function checkDescriptor(v: unknown, path: Path = []): Descriptor {
  const o = object(v, path)
  const mediaType = string(o.mediaType, [...path, 'mediaType'])
  if (mediaType === '') throw new Invalid([...path, 'mediaType'], 'empty')
  const d = digest(o.digest, [...path, 'digest'])
  const size = o.size
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw new Invalid([...path, 'size'], 'expected a whole number ≥ 0')
  const out: Record<string, unknown> = { mediaType, digest: d, size }
  optional(
    o,
    'platform',
    path,
    (p, pp) => {
      const po = object(p, pp)
      const plat: Record<string, unknown> = { os: string(po.os, [...pp, 'os']), architecture: string(po.architecture, [...pp, 'architecture']) }
      optional(po, 'variant', pp, string, plat)
      optional(po, 'os.version', pp, string, plat)
      return plat
    },
    out,
  )
  optional(o, 'annotations', path, stringRecord, out)
  optional(o, 'urls', path, (u, up) => array(u, up, string), out)
  return out as Descriptor
}

export function checkIndex(v: unknown): ImageIndex {
  const o = object(v, [])
  const out: Record<string, unknown> = { schemaVersion: schemaVersion2(o, []) }
  optional(o, 'mediaType', [], string, out)
  out.manifests = array(o.manifests, ['manifests'], checkDescriptor)
  optional(o, 'annotations', [], stringRecord, out)
  return out as ImageIndex
}

export function checkManifest(v: unknown): ImageManifest {
  const o = object(v, [])
  const out: Record<string, unknown> = { schemaVersion: schemaVersion2(o, []) }
  optional(o, 'mediaType', [], string, out)
  out.config = checkDescriptor(o.config, ['config'])
  out.layers = array(o.layers, ['layers'], checkDescriptor)
  optional(o, 'annotations', [], stringRecord, out)
  return out as ImageManifest
}

const strings = (v: unknown, p: Path): string[] => array(v, p, string)

export function checkConfigFile(v: unknown): ConfigFile {
  const o = object(v, [])
  const out: Record<string, unknown> = {}
  for (const k of ['architecture', 'os', 'variant', 'created']) optional(o, k, [], string, out)
  nullish(
    o,
    'config',
    [],
    (c, cp) => {
      const co = object(c, cp)
      const cfg: Record<string, unknown> = {}
      for (const k of ['Entrypoint', 'Cmd', 'Env']) nullish(co, k, cp, strings, cfg)
      for (const k of ['User', 'WorkingDir', 'StopSignal']) nullish(co, k, cp, string, cfg)
      nullish(co, 'ExposedPorts', cp, (e, ep) => ({ ...object(e, ep) }), cfg)
      nullish(co, 'Labels', cp, stringRecord, cfg)
      return cfg
    },
    out,
  )
  const r = object(o.rootfs, ['rootfs'])
  if (r.type !== 'layers') throw new Invalid(['rootfs', 'type'], "expected 'layers'")
  out.rootfs = { type: 'layers', diff_ids: array(r.diff_ids, ['rootfs', 'diff_ids'], digest) }
  return out as ConfigFile
}
