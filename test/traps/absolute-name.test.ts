/**
 * Trap: absolute member names (`/etc/passwd`) must never be host paths. bale treats them as
 * relative to the image root, exactly like `etc/passwd` and `./etc/passwd`.
 */
import { afterEach, expect, it } from 'vitest'
import { flatten, listStaging, removeStagings, ROOT, view } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it('/etc/passwd, ./etc/passwd and etc/passwd are the same image path', async () => {
  const tree = await flatten([
    [
      { name: '/etc/passwd', content: 'one' },
      { name: '/etc/shadow', content: 's', mode: 0o640 },
    ],
    [{ name: './etc/passwd', content: 'two' }],
    [{ name: 'etc/passwd', content: 'three' }, { name: '///etc//./group', content: 'g' }],
  ])
  expect(await view(tree)).toEqual({
    '': ROOT,
    etc: 'dir 0755 0:0',
    'etc/group': 'file 0644 0:0 "g"',
    'etc/passwd': 'file 0644 0:0 "three"',
    'etc/shadow': 'file 0640 0:0 "s"',
  })
  const blobs = ['etc/group', 'etc/passwd', 'etc/shadow'].map((p) => `blobs/${tree.entries.get(p)?.ino ?? '?'} file 0600`)
  expect(await listStaging(tree.staging)).toEqual(['blobs dir 0700', ...blobs.sort()])
})

it('absolute hard-link targets and whiteouts are image paths too', async () => {
  const tree = await flatten([
    [
      { name: '/bin/busybox', content: 'bb' },
      { name: '/bin/sh', type: 'link', linkname: '/bin/busybox' },
      { name: '/tmp/junk', content: 'j' },
    ],
    [{ name: '/tmp/.wh.junk' }],
  ])
  expect(tree.entries.get('bin/sh')).toBe(tree.entries.get('bin/busybox'))
  expect(await view(tree)).toEqual({
    '': ROOT,
    bin: 'dir 0755 0:0',
    'bin/busybox': 'file 0644 0:0 "bb" nlink=2',
    'bin/sh': 'file 0644 0:0 "bb" nlink=2',
    tmp: 'dir 0755 0:0',
  })
})
