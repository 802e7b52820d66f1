/**
 * Trap: a member whose parent path crosses a symlink (`etc -> /host/etc`, then `etc/passwd`).
 * An extractor that follows the symlink writes outside the root (node-tar CVE-2021-32803/32804,
 * GHSA-r628-mhmh-qjhw). bale never resolves anything, and refuses such members outright, in
 * the same layer or a later one, however deep the symlink sits.
 */
import { afterEach, expect, it } from 'vitest'
import { expectFlattenError, flatten, listStaging, removeStagings, ROOT, view } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it('a member under a symlink in the same layer is refused, naming both', async () => {
  const msg = await expectFlattenError(
    [
      [
        { name: 'etc', type: 'symlink', linkname: '/tmp/host-etc' },
        { name: 'etc/passwd', content: 'root::0:0::/:/bin/sh\n' },
      ],
    ],
    'E_UNSAFE_PATH',
  )
  expect(msg).toBe('layer 1 (sha256:test0): "etc/passwd": parent "etc" is a symlink')
})

it('a member under a deeper symlink from a lower layer is refused', async () => {
  await expectFlattenError(
    [[{ name: 'a/b/c', type: 'symlink', linkname: '../../..' }], [{ name: 'a/b/c/d/e', type: 'dir' }]],
    'E_UNSAFE_PATH',
    'layer 2 (sha256:test1): "a/b/c/d/e": parent "a/b/c" is a symlink',
  )
})

it('a hard link placed under a symlink is refused', async () => {
  await expectFlattenError(
    [[{ name: 'f', content: 'x' }, { name: 'lnk', type: 'symlink', linkname: '/' }, { name: 'lnk/etc/shadow', type: 'link', linkname: 'f' }]],
    'E_UNSAFE_PATH',
    '"lnk/etc/shadow": parent "lnk" is a symlink',
  )
})

it('a symlink replaced by a real directory first is fine: nothing is resolved', async () => {
  const tree = await flatten([
    [{ name: 'etc', type: 'symlink', linkname: '/host' }],
    [
      { name: 'etc', type: 'dir' },
      { name: 'etc/passwd', content: 'p' },
    ],
  ])
  expect(await view(tree)).toEqual({ '': ROOT, etc: 'dir 0755 0:0', 'etc/passwd': 'file 0644 0:0 "p"' })
  expect(await listStaging(tree.staging)).toEqual(['blobs dir 0700', `blobs/${tree.entries.get('etc/passwd')?.ino ?? '?'} file 0600`])
})
