/**
 * Trap: go-containerregistry #977. Layer 1 has a file and a hard link to it; layer 2 whites out
 * the file. A flattener that models the link as "a copy of whatever is at the target path" (or
 * re-resolves links at the end) loses the link or its content. The link names the same inode,
 * which survives with its content as long as one name is left.
 */
import { afterEach, expect, it } from 'vitest'
import { flatten, listStaging, removeStagings, ROOT, view } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it('a hard link survives its target being whited out in a later layer, with the content', async () => {
  const tree = await flatten([
    [
      { name: 'usr/bin/python3.11', content: 'interpreter', mode: 0o755 },
      { name: 'usr/bin/python3', type: 'link', linkname: 'usr/bin/python3.11' },
    ],
    [{ name: 'usr/bin/.wh.python3.11' }],
  ])
  expect(await view(tree)).toEqual({
    '': ROOT,
    usr: 'dir 0755 0:0',
    'usr/bin': 'dir 0755 0:0',
    'usr/bin/python3': 'file 0755 0:0 "interpreter"',
  })
  const inode = tree.entries.get('usr/bin/python3')
  expect(await listStaging(tree.staging)).toEqual(['blobs dir 0700', `blobs/${inode?.ino ?? '?'} file 0600`])
})

it('the inode and blob go once the last name is whited out too', async () => {
  const tree = await flatten([
    [
      { name: 'a', content: 'x' },
      { name: 'b', type: 'link', linkname: 'a' },
    ],
    [{ name: '.wh.a' }],
    [{ name: '.wh.b' }],
  ])
  expect(await view(tree)).toEqual({ '': ROOT })
  expect(await listStaging(tree.staging)).toEqual(['blobs dir 0700'])
})
