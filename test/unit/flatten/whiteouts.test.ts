import { afterEach, describe, expect, it } from 'vitest'
import { type TarEntry } from '../../helpers/tar.js'
import { expectFlattenError, flatten, removeStagings, ROOT, view } from './harness.js'

afterEach(removeStagings)

const base: TarEntry[] = [
  { name: 'etc', type: 'dir' },
  { name: 'etc/a', content: 'a1' },
  { name: 'etc/b', content: 'b1' },
  { name: 'etc/sub', type: 'dir' },
  { name: 'etc/sub/c', content: 'c1' },
  { name: 'top', content: 'top1' },
]

describe('whiteouts (.wh.NAME)', () => {
  it('remove a lower file', async () => {
    const tree = await flatten([base, [{ name: 'etc/.wh.a' }]])
    expect(Object.keys(await view(tree))).toEqual(['', 'etc', 'etc/b', 'etc/sub', 'etc/sub/c', 'top'])
  })

  it('remove a lower directory with its whole subtree', async () => {
    const tree = await flatten([base, [{ name: 'etc/.wh.sub' }]])
    expect(Object.keys(await view(tree))).toEqual(['', 'etc', 'etc/a', 'etc/b', 'top'])
  })

  it('at the top level, and in a directory given with ./ or / prefixes', async () => {
    const tree = await flatten([base, [{ name: './.wh.top' }, { name: '/etc/.wh.b' }]])
    expect(Object.keys(await view(tree))).toEqual(['', 'etc', 'etc/a', 'etc/sub', 'etc/sub/c'])
  })

  it('of something absent, or under a file, are no-ops and create nothing', async () => {
    const tree = await flatten([base, [{ name: 'nowhere/deep/.wh.x' }, { name: 'top/.wh.x' }, { name: 'etc/.wh.zzz' }]])
    expect(Object.keys(await view(tree))).toEqual(['', 'etc', 'etc/a', 'etc/b', 'etc/sub', 'etc/sub/c', 'top'])
  })

  it('never appear in the tree, whatever their type', async () => {
    const tree = await flatten([[{ name: '.wh.a' }, { name: 'd/.wh.b', type: 'dir' }, { name: 'd/.wh..wh..opq' }, { name: '.wh.c', type: 'symlink', linkname: 'x' }]])
    // Nor do their parents: a whiteout removes, it never creates.
    expect(await view(tree)).toEqual({ '': ROOT })
  })

  it('do not touch what the same layer adds, before or after the whiteout', async () => {
    const tree = await flatten([
      base,
      [
        { name: 'etc/a', content: 'a2 before' },
        { name: 'etc/.wh.a' },
        { name: 'etc/.wh.b' },
        { name: 'etc/b', content: 'b2 after' },
      ],
    ])
    expect((await view(tree))['etc/a']).toBe('file 0644 0:0 "a2 before"')
    expect((await view(tree))['etc/b']).toBe('file 0644 0:0 "b2 after"')
  })

  it('of a lower directory the same layer writes into keep the new entries under a fresh directory', async () => {
    // As if the whiteout came first: the lower etc (and its lower children) go, etc/new stays,
    // and etc is re-created implicitly (0755 0:0), not with the lower metadata.
    const lower: TarEntry[] = [{ name: 'etc', type: 'dir', mode: 0o700, uid: 5 }, { name: 'etc/old', content: 'o' }]
    const tree = await flatten([lower, [{ name: 'etc/new', content: 'n' }, { name: '.wh.etc' }]])
    expect(await view(tree)).toEqual({ '': ROOT, etc: 'dir 0755 0:0', 'etc/new': 'file 0644 0:0 "n"' })
  })

  it('of a lower directory the same layer re-creates keep the new directory and only its new children', async () => {
    const lower: TarEntry[] = [{ name: 'd', type: 'dir' }, { name: 'd/old', content: 'o' }]
    const tree = await flatten([lower, [{ name: 'd', type: 'dir', mode: 0o711 }, { name: 'd/new', content: 'n' }, { name: '.wh.d' }]])
    expect(await view(tree)).toEqual({ '': ROOT, d: 'dir 0711 0:0', 'd/new': 'file 0644 0:0 "n"' })
  })

  it('of a lower file let the same layer put a directory there, in any order', async () => {
    const lower: TarEntry[] = [{ name: 'x', content: 'file' }]
    for (const layer of [
      [{ name: '.wh.x' }, { name: 'x/child', content: 'c' }],
      [{ name: 'x/child', content: 'c' }, { name: '.wh.x' }],
    ] as TarEntry[][]) {
      const tree = await flatten([lower, layer])
      expect(await view(tree)).toEqual({ '': ROOT, x: 'dir 0755 0:0', 'x/child': 'file 0644 0:0 "c"' })
    }
  })

  it('in a later layer remove what an earlier whiteout layer added', async () => {
    const tree = await flatten([base, [{ name: 'etc/.wh.a' }, { name: 'etc/a', content: 'a2' }], [{ name: 'etc/.wh.a' }]])
    expect(Object.keys(await view(tree))).not.toContain('etc/a')
  })

  it.each([
    ['.wh..', '"etc/.wh.."'],
    ['.wh...', '"etc/.wh..."'],
    ['.wh.', '"etc/.wh."'],
  ])('naming . .. or nothing are refused: %s', async (name, shown) => {
    await expectFlattenError([base, [{ name: `etc/${name}` }]], 'E_UNSAFE_PATH', 'layer 2 (sha256:test1)', shown, "whiteout of '.', '..' or an empty name")
  })

  it('under a symlink are refused', async () => {
    await expectFlattenError(
      [[{ name: 'lib', type: 'symlink', linkname: '/etc' }], [{ name: 'lib/.wh.passwd' }]],
      'E_UNSAFE_PATH',
      '"lib/.wh.passwd"',
      'parent "lib" is a symlink',
    )
  })

  it('skips AUFS metadata at the top of a layer, as Docker does', async () => {
    const tree = await flatten([
      [
        { name: '.wh..wh.aufs', mode: 0o600 },
        { name: '.wh..wh.orph', type: 'dir' },
        { name: '.wh..wh.plnk', type: 'dir', mode: 0o700 },
        { name: '.wh..wh.plnk/237.1234', content: 'aufs hard-link store' },
        { name: 'kept', content: 'k' },
      ],
    ])
    expect(await view(tree)).toEqual({ '': ROOT, kept: 'file 0644 0:0 "k"' })
  })

  it('as a directory component are refused (a whiteout cannot hold entries)', async () => {
    await expectFlattenError([[{ name: 'a/.wh.b/c', content: 'x' }]], 'E_INPUT', '"a/.wh.b/c"', 'whiteout name is used as a directory')
  })

  it('delete the blobs of files that lose their last name', async () => {
    // flatten() checks after every layer that blobs/ holds exactly the live inodes' blobs.
    const tree = await flatten([base, [{ name: '.wh.etc' }, { name: '.wh.top' }]])
    expect(await view(tree)).toEqual({ '': ROOT })
  })
})

