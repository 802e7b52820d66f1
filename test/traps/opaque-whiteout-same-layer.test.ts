/**
 * Trap: an opaque whiteout (`D/.wh..wh..opq`) in the same layer as new children of D. It hides
 * D's lower-layer children only: the layer's own children of D survive whether they come before
 * or after the marker in the archive (implementations that apply it in stream order delete the
 * ones that came first).
 */
import { afterEach, expect, it } from 'vitest'
import type { TarEntry } from '../helpers/tar.js'
import { flatten, listStaging, removeStagings, ROOT, view } from '../unit/flatten/harness.js'

afterEach(removeStagings)

const lower: TarEntry[] = [
  { name: 'app', type: 'dir', mode: 0o755 },
  { name: 'app/old.js', content: 'old' },
  { name: 'app/lib', type: 'dir' },
  { name: 'app/lib/dep.js', content: 'dep' },
  { name: 'app/same.js', content: 'lower same' },
]

const expected = {
  '': ROOT,
  app: 'dir 0750 0:0',
  'app/before.js': 'file 0644 0:0 "before"',
  'app/same.js': 'file 0644 0:0 "upper same"',
  'app/after': 'dir 0755 0:0',
  'app/after/x.js': 'file 0644 0:0 "after"',
}

it.each([
  ['marker first', [{ name: 'app/.wh..wh..opq' }, { name: 'app', type: 'dir', mode: 0o750 }, { name: 'app/before.js', content: 'before' }, { name: 'app/same.js', content: 'upper same' }, { name: 'app/after/x.js', content: 'after' }]],
  ['marker in the middle', [{ name: 'app', type: 'dir', mode: 0o750 }, { name: 'app/before.js', content: 'before' }, { name: 'app/same.js', content: 'upper same' }, { name: 'app/.wh..wh..opq' }, { name: 'app/after/x.js', content: 'after' }]],
  ['marker last', [{ name: 'app', type: 'dir', mode: 0o750 }, { name: 'app/before.js', content: 'before' }, { name: 'app/same.js', content: 'upper same' }, { name: 'app/after/x.js', content: 'after' }, { name: 'app/.wh..wh..opq' }]],
] as Array<[string, TarEntry[]]>)('%s: only lower children go', async (_order, upper) => {
  const tree = await flatten([lower, upper])
  expect(await view(tree)).toEqual(Object.fromEntries(Object.entries(expected).sort(([a], [b]) => (a < b ? -1 : 1))))
  const blobs = ['app/before.js', 'app/same.js', 'app/after/x.js'].map((p) => `blobs/${tree.entries.get(p)?.ino ?? '?'} file 0600`)
  expect(await listStaging(tree.staging)).toEqual(['blobs dir 0700', ...blobs.sort()])
})
