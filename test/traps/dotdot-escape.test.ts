/**
 * Trap: `..` components in member names (`../../etc/cron.d/x`, `a/../../b`). bale refuses any
 * `..` component, even one that would stay inside the image, since no path is ever resolved.
 */
import { afterEach, expect, it } from 'vitest'
import { expectFlattenError, removeStagings } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it.each([
  ['../../../../etc/cron.d/evil', '"../../../../etc/cron.d/evil"'],
  ['usr/../../escape', '"usr/../../escape"'],
  ['/../root/.ssh/authorized_keys', '"/../root/.ssh/authorized_keys"'],
  ['a/b/..', '"a/b/.."'],
  ['a/../a/inside', '"a/../a/inside"'],
])('%s is refused by name', async (name, shown) => {
  const msg = await expectFlattenError([[{ name, content: 'pwned' }]], 'E_UNSAFE_PATH')
  expect(msg).toBe(`layer 1 (sha256:test0): ${shown}: path has a '..' component`)
})

it('a `..` carried in a PAX path or a GNU long name is refused too', async () => {
  const long = `${'d/'.repeat(60)}../../x`
  await expectFlattenError([[{ name: 'innocent', pax: { path: '../pax-escape' } }]], 'E_UNSAFE_PATH', '"../pax-escape"', "'..'")
  await expectFlattenError([[{ name: long, longNames: 'gnu' }]], 'E_UNSAFE_PATH', "'..'")
})

it('a directory named `..` is refused', async () => {
  await expectFlattenError([[{ name: '../', type: 'dir' }]], 'E_UNSAFE_PATH', '"../"', "'..'")
})
