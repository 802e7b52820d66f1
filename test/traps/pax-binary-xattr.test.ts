/**
 * Trap: binary xattr values in PAX records. `security.capability` (e.g. ping's cap_net_raw) is
 * binary with NUL and high bytes; a reader that decodes PAX values as UTF-8 (tar-stream 3.2.2
 * does) replaces the high bytes with U+FFFD and the capability silently stops working.
 */
import { afterEach, expect, it } from 'vitest'
import { flatten, removeStagings } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it('security.capability and arbitrary binary values survive byte for byte', async () => {
  // VFS_CAP_REVISION_2, permitted = effective = cap_net_raw (bit 13), as setcap cap_net_raw+ep writes.
  const cap = Buffer.from('0100000200200000000000000000000000000000', 'hex')
  const every = Buffer.from(Array.from({ length: 256 }, (_, i) => i))
  const tree = await flatten([
    [{ name: 'bin/ping', mode: 0o755, content: 'ELF', pax: { 'SCHILY.xattr.security.capability': cap, 'SCHILY.xattr.user.bytes': every } }],
  ])
  const x = tree.entries.get('bin/ping')?.xattrs
  expect(x?.get('security.capability')?.equals(cap)).toBe(true)
  expect(x?.get('user.bytes')?.equals(every)).toBe(true)
  expect([...(x?.keys() ?? [])]).toEqual(['security.capability', 'user.bytes'])
})
