import { stat } from 'node:fs/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { blobPath } from '../../../src/pipeline/tree.js'
import { expectFlattenError, flatten, removeStagings, ROOT, view } from './harness.js'

afterEach(removeStagings)

/** security.capability for cap_net_raw+ep (VFS_CAP_REVISION_2): binary, with NULs. */
const CAP_NET_RAW = Buffer.from('0100000200200000000000000000000000000000', 'hex')

describe('metadata', () => {
  it('keeps permission and setuid/setgid/sticky bits, dropping type bits the writer put in the mode field', async () => {
    const tree = await flatten([
      [
        { name: 'suid', mode: 0o104755 },
        { name: 'sgid', mode: 0o2711 },
        { name: 'tmp', type: 'dir', mode: 0o41777 },
        { name: 'none', mode: 0 },
      ],
    ])
    expect(await view(tree)).toEqual({
      '': ROOT,
      none: 'file 0000 0:0 ""',
      sgid: 'file 2711 0:0 ""',
      suid: 'file 4755 0:0 ""',
      tmp: 'dir 1777 0:0',
    })
  })

  it('keeps uid, gid and mtime from the header or from PAX records (fraction dropped)', async () => {
    const tree = await flatten([
      [
        { name: 'h', uid: 1000, gid: 100, mtime: 1_234_567_890 },
        { name: 'p', pax: { uid: '4294967295', gid: '65534', mtime: '1700000000.999' } },
      ],
    ])
    expect((await view(tree)).h).toBe('file 0644 1000:100 "" @1234567890')
    expect((await view(tree)).p).toBe('file 0644 4294967295:65534 "" @1700000000')
  })

  it('refuses ids ext4 cannot store', async () => {
    await expectFlattenError([[{ name: 'big', pax: { uid: '4294967296' } }]], 'E_INPUT', '"big"', 'uid/gid 4294967296:0 out of range')
  })

  it('keeps device numbers for char and block devices, and fifos', async () => {
    const tree = await flatten([
      [
        { name: 'dev/null', type: 'char', devmajor: 1, devminor: 3, mode: 0o666 },
        { name: 'dev/nvme0n1', type: 'block', devmajor: 259, devminor: 0, mode: 0o660, gid: 6 },
        { name: 'run/fifo', type: 'fifo', mode: 0o600 },
      ],
    ])
    expect(await view(tree)).toMatchObject({
      'dev/null': 'char 0666 0:0 1,3',
      'dev/nvme0n1': 'block 0660 0:6 259,0',
      'run/fifo': 'fifo 0600 0:0',
    })
    expect(tree.entries.get('run/fifo')?.devMajor).toBeUndefined()
  })

  it('keeps binary xattr values from SCHILY.xattr records byte for byte', async () => {
    const tree = await flatten([
      [
        {
          name: 'bin/ping',
          mode: 0o755,
          pax: { 'SCHILY.xattr.security.capability': CAP_NET_RAW, 'SCHILY.xattr.user.empty': '', 'SCHILY.xattr.user.ünï': 'ok' },
        },
      ],
    ])
    expect(tree.entries.get('bin/ping')?.xattrs).toEqual(
      new Map([
        ['security.capability', CAP_NET_RAW],
        ['user.empty', Buffer.alloc(0)],
        ['user.ünï', Buffer.from('ok')],
      ]),
    )
  })

  it('reads LIBARCHIVE.xattr records (percent-encoded name, base64 or base64url value), which win over SCHILY', async () => {
    const tree = await flatten([
      [
        {
          name: 'f',
          pax: {
            'SCHILY.xattr.security.capability': 'lossy',
            'LIBARCHIVE.xattr.security.capability': CAP_NET_RAW.toString('base64').replace(/=+$/, ''),
            'LIBARCHIVE.xattr.user.a%3Db%20c': Buffer.from([0xfb, 0xff]).toString('base64url'),
          },
        },
      ],
    ])
    expect(tree.entries.get('f')?.xattrs).toEqual(
      new Map([
        ['security.capability', CAP_NET_RAW],
        ['user.a=b c', Buffer.from([0xfb, 0xff])],
      ]),
    )
  })

  it('refuses malformed xattr records', async () => {
    await expectFlattenError([[{ name: 'f', pax: { 'LIBARCHIVE.xattr.user.x': 'not base64!' } }]], 'E_INPUT', '"f"', 'is not base64')
    await expectFlattenError([[{ name: 'f', pax: { 'LIBARCHIVE.xattr.user.%zz': 'AA' } }]], 'E_INPUT', '"f"', 'invalid percent-encoding')
    await expectFlattenError([[{ name: 'f', pax: { 'SCHILY.xattr.': 'v' } }]], 'E_INPUT', '"f"', 'invalid xattr name')
  })

  it('ignores PAX global headers', async () => {
    const tree = await flatten([
      [
        { name: '', type: 'pax-global', pax: { path: 'evil', uid: '7', 'SCHILY.xattr.user.g': 'g' } },
        { name: 'a', pax: { gid: '3' } },
        { name: 'b' },
      ],
    ])
    expect(await view(tree)).toEqual({ '': ROOT, a: 'file 0644 0:3 ""', b: 'file 0644 0:0 ""' })
    expect(tree.entries.get('a')?.xattrs.size).toBe(0)
  })

  it('refuses GNU sparse files, old and PAX style', async () => {
    await expectFlattenError([[{ name: 'sparse', typeflag: 'S', content: 'x' }]], 'E_INPUT', '"sparse"', 'GNU sparse files are not supported')
    await expectFlattenError(
      [[{ name: 'GNUSparseFile.0/sparse', pax: { 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': 'sparse' } }]],
      'E_INPUT',
      'GNU sparse files are not supported',
    )
  })

  it('refuses member types it does not know, skips volume labels, reads contiguous files as files', async () => {
    await expectFlattenError([[{ name: 'multi', typeflag: 'M' }]], 'E_INPUT', '"multi"', "unsupported tar member type 'M'")
    const tree = await flatten([[{ name: 'Volume 1', typeflag: 'V' }, { name: 'c', typeflag: '7', content: 'contig' }]])
    expect(await view(tree)).toEqual({ '': ROOT, c: 'file 0644 0:0 "contig"' })
  })

  it('reads old-style directories (regular-file type, trailing slash)', async () => {
    const tree = await flatten([[{ name: 'old/', typeflag: '\0', mode: 0o750 }, { name: 'old/f', content: 'x' }]])
    expect((await view(tree)).old).toBe('dir 0750 0:0')
  })

  it('reads long names from PAX and GNU headers', async () => {
    const long = `${'a'.repeat(200)}/${'b'.repeat(200)}`
    const tree = await flatten([
      [
        { name: long, content: 'pax' },
        { name: `${long}2`, content: 'gnu', longNames: 'gnu' },
        { name: 'link', type: 'symlink', linkname: `/${long}`, longNames: 'gnu' },
      ],
    ])
    expect((await view(tree))[long]).toBe('file 0644 0:0 "pax"')
    expect((await view(tree))[`${long}2`]).toBe('file 0644 0:0 "gnu"')
    expect(tree.entries.get('link')?.linkTarget).toBe(`/${long}`)
  })

  it('builds entries with mode 000 and directories without owner write or search without applying those modes on disk', async () => {
    // Only the model carries these modes (so no root is needed to read them back or remove
    // staging); staging blobs are always 0600 and ours.
    const tree = await flatten([
      [
        { name: 'locked', type: 'dir', mode: 0o500 },
        { name: 'locked/inner', type: 'dir', mode: 0 },
        { name: 'locked/inner/secret', content: 's', mode: 0 },
        { name: 'locked/inner/secret2', type: 'link', linkname: 'locked/inner/secret' },
      ],
      [{ name: 'locked/inner/more', content: 'm', mode: 0o400 }],
    ])
    expect(await view(tree)).toEqual({
      '': ROOT,
      locked: 'dir 0500 0:0',
      'locked/inner': 'dir 0000 0:0',
      'locked/inner/more': 'file 0400 0:0 "m"',
      'locked/inner/secret': 'file 0000 0:0 "s" nlink=2',
      'locked/inner/secret2': 'file 0000 0:0 "s" nlink=2',
    })
    for (const inode of tree.entries.values()) {
      if (inode.kind === 'file') expect((await stat(blobPath(tree, inode))).mode & 0o7777).toBe(0o600)
    }
  })

  it.each([
    ['in a ustar name field', { name: Buffer.from([0x62, 0x69, 0x6e, 0x2f, 0xff]) }, '"bin/\\xff"'],
    ['in a PAX path', { name: 'x', pax: { path: Buffer.from([0x61, 0xc3, 0x28]) } }, '"a\\xc3("'],
    ['in a GNU long name', { name: Buffer.concat([Buffer.alloc(150, 0x6e), Buffer.from([0xfe])]), longNames: 'gnu' as const }, '\\xfe"'],
  ])('refuses names that are not UTF-8 %s, naming them with the bytes escaped', async (_where, entry, shown) => {
    await expectFlattenError([[entry]], 'E_UNSAFE_PATH', shown, 'name is not valid UTF-8')
  })
})
