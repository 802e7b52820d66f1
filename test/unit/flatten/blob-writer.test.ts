import { randomBytes } from 'node:crypto'
import { existsSync, readdirSync, readlinkSync } from 'node:fs'
import { readdir, readFile, symlink, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { cleanupAllSync, registerCleanup } from '../../../src/lib/cleanup.js'
import { applyLayer, createTree } from '../../../src/pipeline/flatten/index.js'
import { blobPath } from '../../../src/pipeline/tree.js'
import { buildTar, chunkedStream, tarStream, type TarEntry } from '../../helpers/tar.js'
import { flatten, newStaging, removeStagings } from './harness.js'

afterEach(removeStagings)

describe('blob writing', () => {
  it('writes small and large (chunked) files byte for byte', async () => {
    const files = Array.from({ length: 60 }, (_, i) => ({ name: `small/${i}`, content: randomBytes(i * 97) }))
    const big = randomBytes(5 * 1024 * 1024 + 3)
    const mid = randomBytes(256 * 1024)
    const tree = await flatten([[...files, { name: 'big', content: big }, { name: 'mid', content: mid }]], { chunkSize: 4096 })
    for (const f of files) expect((await readFile(blobPath(tree, tree.entries.get(f.name) ?? fail()))).equals(f.content)).toBe(true)
    expect((await readFile(blobPath(tree, tree.entries.get('big') ?? fail()))).equals(big)).toBe(true)
    expect((await readFile(blobPath(tree, tree.entries.get('mid') ?? fail()))).equals(mid)).toBe(true)
  })

  it('leaves no write landing after a rejected layer', async () => {
    const staging = await newStaging()
    const tree = await createTree(staging)
    const entries: TarEntry[] = [...Array.from({ length: 200 }, (_, i) => ({ name: `f${i}`, content: 'x'.repeat(1000) })), { name: 'bad\rname' }]
    await expect(applyLayer(tree, tarStream(entries, { chunkSize: 65536 }), { index: 0, label: 'layer 1' })).rejects.toThrow('carriage return')
    // Written before the failure or dropped with it (past 64 blobs they wait for a batch), never after.
    const after = await readdir(path.join(staging, 'blobs'))
    expect(after.length).toBeGreaterThanOrEqual(64)
    expect(after.length).toBeLessThanOrEqual(200)
    await sleep(50)
    expect(await readdir(path.join(staging, 'blobs'))).toEqual(after)
  })

  it('reports a failed write of a large, streamed file too, without following a planted symlink', async () => {
    const staging = await newStaging()
    const victim = path.join(await newStaging(), 'victim')
    await writeFile(victim, 'untouched')
    const tree = await createTree(staging)
    await symlink(victim, path.join(staging, 'blobs', String(tree.nextIno)))
    await expect(applyLayer(tree, tarStream([{ name: 'big', content: Buffer.alloc(1024 * 1024) }]), { index: 0, label: 'layer 1' })).rejects.toThrow(
      /^layer 1: EEXIST/,
    )
    expect(await readFile(victim, 'utf8')).toBe('untouched')
  })
})

describe('blob writing on the worker thread (past the first 64 blobs of a layer)', () => {
  it('writes hundreds of files, some larger than a batch and cut into odd chunks, byte for byte', async () => {
    const files = Array.from({ length: 300 }, (_, i) => ({ name: `f/${i}`, content: randomBytes((i * 7919) % 40_000) }))
    // Larger than one 1 MiB batch, so one file spans several messages to the worker.
    files.splice(150, 0, { name: 'big', content: randomBytes(3 * 1024 * 1024 + 5) })
    files.push({ name: 'empty-last', content: Buffer.alloc(0) })
    const tree = await flatten([files], { chunkSize: 65_537 })
    for (const f of files) expect((await readFile(blobPath(tree, tree.entries.get(f.name) ?? fail()))).equals(f.content)).toBe(true)
  })

  it('a failed create surfaces as the same error, and a planted symlink is not followed', async () => {
    const staging = await newStaging()
    const victim = path.join(await newStaging(), 'victim')
    await writeFile(victim, 'untouched')
    const tree = await createTree(staging)
    await symlink(victim, path.join(staging, 'blobs', String(tree.nextIno + 100)))
    const entries: TarEntry[] = Array.from({ length: 200 }, (_, i) => ({ name: `f${i}`, content: 'y'.repeat(3000) }))
    await expect(applyLayer(tree, tarStream(entries, { chunkSize: 65536 }), { index: 0, label: 'layer 1' })).rejects.toThrow(/^layer 1: EEXIST: file already exists, open '.*\/blobs\/\d+'$/)
    expect(await readFile(victim, 'utf8')).toBe('untouched')
  })

  it('a layer cut off inside a large file on the worker fails without leaking its descriptor', async () => {
    const staging = await newStaging()
    const tree = await createTree(staging)
    const entries: TarEntry[] = [...Array.from({ length: 100 }, (_, i) => ({ name: `f${i}`, content: 'w'.repeat(100) })), { name: 'big', content: Buffer.alloc(8 << 20, 1) }]
    // Cut 5 MiB into the big file: several batches of it have reached the worker, its close never will.
    const whole = buildTar(entries)
    const cut = whole.subarray(0, whole.length - (3 << 20))
    /** Descriptors of this process open on a file under the staging directory. */
    const open = (): string[] =>
      readdirSync('/proc/self/fd')
        .map((fd) => {
          try {
            return readlinkSync(`/proc/self/fd/${fd}`)
          } catch {
            return ''
          }
        })
        .filter((t) => t.startsWith(staging))
    await expect(applyLayer(tree, chunkedStream(cut, { chunkSize: 65536 }), { index: 0, label: 'layer 1' })).rejects.toThrow(/^layer 1: /)
    expect(open()).toEqual([])
    // The worker did get the big file (it is not a case of the file never being opened).
    expect((await readdir(path.join(staging, 'blobs'))).length).toBe(101)
  })

  it('an interrupt stops the worker before the staging directory is removed: nothing is created after', async () => {
    const staging = await newStaging()
    const unregister = registerCleanup(staging)
    const tree = await createTree(staging)
    const entries: TarEntry[] = Array.from({ length: 3000 }, (_, i) => ({ name: `f${i}`, content: 'z'.repeat(5000) }))
    const applying = applyLayer(tree, tarStream(entries, { chunkSize: 1 << 20 }), { index: 0, label: 'layer 1' }).then(
      () => 'finished',
      (e: unknown) => (e instanceof Error ? e.message : String(e)),
    )
    // Once the worker has started, interrupt as the base command does on SIGINT.
    while ((await readdir(path.join(staging, 'blobs')).catch(() => [])).length < 200) await sleep(1)
    cleanupAllSync()
    unregister()
    expect(existsSync(staging)).toBe(false)
    // The main thread goes on here (a real interrupt exits): the layer fails, and nothing reappears.
    expect(await applying).not.toBe('finished')
    await sleep(50)
    expect(existsSync(staging)).toBe(false)
  })
})

function fail(): never {
  throw new Error('missing entry')
}
