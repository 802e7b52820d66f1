/**
 * Property: for random layer sequences over a small alphabet of paths (so members collide,
 * nest, replace and white each other out often), the flattened tree equals a deliberately
 * naive reference model, and staging holds exactly the blobs of live inodes after every layer.
 *
 * The reference spells out the semantics directly: per layer, whiteouts first (against the tree
 * the lower layers left), then the other members in archive order; subtrees are found by prefix
 * scans and hard links by object identity, with none of the implementation's indexes.
 */
import fc from 'fast-check'
import { afterEach, describe, expect, it } from 'vitest'
import { isBaleError, type ErrorCode } from '../../../src/lib/errors.js'
import { applyLayer, createTree } from '../../../src/pipeline/flatten/index.js'
import { readContent, type FlatTree } from '../../../src/pipeline/tree.js'
import { tarStream, type TarEntry } from '../../helpers/tar.js'
import { expectStagingMatches, newStaging, removeStagings } from './harness.js'

afterEach(removeStagings)

const PATHS = ['a', 'b', 'a/x', 'a/y', 'b/x', 'a/x/q']
const DIRS = ['', 'a', 'b', 'a/x']

type Op =
  | { t: 'file'; p: string; mode: number }
  | { t: 'dir'; p: string; mode: number }
  | { t: 'symlink'; p: string; target: string }
  | { t: 'fifo'; p: string }
  | { t: 'link'; p: string; target: string }
  | { t: 'wh'; p: string }
  | { t: 'opq'; d: string }

const path = fc.constantFrom(...PATHS)
// Leaves are the likely files; weights keep roughly half the runs free of errors (links to
// absent targets and members under non-directories are otherwise very common).
const leaf = fc.constantFrom('a/y', 'b/x', 'a/x/q', 'a/x', 'b')
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ t: fc.constant('file' as const), p: leaf, mode: fc.constantFrom(0o644, 0o600, 0o4755) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('dir' as const), p: path, mode: fc.constantFrom(0o755, 0o700) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('symlink' as const), p: path, target: fc.constantFrom('a', '../b', '/x') }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('fifo' as const), p: leaf }) },
  // The target is fixed up by pickLinkTargets: mostly a path an earlier member made a file.
  { weight: 2, arbitrary: fc.record({ t: fc.constant('link' as const), p: path, target: path }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('wh' as const), p: path }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('opq' as const), d: fc.constantFrom(...DIRS) }) },
)
const layers = fc
  .tuple(fc.array(fc.array(op, { maxLength: 7 }), { minLength: 1, maxLength: 4 }), fc.array(fc.nat(), { minLength: 28, maxLength: 28 }))
  .map(([ls, picks]) => pickLinkTargets(ls, picks))

/**
 * Random link targets are nearly always absent, which only tests the error path. Point most
 * links at a path some earlier member wrote as a file (it may have been replaced or whited out
 * since, which is the interesting part); keep one in four random.
 */
function pickLinkTargets(ls: Op[][], picks: number[]): Op[][] {
  const files: string[] = []
  let k = 0
  return ls.map((ops) =>
    ops.map((o) => {
      if (o.t === 'file') files.push(o.p)
      if (o.t !== 'link') return o
      const pick = picks[k++ % picks.length] ?? 0
      return pick % 4 === 0 || files.length === 0 ? o : { ...o, target: files[pick % files.length] as string }
    }),
  )
}

function whiteoutName(p: string): string {
  const i = p.lastIndexOf('/')
  return i < 0 ? `.wh.${p}` : `${p.slice(0, i)}/.wh.${p.slice(i + 1)}`
}

function toTar(ops: Op[], layer: number): TarEntry[] {
  return ops.map((o, i): TarEntry => {
    switch (o.t) {
      case 'file':
        return { name: o.p, content: `L${layer}#${i}`, mode: o.mode }
      case 'dir':
        return { name: o.p, type: 'dir', mode: o.mode }
      case 'symlink':
        return { name: o.p, type: 'symlink', linkname: o.target }
      case 'fifo':
        return { name: o.p, type: 'fifo' }
      case 'link':
        return { name: o.p, type: 'link', linkname: o.target }
      case 'wh':
        return { name: whiteoutName(o.p) }
      case 'opq':
        return { name: o.d === '' ? '.wh..wh..opq' : `${o.d}/.wh..wh..opq` }
    }
  })
}

// ---- the reference model ----
interface RNode {
  kind: 'file' | 'dir' | 'symlink' | 'fifo'
  mode: number
  content?: string
  target?: string
}
type RTree = Map<string, RNode>

class RefError extends Error {
  constructor(readonly code: ErrorCode) {
    super(code)
  }
}

function ancestors(p: string): string[] {
  const parts = p.split('/')
  return parts.slice(0, -1).map((_, i) => parts.slice(0, i + 1).join('/'))
}

function removeSubtree(t: RTree, p: string): void {
  for (const k of [...t.keys()]) if (k === p || k.startsWith(`${p}/`)) t.delete(k)
}

/** For a whiteout at p: 'go' if its parents are all directories, 'none' if one is missing or not a dir. */
function whiteoutParents(t: RTree, p: string): 'go' | 'none' {
  for (const a of ancestors(p)) {
    const n = t.get(a)
    if (n === undefined) return 'none'
    if (n.kind === 'symlink') throw new RefError('E_UNSAFE_PATH')
    if (n.kind !== 'dir') return 'none'
  }
  return 'go'
}

