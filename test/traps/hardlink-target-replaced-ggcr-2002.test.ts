/**
 * Trap: go-containerregistry #2002. Layer 1 has a file and a hard link to it; layer 2 replaces
 * the file's path with new content. The link must keep the old inode and the old content: the
 * new file is a new inode, not a write through the old one.
 */
import { afterEach, expect, it } from 'vitest'
import { flatten, listStaging, removeStagings, ROOT, view } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it('a hard link keeps its own content when the target path is replaced in a later layer', async () => {
  const tree = await flatten([
    [
      { name: 'etc/conf', content: 'old', mode: 0o600, uid: 7 },
      { name: 'etc/conf.link', type: 'link', linkname: 'etc/conf' },
    ],
    [{ name: 'etc/conf', content: 'new!', mode: 0o644 }],
  ])
  expect(await view(tree)).toEqual({
    '': ROOT,
    etc: 'dir 0755 0:0',
    'etc/conf': 'file 0644 0:0 "new!"',
    'etc/conf.link': 'file 0600 7:0 "old"',
  })
  const oldIno = tree.entries.get('etc/conf.link')?.ino
  const newIno = tree.entries.get('etc/conf')?.ino
  expect(oldIno).not.toBe(newIno)
  expect(await listStaging(tree.staging)).toEqual(
    ['blobs dir 0700', `blobs/${oldIno ?? '?'} file 0600`, `blobs/${newIno ?? '?'} file 0600`].sort(),
  )
})

it('also when the target is replaced by a symlink or a directory', async () => {
  const tree = await flatten([
    [
      { name: 'a', content: 'A' },
      { name: 'la', type: 'link', linkname: 'a' },
      { name: 'b', content: 'B' },
      { name: 'lb', type: 'link', linkname: 'b' },
    ],
    [
      { name: 'a', type: 'symlink', linkname: 'la' },
      { name: 'b', type: 'dir' },
    ],
  ])
  expect(await view(tree)).toEqual({
    '': ROOT,
    a: 'symlink 0777 0:0 -> la',
    b: 'dir 0755 0:0',
    la: 'file 0644 0:0 "A"',
    lb: 'file 0644 0:0 "B"',
  })
})
