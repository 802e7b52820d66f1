/**
 * Trap: names that are not valid UTF-8 (Latin-1 `café` as 0x63 0x61 0x66 0xe9). A reader that
 * decodes them lossily turns them into U+FFFD, and two different names collide into one. bale
 * reads names as bytes and refuses invalid UTF-8 by name, showing the bytes escaped.
 */
import { afterEach, expect, it } from 'vitest'
import { expectFlattenError, removeStagings } from '../unit/flatten/harness.js'

afterEach(removeStagings)

const latin1 = Buffer.from([0x63, 0x61, 0x66, 0xe9]) // "café" in Latin-1

it('in the ustar name field', async () => {
  const msg = await expectFlattenError([[{ name: Buffer.concat([Buffer.from('srv/'), latin1]), content: 'x' }]], 'E_UNSAFE_PATH')
  expect(msg).toBe('layer 1 (sha256:test0): "srv/caf\\xe9": name is not valid UTF-8')
})

it('in a PAX path (where tar-stream would have decoded it to U+FFFD)', async () => {
  const msg = await expectFlattenError([[{ name: 'placeholder', pax: { path: Buffer.concat([latin1, Buffer.from('/x')]) } }]], 'E_UNSAFE_PATH')
  expect(msg).toBe('layer 1 (sha256:test0): "caf\\xe9/x": name is not valid UTF-8')
})

it('two different invalid names do not collide into one: both are refused', async () => {
  await expectFlattenError([[{ name: Buffer.from([0x61, 0xfe]) }]], 'E_UNSAFE_PATH', '"a\\xfe"')
  await expectFlattenError([[{ name: Buffer.from([0x61, 0xff]) }]], 'E_UNSAFE_PATH', '"a\\xff"')
})

it('in a symlink target or a hard-link target', async () => {
  await expectFlattenError([[{ name: 's', type: 'symlink', linkname: latin1 }]], 'E_UNSAFE_PATH', '"s": symlink target "caf\\xe9" is not valid UTF-8')
  await expectFlattenError([[{ name: 'h', type: 'link', linkname: latin1 }]], 'E_UNSAFE_PATH', '"h": hard link target "caf\\xe9"')
})