function refLayer(t: RTree, ops: Op[], layer: number): void {
  const removals: Array<() => void> = []
  for (const o of ops) {
    if (o.t === 'wh') {
      if (whiteoutParents(t, o.p) === 'go') removals.push(() => removeSubtree(t, o.p))
    } else if (o.t === 'opq') {
      const d = o.d
      if (whiteoutParents(t, d === '' ? 'x' : `${d}/x`) === 'go' && t.get(d)?.kind === 'dir') {
        removals.push(() => {
          for (const k of [...t.keys()]) if (k !== d && (d === '' || k.startsWith(`${d}/`))) t.delete(k)
        })
      }
    }
  }
  for (const r of removals) r()
  ops.forEach((o, i) => {
    if (o.t === 'wh' || o.t === 'opq') return
    for (const a of ancestors(o.p)) {
      const n = t.get(a)
      if (n === undefined) t.set(a, { kind: 'dir', mode: 0o755 })
      else if (n.kind === 'symlink') throw new RefError('E_UNSAFE_PATH')
      else if (n.kind !== 'dir') throw new RefError('E_INPUT')
    }
    const existing = t.get(o.p)
    if (o.t === 'link') {
      const target = t.get(o.target)
      if (target === undefined || target.kind === 'dir') throw new RefError('E_UNSAFE_PATH')
      if (existing === target) return
      removeSubtree(t, o.p)
      t.set(o.p, target)
      return
    }
    if (o.t === 'dir' && existing?.kind === 'dir') {
      existing.mode = o.mode
      return
    }
    removeSubtree(t, o.p)
    if (o.t === 'file') t.set(o.p, { kind: 'file', mode: o.mode, content: `L${layer}#${i}` })
    else if (o.t === 'dir') t.set(o.p, { kind: 'dir', mode: o.mode })
    else if (o.t === 'symlink') t.set(o.p, { kind: 'symlink', mode: 0o777, target: o.target })
    else t.set(o.p, { kind: 'fifo', mode: 0o644 })
  })
}

// ---- comparison ----
type Shape = Record<string, string>

/** Each path with its node and the sorted set of paths that share its inode. */
function shape<T extends object>(entries: Map<string, T>, describeNode: (n: T) => string): Shape {
  const groups = new Map<T, string[]>()
  for (const [p, n] of entries) groups.set(n, [...(groups.get(n) ?? []), p])
  const out: Shape = {}
  for (const [p, n] of [...entries].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const g = (groups.get(n) ?? []).sort()
    out[p] = `${describeNode(n)}${g.length > 1 ? ` links=${g.join(',')}` : ''}`
  }
  return out
}

async function actualShape(tree: FlatTree): Promise<Shape> {
  const contents = new Map<object, string>()
  for (const i of tree.entries.values()) if (i.kind === 'file') contents.set(i, (await readContent(tree, i)).toString('utf8'))
  return shape(tree.entries, (i) => `${i.kind} ${i.mode.toString(8)} ${contents.get(i) ?? ''}${i.linkTarget ?? ''}`)
}

function refShape(t: RTree): Shape {
  return shape(t, (n) => `${n.kind} ${n.mode.toString(8)} ${n.content ?? ''}${n.target ?? ''}`)
}

// Both ways of storing contents: a blob per file, and a spool per layer (a packed tree).
describe.each([false, true])('flatten property (packed: %s)', (packed) => {
  const stats = { runs: 0, errors: 0, maxEntries: 0, withLinks: 0 }
  it('matches the reference model on random layer sequences, and staging holds only live contents', async () => {
    await fc.assert(
      fc.asyncProperty(layers, async (ls) => {
        const tree = await createTree(await newStaging(), { packed })
        const ref: RTree = new Map([['', { kind: 'dir', mode: 0o755 }]])
        stats.runs++
        for (const [i, ops] of ls.entries()) {
          let refErr: ErrorCode | undefined
          try {
            refLayer(ref, ops, i)
          } catch (e) {
            if (!(e instanceof RefError)) throw e
            refErr = e.code
          }
          let err: ErrorCode | undefined
          try {
            await applyLayer(tree, tarStream(toTar(ops, i), { chunkSize: 64 }), { index: i, label: `layer ${i + 1}` })
          } catch (e) {
            if (!isBaleError(e)) throw e
            err = e.code
          }
          expect(err).toBe(refErr)
          if (err !== undefined) {
            stats.errors++
            return
          }
          expect(await actualShape(tree)).toEqual(refShape(ref))
          await expectStagingMatches(tree)
          stats.maxEntries = Math.max(stats.maxEntries, tree.entries.size)
          if ([...tree.entries.values()].some((n, _, all) => all.indexOf(n) !== all.lastIndexOf(n))) stats.withLinks++
        }
        await removeStagings()
      }),
      // 300 runs take about 4 s on the shared 2-core machine and hit every pairing of the 7
      // operations over the 6 paths many times. A fixed seed keeps CI deterministic (the
      // generator guards below depend on it); FC_SEED=<n> explores other sequences.
      { numRuns: 300, seed: Number(process.env.FC_SEED ?? 20261123) },
    )
    // Guard against a generator that only ever produces errors or trivial trees.
    expect(stats.errors).toBeGreaterThan(stats.runs / 10)
    expect(stats.errors).toBeLessThan(stats.runs * 0.9)
    expect(stats.maxEntries).toBeGreaterThanOrEqual(6)
    expect(stats.withLinks).toBeGreaterThan(10)
  })
})
