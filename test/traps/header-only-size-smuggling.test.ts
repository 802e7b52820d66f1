/**
 * Trap: a header-only member (symlink, hard link, device, directory, fifo) whose size field
 * claims data. Readers disagree: some skip that many bytes, some do not, so the same archive
 * yields different members in different tools (one of them hiding a member from the other).
 * bale frames members as Go's archive/tar does, the reader behind Docker and containerd, so
 * the image bale builds has the members a container runtime would see.
 */
import { afterEach, expect, it } from 'vitest'
import { buildTar } from '../helpers/tar.js'
import { flatten, listStaging, removeStagings, ROOT, view } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it('the bytes after a symlink header that claims a size are the next member, as in Go', async () => {
  // The symlink claims 1024 bytes of data; what follows it is really the next header.
  const tar = buildTar([
    { name: 'link', type: 'symlink', linkname: 'target', size: 1024 },
    { name: 'visible', content: 'seen by Go and by bale' },
    { name: 'dir', type: 'dir', size: 512 },
    { name: 'dir/also-visible', content: 'x' },
  ])
  const tree = await flatten([tar])
  expect(await view(tree)).toEqual({
    '': ROOT,
    dir: 'dir 0755 0:0',
    'dir/also-visible': 'file 0644 0:0 "x"',
    link: 'symlink 0777 0:0 -> target',
    visible: 'file 0644 0:0 "seen by Go and by bale"',
  })
  const blobs = ['dir/also-visible', 'visible'].map((p) => `blobs/${tree.entries.get(p)?.ino ?? '?'} file 0600`)
  expect(await listStaging(tree.staging)).toEqual(['blobs dir 0700', ...blobs.sort()])
})
