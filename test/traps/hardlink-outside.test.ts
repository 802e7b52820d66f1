/**
 * Trap: hard links whose target lies outside the image: `../../etc/shadow`, or a path through
 * a symlink that points at the host. Classic extraction with link(2) would link host files into
 * the output. bale checks the target through the same gate as names and looks it up only in
 * its own model, which has nothing under a symlink.
 */
import { afterEach, expect, it } from 'vitest'
import { expectFlattenError, removeStagings } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it.each(['../../../etc/shadow', 'a/../../etc/shadow', '/../etc/shadow'])('target %s is refused', async (target) => {
  const msg = await expectFlattenError([[{ name: 'a', type: 'dir' }, { name: 'stolen', type: 'link', linkname: target }]], 'E_UNSAFE_PATH')
  expect(msg).toBe(`layer 1 (sha256:test0): "stolen": hard link target ${JSON.stringify(target)} is outside the image or absent (path has a '..' component)`)
})

it('a target reached through a symlink to the host is refused', async () => {
  await expectFlattenError(
    [[{ name: 'host', type: 'symlink', linkname: '/' }], [{ name: 'stolen', type: 'link', linkname: 'host/etc/shadow' }]],
    'E_UNSAFE_PATH',
    'layer 2 (sha256:test1): "stolen": hard link target "host/etc/shadow" is outside the image or absent',
  )
})

it('a long target carried by PAX linkpath is gated too', async () => {
  await expectFlattenError(
    [[{ name: 'stolen', type: 'link', linkname: 'x', pax: { linkpath: `${'../'.repeat(40)}etc/shadow` } }]],
    'E_UNSAFE_PATH',
    '"stolen": hard link target',
    "'..'",
  )
})
