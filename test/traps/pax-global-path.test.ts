/**
 * Trap: a PAX global header ('g') carrying `path`, `uid` or xattrs. tar-stream merges global
 * records into every later member's extended header, so a global `path` renames members that
 * have a PAX header of their own. bale ignores global headers entirely.
 */
import { afterEach, expect, it } from 'vitest'
import { flatten, listStaging, removeStagings, ROOT, view } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it('a global path, uid or xattr applies to no member', async () => {
  const tree = await flatten([
    [
      { name: '', type: 'pax-global', pax: { path: 'etc/shadow', uid: '666', 'SCHILY.xattr.security.capability': 'x', comment: 'git sha' } },
      { name: 'a', content: 'A', pax: { mtime: '5' } },
      { name: 'b', content: 'B' },
    ],
  ])
  expect(await view(tree)).toEqual({ '': ROOT, a: 'file 0644 0:0 "A" @5', b: 'file 0644 0:0 "B"' })
  expect(tree.entries.get('a')?.xattrs.size).toBe(0)
  const blobs = ['a', 'b'].map((p) => `blobs/${tree.entries.get(p)?.ino ?? '?'} file 0600`)
  expect(await listStaging(tree.staging)).toEqual(['blobs dir 0700', ...blobs.sort()])
})
