/**
 * Trap: a hard link to a path that does not exist (yet) in the tree. An extractor that links
 * lazily, or creates the target, invents a file; one that links to a host path leaks it. bale
 * refuses it, naming the link and the target.
 */
import { afterEach, expect, it } from 'vitest'
import { expectFlattenError, removeStagings } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it('a target never seen is refused', async () => {
  const msg = await expectFlattenError([[{ name: 'bin/sh', type: 'link', linkname: 'bin/bash' }]], 'E_UNSAFE_PATH')
  expect(msg).toBe('layer 1 (sha256:test0): "bin/sh": hard link target "bin/bash" is outside the image or absent')
})

it('a target that appears only later in the archive is refused', async () => {
  await expectFlattenError(
    [[{ name: 'early', type: 'link', linkname: 'late' }, { name: 'late', content: 'x' }]],
    'E_UNSAFE_PATH',
    '"early": hard link target "late" is outside the image or absent',
  )
})

it('a target whited out in a lower position of the same layer, or by an earlier layer, is refused', async () => {
  await expectFlattenError(
    [[{ name: 'a', content: 'x' }], [{ name: '.wh.a' }], [{ name: 'b', type: 'link', linkname: 'a' }]],
    'E_UNSAFE_PATH',
    'layer 3 (sha256:test2): "b": hard link target "a" is outside the image or absent',
  )
})

it('a directory target is refused', async () => {
  await expectFlattenError([[{ name: 'etc', type: 'dir' }, { name: 'etc2', type: 'link', linkname: 'etc' }]], 'E_UNSAFE_PATH', '"etc2": hard link target "etc" is a directory')
})
