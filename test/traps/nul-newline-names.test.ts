/**
 * Trap: names with NUL, newline or carriage return. NUL cannot be in a Linux name at all (a tool
 * that truncates at it sees a different name than one that does not); newline and CR end a
 * debugfs command line, so such a name would inject commands into the ext4 stage. Only PAX
 * paths can carry a NUL; ustar fields end at the first one.
 */
import { afterEach, expect, it } from 'vitest'
import { expectFlattenError, flatten, removeStagings, ROOT, view } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it.each([
  ['NUL in a PAX path', { name: 'x', pax: { path: 'etc/passwd\0.txt' } }, '"etc/passwd\\x00.txt"', 'name contains a NUL byte'],
  ['newline', { name: 'evil\nrm -rf /' }, '"evil\\nrm -rf /"', 'name contains a newline'],
  ['carriage return', { name: 'dir/a\rb', type: 'dir' as const }, '"dir/a\\rb"', 'name contains a carriage return'],
  ['newline in a directory component', { name: 'a\n/b' }, '"a\\n/b"', 'name contains a newline'],
  ['newline in a whiteout', { name: '.wh.x\ny' }, '".wh.x\\ny"', 'name contains a newline'],
])('%s is refused by name', async (_what, entry, shown, why) => {
  const msg = await expectFlattenError([[entry]], 'E_UNSAFE_PATH')
  expect(msg).toBe(`layer 1 (sha256:test0): ${shown}: ${why}`)
})

it('a NUL in a ustar name field just ends the name (the header format cannot carry it)', async () => {
  const name = Buffer.concat([Buffer.from('short'), Buffer.from([0]), Buffer.from('hidden')])
  const tree = await flatten([[{ name, content: 'x' }]])
  expect(await view(tree)).toEqual({ '': ROOT, short: 'file 0644 0:0 "x"' })
})
