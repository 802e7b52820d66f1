import { afterEach, describe, expect, it } from 'vitest'
import { expectFlattenError, flatten, removeStagings, ROOT, view } from './harness.js'

afterEach(removeStagings)

describe('replacement', () => {
  it('a later file replaces a file with a new inode and deletes the old blob', async () => {
    const tree = await flatten([[{ name: 'f', content: 'one' }], [{ name: 'f', content: 'two', mode: 0o600 }]])
    expect(await view(tree)).toEqual({ '': ROOT, f: 'file 0600 0:0 "two"' })
  })

  it('a directory over a directory updates its metadata and keeps its children and inode', async () => {
    const tree = await flatten([
      [{ name: 'd', type: 'dir', mode: 0o755 }, { name: 'd/keep', content: 'k' }],
      [{ name: 'd', type: 'dir', mode: 0o1777, uid: 4, gid: 5, mtime: 77, pax: { 'SCHILY.xattr.user.x': 'v' } }],
    ])
    expect(await view(tree)).toEqual({ '': ROOT, d: 'dir 1777 4:5 @77', 'd/keep': 'file 0644 0:0 "k"' })
    expect(tree.entries.get('d')?.xattrs).toEqual(new Map([['user.x', Buffer.from('v')]]))
  })

  it('a directory over a directory it implicitly created takes the explicit metadata', async () => {
    const tree = await flatten([[{ name: 'd/f', content: 'x' }, { name: 'd', type: 'dir', mode: 0o700, uid: 1 }]])
    expect((await view(tree)).d).toBe('dir 0700 1:0')
  })

  it('a file replaces a directory and its whole subtree', async () => {
    const tree = await flatten([
      [{ name: 'd/sub/f', content: 'x' }, { name: 'd/g', content: 'y' }],
      [{ name: 'd', content: 'now a file' }],
    ])
    expect(await view(tree)).toEqual({ '': ROOT, d: 'file 0644 0:0 "now a file"' })
  })

  it('a directory replaces a file, a symlink, a device', async () => {
    const tree = await flatten([
      [
        { name: 'f', content: 'x' },
        { name: 's', type: 'symlink', linkname: '/' },
        { name: 'c', type: 'char', devmajor: 1, devminor: 1 },
      ],
      [
        { name: 'f', type: 'dir' },
        { name: 'f/in', content: 'i' },
        { name: 's', type: 'dir' },
        { name: 's/in', content: 'j' },
        { name: 'c', type: 'dir', mode: 0o700 },
      ],
    ])
    expect(await view(tree)).toEqual({
      '': ROOT,
      c: 'dir 0700 0:0',
      f: 'dir 0755 0:0',
      'f/in': 'file 0644 0:0 "i"',
      s: 'dir 0755 0:0',
      's/in': 'file 0644 0:0 "j"',
    })
  })

  it('members of one layer replace each other in archive order', async () => {
    const tree = await flatten([
      [
        { name: 'x', content: '1' },
        { name: 'x', type: 'symlink', linkname: 't' },
        { name: 'x', type: 'fifo' },
        { name: 'x', content: '4' },
      ],
    ])
    expect(await view(tree)).toEqual({ '': ROOT, x: 'file 0644 0:0 "4"' })
  })

  it('a parent that is a file or a device is an error naming the path and the parent', async () => {
    await expectFlattenError([[{ name: 'f', content: 'x' }, { name: 'f/child', content: 'y' }]], 'E_INPUT', '"f/child"', 'parent "f" is not a directory (it is a file)')
    await expectFlattenError(
      [[{ name: 'dev/null', type: 'char', devmajor: 1, devminor: 3 }], [{ name: 'dev/null/x', type: 'dir' }]],
      'E_INPUT',
      'layer 2',
      '"dev/null/x"',
      'parent "dev/null" is not a directory (it is a char)',
    )
  })

  it('nothing but a directory can replace the root', async () => {
    await expectFlattenError([[{ name: '.', content: 'x' }]], 'E_INPUT', '"."', 'a file cannot replace the image root')
    await expectFlattenError([[{ name: '/.', type: 'symlink', linkname: '/' }]], 'E_INPUT', '"/."', 'a symlink cannot replace the image root')
    await expectFlattenError([[{ name: './', type: 'fifo' }]], 'E_INPUT', '"./"', 'a fifo cannot replace the image root')
  })
})
