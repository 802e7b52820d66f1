/**
 * Trap: `.wh.NAME` and a new NAME in the same layer. The whiteout removes the lower NAME only;
 * the layer's own NAME survives whether the whiteout comes before or after it in the archive.
 */
import { afterEach, expect, it } from 'vitest'
import type { TarEntry } from '../helpers/tar.js'
import { flatten, listStaging, removeStagings, ROOT, view } from '../unit/flatten/harness.js'

afterEach(removeStagings)

const lower: TarEntry[] = [
  { name: 'srv/data', type: 'dir', mode: 0o700 },
  { name: 'srv/data/lower.db', content: 'lower' },
  { name: 'srv/file', content: 'lower file' },
]

it.each([
  ['whiteouts before', [{ name: 'srv/.wh.data' }, { name: 'srv/.wh.file' }, { name: 'srv/data', type: 'dir', mode: 0o755 }, { name: 'srv/data/new.db', content: 'new' }, { name: 'srv/file', content: 'upper file' }]],
  ['whiteouts after', [{ name: 'srv/data', type: 'dir', mode: 0o755 }, { name: 'srv/data/new.db', content: 'new' }, { name: 'srv/file', content: 'upper file' }, { name: 'srv/.wh.data' }, { name: 'srv/.wh.file' }]],
  ['whiteouts between', [{ name: 'srv/data', type: 'dir', mode: 0o755 }, { name: 'srv/.wh.data' }, { name: 'srv/data/new.db', content: 'new' }, { name: 'srv/.wh.file' }, { name: 'srv/file', content: 'upper file' }]],
] as Array<[string, TarEntry[]]>)('%s: the layer keeps its own entries, the lower ones are gone', async (_order, upper) => {
  const tree = await flatten([lower, upper])
  expect(await view(tree)).toEqual({
    '': ROOT,
    srv: 'dir 0755 0:0',
    'srv/data': 'dir 0755 0:0',
    'srv/data/new.db': 'file 0644 0:0 "new"',
    'srv/file': 'file 0644 0:0 "upper file"',
  })
  const blobs = ['srv/data/new.db', 'srv/file'].map((p) => `blobs/${tree.entries.get(p)?.ino ?? '?'} file 0600`)
  expect(await listStaging(tree.staging)).toEqual(['blobs dir 0700', ...blobs.sort()])
})
