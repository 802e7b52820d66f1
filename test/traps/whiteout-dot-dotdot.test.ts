/**
 * Trap: whiteouts naming `.`, `..` or nothing (`.wh..`, `.wh...`, `.wh.`). A naive
 * `rm -rf dir/<name after .wh.>` removes the directory itself, its parent, or the directory
 * again. They are refused.
 */
import { afterEach, expect, it } from 'vitest'
import type { TarEntry } from '../helpers/tar.js'
import { expectFlattenError, removeStagings } from '../unit/flatten/harness.js'

afterEach(removeStagings)

const lower: TarEntry[] = [{ name: 'etc/passwd', content: 'p' }, { name: 'home/u/file', content: 'f' }]

it.each([
  ['etc/.wh..', '"etc/.wh.."'],
  ['etc/.wh...', '"etc/.wh..."'],
  ['etc/.wh.', '"etc/.wh."'],
  ['.wh..', '".wh.."'],
  ['./.wh...', '"./.wh..."'],
  ['home/u/.wh.', '"home/u/.wh."'],
])('%s is refused', async (name, shown) => {
  const msg = await expectFlattenError([lower, [{ name }]], 'E_UNSAFE_PATH')
  expect(msg).toBe(`layer 2 (sha256:test1): ${shown}: whiteout of '.', '..' or an empty name`)
})
