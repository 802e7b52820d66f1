import { afterEach, describe, expect, it } from 'vitest'
import { expectFlattenError, flatten, removeStagings, ROOT, view } from './harness.js'

afterEach(removeStagings)

describe('hard links', () => {
  it('share the Inode object (and so the blob and all metadata) with their target', async () => {
    const tree = await flatten([
      [
        { name: 'bin/busybox', content: 'BB', mode: 0o4755, uid: 1 },
        { name: 'bin/sh', type: 'link', linkname: 'bin/busybox', mode: 0o600, uid: 9 },
        { name: 'usr/bin/env', type: 'link', linkname: '/bin/busybox' },
        { name: 'bin/ls', type: 'link', linkname: './bin/sh' },
      ],
    ])
    const bb = tree.entries.get('bin/busybox')
    expect(tree.entries.get('bin/sh')).toBe(bb)
    expect(tree.entries.get('usr/bin/env')).toBe(bb)
    expect(tree.entries.get('bin/ls')).toBe(bb)
    // The link member's own mode and owner are ignored, as link(2) ignores them.
    expect((await view(tree))['bin/sh']).toBe('file 4755 1:0 "BB" nlink=4')
  })

  it('may target symlinks, devices and fifos (not directories)', async () => {
    const tree = await flatten([
      [
        { name: 's', type: 'symlink', linkname: 'x' },
        { name: 'c', type: 'char', devmajor: 1, devminor: 3 },
        { name: 'p', type: 'fifo' },
        { name: 's2', type: 'link', linkname: 's' },
        { name: 'c2', type: 'link', linkname: 'c' },
        { name: 'p2', type: 'link', linkname: 'p' },
      ],
    ])
    expect(tree.entries.get('s2')).toBe(tree.entries.get('s'))
    expect(tree.entries.get('c2')).toBe(tree.entries.get('c'))
    expect(tree.entries.get('p2')).toBe(tree.entries.get('p'))
  })

  it('to a target in a lower layer work', async () => {
    const tree = await flatten([[{ name: 'a', content: 'A' }], [{ name: 'b', type: 'link', linkname: 'a' }]])
    expect(tree.entries.get('b')).toBe(tree.entries.get('a'))
  })

  it('to themselves, when they already exist, change nothing', async () => {
    const tree = await flatten([[{ name: 'a', content: 'A' }, { name: 'a', type: 'link', linkname: 'a' }]])
    expect(await view(tree)).toEqual({ '': ROOT, a: 'file 0644 0:0 "A"' })
  })

  it('replace what is at their name, keeping the old inode alive only through its other names', async () => {
    const tree = await flatten([
      [
        { name: 'a', content: 'A' },
        { name: 'b', content: 'B' },
        { name: 'b2', type: 'link', linkname: 'b' },
        { name: 'b', type: 'link', linkname: 'a' },
      ],
    ])
    expect(await view(tree)).toEqual({
      '': ROOT,
      a: 'file 0644 0:0 "A" nlink=2',
      b: 'file 0644 0:0 "A" nlink=2',
      b2: 'file 0644 0:0 "B"',
    })
  })

  it('over a directory holding their own target keep the target inode and its blob', async () => {
    const tree = await flatten([[{ name: 'd/f', content: 'F' }, { name: 'd', type: 'link', linkname: 'd/f' }]])
    expect(await view(tree)).toEqual({ '': ROOT, d: 'file 0644 0:0 "F"' })
  })

  it('keep their content when the target is removed or replaced later in the same layer', async () => {
    const tree = await flatten([
      [
        { name: 'a', content: 'old' },
        { name: 'b', type: 'link', linkname: 'a' },
        { name: 'a', content: 'new' },
      ],
    ])
    expect(await view(tree)).toEqual({ '': ROOT, a: 'file 0644 0:0 "new"', b: 'file 0644 0:0 "old"' })
  })

  it('to an absent target, a later member, or a directory are refused', async () => {
    await expectFlattenError([[{ name: 'l', type: 'link', linkname: 'missing' }]], 'E_UNSAFE_PATH', '"l"', 'hard link target "missing" is outside the image or absent')
    await expectFlattenError(
      [[{ name: 'l', type: 'link', linkname: 'later' }, { name: 'later', content: 'x' }]],
      'E_UNSAFE_PATH',
      'hard link target "later" is outside the image or absent',
    )
    await expectFlattenError([[{ name: 'd', type: 'dir' }, { name: 'l', type: 'link', linkname: 'd' }]], 'E_UNSAFE_PATH', '"l"', 'hard link target "d" is a directory')
    await expectFlattenError([[{ name: 'l', type: 'link', linkname: '/' }]], 'E_UNSAFE_PATH', 'hard link target "" is a directory')
  })

  it('to a target whited out in the same layer are refused: whiteouts apply first', async () => {
    await expectFlattenError(
      [[{ name: 'a', content: 'A' }], [{ name: 'b', type: 'link', linkname: 'a' }, { name: '.wh.a' }]],
      'E_UNSAFE_PATH',
      'layer 2',
      'hard link target "a" is outside the image or absent',
    )
  })

  it('with targets outside the image, through a symlink or not UTF-8 are refused by the same gate as names', async () => {
    await expectFlattenError([[{ name: 'l', type: 'link', linkname: '../../etc/shadow' }]], 'E_UNSAFE_PATH', '"l"', 'hard link target "../../etc/shadow" is outside the image or absent', "'..'")
    await expectFlattenError(
      [[{ name: 'etc', type: 'symlink', linkname: '/host/etc' }, { name: 'l', type: 'link', linkname: 'etc/passwd' }]],
      'E_UNSAFE_PATH',
      'hard link target "etc/passwd" is outside the image or absent',
    )
    await expectFlattenError(
      [[{ name: 'l', type: 'link', linkname: Buffer.from([0x61, 0xff]) }]],
      'E_UNSAFE_PATH',
      'hard link target "a\\xff" is outside the image or absent (name is not valid UTF-8)',
    )
    await expectFlattenError([[{ name: 'l', type: 'link', linkname: 'a\nb' }]], 'E_UNSAFE_PATH', '"a\\nb"', 'newline')
  })

  it('cannot replace the image root', async () => {
    await expectFlattenError([[{ name: 'f', content: 'x' }, { name: './', type: 'link', linkname: 'f' }]], 'E_INPUT', '"./"', 'a hard link cannot replace the image root')
  })
})

