/**
 * Trap: a path component over 255 bytes (ext4's and Linux's NAME_MAX) or a path over 4095
 * bytes. PAX and GNU long names carry them easily; mkfs.ext4 -d or debugfs would fail late or
 * truncate. They are refused up front, by name.
 */
import { afterEach, expect, it } from 'vitest'
import { expectFlattenError, flatten, removeStagings } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it('255 bytes is fine, 256 is refused (PAX and GNU long names alike)', async () => {
  const ok = `d/${'k'.repeat(255)}`
  const tree = await flatten([[{ name: ok, content: 'x' }]])
  expect(tree.entries.has(ok)).toBe(true)
  const bad = `d/${'k'.repeat(256)}`
  const msg = await expectFlattenError([[{ name: bad }]], 'E_UNSAFE_PATH', 'a path component is longer than 255 bytes')
  expect(msg).toContain(`"d/${'k'.repeat(200)}`)
  await expectFlattenError([[{ name: bad, longNames: 'gnu' }]], 'E_UNSAFE_PATH', 'a path component is longer than 255 bytes')
})

it('bytes are counted, not characters', async () => {
  // 86 × '€' (3 bytes each) = 258 bytes.
  await expectFlattenError([[{ name: '€'.repeat(86) }]], 'E_UNSAFE_PATH', `"${'€'.repeat(86)}"`, 'longer than 255 bytes')
})

it('a whole path over 4095 bytes is refused; a symlink target too', async () => {
  const deep = Array.from({ length: 17 }, () => 'p'.repeat(250)).join('/') // 4266 bytes
  await expectFlattenError([[{ name: deep }]], 'E_UNSAFE_PATH', 'path is longer than 4095 bytes', '…(4266 bytes)')
  await expectFlattenError([[{ name: 'l', type: 'symlink', linkname: 'x'.repeat(4096) }]], 'E_INPUT', '"l"', 'symlink target longer than 4095 bytes')
})
