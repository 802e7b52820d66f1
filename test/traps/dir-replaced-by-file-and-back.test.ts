/**
 * Trap: a directory replaced by a file in one layer and by a directory again in the next. The
 * old children must not come back (no stale index of children), the file's blob must go, and
 * the new directory starts empty with its own metadata.
 */
import { afterEach, expect, it } from 'vitest'
import { flatten, listStaging, removeStagings, ROOT, view } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it('dir → file → dir keeps nothing from the first directory', async () => {
  const tree = await flatten([
    [
      { name: 'x', type: 'dir', mode: 0o700, uid: 1 },
      { name: 'x/a', content: 'a' },
      { name: 'x/sub/b', content: 'b' },
    ],
    [{ name: 'x', content: 'now a file' }],
    [
      { name: 'x', type: 'dir', mode: 0o751, uid: 2 },
      { name: 'x/c', content: 'c' },
    ],
  ])
  expect(await view(tree)).toEqual({ '': ROOT, x: 'dir 0751 2:0', 'x/c': 'file 0644 0:0 "c"' })
  expect(await listStaging(tree.staging)).toEqual(['blobs dir 0700', `blobs/${tree.entries.get('x/c')?.ino ?? '?'} file 0600`])
})

it('file → dir → file, all within one layer', async () => {
  const tree = await flatten([
    [
      { name: 'y', content: 'first' },
      { name: 'y', type: 'dir' },
      { name: 'y/inner', content: 'inner' },
      { name: 'y', content: 'last' },
    ],
  ])
  expect(await view(tree)).toEqual({ '': ROOT, y: 'file 0644 0:0 "last"' })
  expect(await listStaging(tree.staging)).toEqual(['blobs dir 0700', `blobs/${tree.entries.get('y')?.ino ?? '?'} file 0600`])
})
