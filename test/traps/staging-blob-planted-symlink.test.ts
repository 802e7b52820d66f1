/**
 * Trap: something placed in staging before a blob is written (a symlink at the blob's name
 * pointing outside). Blobs are created exclusively ('wx': O_CREAT|O_EXCL, which does not follow
 * a symlink at the final component), so the write fails instead of going through the link.
 */
import { readFile, symlink, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { afterEach, expect, it } from 'vitest'
import { applyLayer, createTree } from '../../src/pipeline/flatten/index.js'
import { tarStream } from '../helpers/tar.js'
import { newStaging, removeStagings } from '../unit/flatten/harness.js'

afterEach(removeStagings)

it('a symlink planted at the next blob name is not followed', async () => {
  const staging = await newStaging()
  const outside = path.join(await newStaging(), 'victim')
  await writeFile(outside, 'untouched')
  const tree = await createTree(staging)
  await symlink(outside, path.join(staging, 'blobs', String(tree.nextIno)))
  await expect(applyLayer(tree, tarStream([{ name: 'f', content: 'overwrite!' }]), { index: 0, label: 'layer 1' })).rejects.toMatchObject({
    name: 'BaleError',
    message: expect.stringMatching(/^layer 1: EEXIST: file already exists, open '.*blobs\/\d+'$/),
  })
  expect(await readFile(outside, 'utf8')).toBe('untouched')
})

it('a blobs directory that already exists (perhaps a symlink) is refused by createTree', async () => {
  const staging = await newStaging()
  const elsewhere = await newStaging()
  await symlink(elsewhere, path.join(staging, 'blobs'))
  await expect(createTree(staging)).rejects.toThrow(/EEXIST/)
})