describe('opaque whiteouts (.wh..wh..opq)', () => {
  it("remove the directory's lower children but keep the directory and its metadata", async () => {
    const tree = await flatten([
      [{ name: 'etc', type: 'dir', mode: 0o750, uid: 3 }, ...base.slice(1)],
      [{ name: 'etc/.wh..wh..opq' }],
    ])
    expect(await view(tree)).toEqual({ '': ROOT, etc: 'dir 0750 3:0', top: 'file 0644 0:0 "top1"' })
  })

  it('keep children the same layer adds, before and after the marker', async () => {
    const tree = await flatten([
      base,
      [
        { name: 'etc', type: 'dir', mode: 0o700 },
        { name: 'etc/a', content: 'a2' },
        { name: 'etc/.wh..wh..opq' },
        { name: 'etc/new/deep', content: 'd' },
      ],
    ])
    expect(await view(tree)).toEqual({
      '': ROOT,
      etc: 'dir 0700 0:0',
      'etc/a': 'file 0644 0:0 "a2"',
      'etc/new': 'dir 0755 0:0',
      'etc/new/deep': 'file 0644 0:0 "d"',
      top: 'file 0644 0:0 "top1"',
    })
  })

  it('at the root clear every lower entry', async () => {
    const tree = await flatten([base, [{ name: '.wh..wh..opq' }, { name: 'fresh', content: 'f' }]])
    expect(await view(tree)).toEqual({ '': ROOT, fresh: 'file 0644 0:0 "f"' })
  })

  it('in a directory that does not exist create nothing', async () => {
    const tree = await flatten([base, [{ name: 'ghost/.wh..wh..opq' }]])
    expect(Object.keys(await view(tree))).not.toContain('ghost')
  })

  it('inside a symlink are refused', async () => {
    await expectFlattenError(
      [[{ name: 'lnk', type: 'symlink', linkname: 'etc' }], [{ name: 'lnk/.wh..wh..opq' }]],
      'E_UNSAFE_PATH',
      '"lnk/.wh..wh..opq"',
      'parent "lnk" is a symlink',
    )
  })
})
