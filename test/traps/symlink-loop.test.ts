/**
 * Trap: symlink loops (`a -> b`, `b -> a`, `self -> self`, `up -> .`). Anything that resolves
 * links while flattening can hang or recurse forever. bale resolves nothing: loops are stored
 * as they are, and members under them are refused as crossing a symlink, instantly.
 */
import { afterEach, expect, it } from 'vitest'
import { expectFlattenError, flatten, listStaging, removeStagings, ROOT, view } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it('loops are stored as written', async () => {
  const tree = await flatten([
    [
      { name: 'a', type: 'symlink', linkname: 'b' },
      { name: 'b', type: 'symlink', linkname: 'a' },
      { name: 'self', type: 'symlink', linkname: 'self' },
      { name: 'd/up', type: 'symlink', linkname: '..' },
      { name: 'd/here', type: 'symlink', linkname: '.' },
    ],
    [{ name: 'c', type: 'link', linkname: 'a' }],
  ])
  expect(await view(tree)).toEqual({
    '': ROOT,
    a: 'symlink 0777 0:0 -> b nlink=2',
    b: 'symlink 0777 0:0 -> a',
    c: 'symlink 0777 0:0 -> b nlink=2',
    d: 'dir 0755 0:0',
    'd/here': 'symlink 0777 0:0 -> .',
    'd/up': 'symlink 0777 0:0 -> ..',
    self: 'symlink 0777 0:0 -> self',
  })
  expect(await listStaging(tree.staging)).toEqual(['blobs dir 0700'])
})

it('a member through a loop is refused, not followed', async () => {
  await expectFlattenError(
    [[{ name: 'd/here', type: 'symlink', linkname: '.' }], [{ name: 'd/here/here/here/f', content: 'x' }]],
    'E_UNSAFE_PATH',
    '"d/here/here/here/f": parent "d/here" is a symlink',
  )
  await expectFlattenError(
    [[{ name: 'a', type: 'symlink', linkname: 'b' }, { name: 'b', type: 'symlink', linkname: 'a' }, { name: 'l', type: 'link', linkname: 'a/x' }]],
    'E_UNSAFE_PATH',
    'hard link target "a/x" is outside the image or absent',
  )
})