describe('symlinks', () => {
  it('keep their target exactly as written and never resolve it', async () => {
    const tree = await flatten([
      [
        { name: 'abs', type: 'symlink', linkname: '/etc/../../../host' },
        { name: 'rel', type: 'symlink', linkname: '../../..' },
        { name: 'spaces', type: 'symlink', linkname: 'a "b" c' },
        { name: 'dangling', type: 'symlink', linkname: 'nowhere' },
      ],
    ])
    expect(await view(tree)).toEqual({
      '': ROOT,
      abs: 'symlink 0777 0:0 -> /etc/../../../host',
      rel: 'symlink 0777 0:0 -> ../../..',
      spaces: 'symlink 0777 0:0 -> a "b" c',
      dangling: 'symlink 0777 0:0 -> nowhere',
    })
    expect(tree.entries.get('abs')?.size).toBe(Buffer.byteLength('/etc/../../../host'))
  })

  it('are refused as parents of later members, even in a later layer', async () => {
    await expectFlattenError(
      [[{ name: 'etc', type: 'symlink', linkname: '/host/etc' }], [{ name: 'etc/passwd', content: 'x' }]],
      'E_UNSAFE_PATH',
      'layer 2',
      '"etc/passwd"',
      'parent "etc" is a symlink',
    )
    await expectFlattenError(
      [[{ name: 'a/b', type: 'symlink', linkname: '.' }, { name: 'a/b/c/d', content: 'x' }]],
      'E_UNSAFE_PATH',
      '"a/b/c/d"',
      'parent "a/b" is a symlink',
    )
  })

  it('with unrepresentable targets are refused', async () => {
    await expectFlattenError([[{ name: 's', type: 'symlink', linkname: '' }]], 'E_INPUT', '"s"', 'empty target')
    await expectFlattenError([[{ name: 's', type: 'symlink', linkname: 'a\nb' }]], 'E_UNSAFE_PATH', '"s"', 'symlink target "a\\nb"')
    await expectFlattenError([[{ name: 's', type: 'symlink', linkname: Buffer.from([0xc3]) }]], 'E_UNSAFE_PATH', 'symlink target "\\xc3" is not valid UTF-8')
    await expectFlattenError([[{ name: 's', type: 'symlink', linkname: 'x'.repeat(4096) }]], 'E_INPUT', 'longer than 4095 bytes')
  })
})
