/**
 * Trap: a very deep directory chain (2000 levels, the most a 4095-byte path allows with
 * one-byte names). Recursive walks overflow the stack; removing it with a whiteout, replacing
 * it, and linking into it must all work iteratively.
 */
import { afterEach, expect, it } from 'vitest'
import { flatten, listStaging, removeStagings, ROOT, view } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it('a 2000-level chain is built implicitly and removed by one whiteout', async () => {
  const deep = Array.from({ length: 2000 }, () => 'a').join('/')
  const tree = await flatten([[{ name: `${deep}/leaf`, content: 'bottom' }, { name: 'hard', type: 'link', linkname: `${deep}/leaf` }], [{ name: '.wh.a' }]])
  expect(await view(tree)).toEqual({ '': ROOT, hard: 'file 0644 0:0 "bottom"' })
  expect(await listStaging(tree.staging)).toEqual(['blobs dir 0700', `blobs/${tree.entries.get('hard')?.ino ?? '?'} file 0600`])
})
