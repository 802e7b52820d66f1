import { createHash, randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import * as tarStream from 'tar-stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkfsWalkOrder, TAR_BATCH_BYTES, treeTar } from '../../../src/pipeline/ext4/tar-input.js'
import type { FlatTree, Inode } from '../../../src/pipeline/tree.js'
import { TreeBuilder } from './fixture.js'

let work: string
beforeAll(async () => {
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-tar-input-'))
})
afterAll(async () => {
  await fs.rm(work, { recursive: true, force: true })
})

interface Member {
  name: string
  type: string
  linkname?: string
  /** A file's content, as its size and SHA-256 (comparing whole buffers is slow in expect). */
  content?: string
}

const digest = (b: Buffer): string => `${b.length}:${createHash('sha256').update(b).digest('hex')}`

/**
 * Read the stream back with tar-stream: every member, with its content; `bytes` gets the
 * stream's length (tar-stream reads on past a stray zero block, GNU tar would stop there).
 */
async function members(tree: FlatTree, bytes: { n: number } = { n: 0 }): Promise<Member[]> {
  const extract = tarStream.extract()
  const out: Member[] = []
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (h, body, next) => {
      const chunks: Buffer[] = []
      body.on('data', (c: unknown) => chunks.push(c as Buffer))
      body.on('end', () => {
        const m: Member = { name: h.name.replace(/\/$/, ''), type: h.type ?? '' }
        if (h.linkname) m.linkname = h.linkname
        if (h.type === 'file') m.content = digest(Buffer.concat(chunks))
        out.push(m)
        next()
      })
    })
    extract.on('finish', resolve)
    extract.on('error', reject)
  })
  for await (const chunk of treeTar(tree)) {
    bytes.n += (chunk as Buffer).length
    extract.write(chunk as Buffer)
  }
  extract.end(undefined)
  await done
  return out
}

/** What the stream must hold: mke2fs's walk order; a file's further names are hard links to its first. */
async function expected(tree: FlatTree, blobs: Map<Inode, Buffer>): Promise<Member[]> {
  const first = new Map<Inode, string>()
  const out: Member[] = []
  for (const p of mkfsWalkOrder(tree)) {
    if (p === '') continue
    const inode = tree.entries.get(p) as Inode
    const seen = first.get(inode)
    if (seen === undefined) first.set(inode, p)
    if (inode.kind === 'dir') out.push({ name: p, type: 'directory' })
    else if (inode.kind === 'symlink' && seen === undefined) out.push({ name: p, type: 'symlink', linkname: inode.linkTarget as string })
    else if (inode.kind === 'file') out.push(seen === undefined ? { name: p, type: 'file', content: digest(blobs.get(inode) ?? Buffer.alloc(0)) } : { name: p, type: 'link', linkname: seen })
  }
  return out
}

describe('treeTar', () => {
  it('a header that lands on a batch boundary (plain, or PAX with room for one block) is written once, whole', async () => {
    const b = await TreeBuilder.create(path.join(work, 'boundary'))
    const blobs = new Map<Inode, Buffer>()
    const file = async (p: string, content: Buffer): Promise<Inode> => {
      const inode = await b.file(p, content)
      blobs.set(inode, content)
      return inode
    }
    // 'a' fills the first batch exactly (its header and content): 'b', a first name, starts the next.
    await file('a', randomBytes(TAR_BATCH_BYTES - 512))
    const bee = await file('b', Buffer.from('bee'))
    b.link('c', bee)
    // The second batch so far: b (2 blocks) and c (1); 'd' leaves one block of room, less than
    // the PAX header, its record and the header that 'e-…' (not ASCII) needs.
    await file('d', randomBytes(TAR_BATCH_BYTES - 5 * 512))
    const e = await file('e-ünïcødé', Buffer.from('e'))
    b.link('f', e)
    b.symlink('g', 'a')
    const bytes = { n: 0 }
    const got = await members(b.tree, bytes)
    expect(got).toEqual(await expected(b.tree, blobs))
    expect(got.map((m) => m.name)).toEqual(['a', 'b', 'c', 'd', 'e-ünïcødé', 'f', 'g'])
    // Blocks, and nothing between them: a (1 + its content), b (2), c (1), d (1 + content),
    // e (PAX header and record, header, content: 4), f (its target is not ASCII: PAX, 3), g (1),
    // the end (2).
    expect(bytes.n).toBe(TAR_BATCH_BYTES + 3 * 512 + (TAR_BATCH_BYTES - 4 * 512) + 4 * 512 + 3 * 512 + 512 + 2 * 512)
  })

  it('the end-of-archive blocks that do not fit a batch start the next one, and nothing is left between', async () => {
    const b = await TreeBuilder.create(path.join(work, 'end'))
    const content = randomBytes(TAR_BATCH_BYTES - 2 * 512 - 100)
    const inode = await b.file('a', content)
    const bytes = { n: 0 }
    expect(await members(b.tree, bytes)).toEqual(await expected(b.tree, new Map([[inode, content]])))
    // a's header and padded content leave one block of the first batch; the two end blocks follow.
    expect(bytes.n).toBe(TAR_BATCH_BYTES - 512 + 2 * 512)
  })

  it('many files of all sizes, hard links, long and non-ASCII names, from a spool: every member as the tree has it', async () => {
    const b = await TreeBuilder.create(path.join(work, 'many'))
    const blobs = new Map<Inode, Buffer>()
    b.dir('d')
    b.dir(`d/${'long-directory-name-'.repeat(6)}`)
    let seed = 1
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      return seed % n
    }
    const files: Inode[] = []
    for (let i = 0; i < 120; i++) {
      const size = [0, 1, 511, 512, 513, 4096, 70_000, 300_000][rand(8)] as number
      const dir = i % 3 === 0 ? `d/${'long-directory-name-'.repeat(6)}` : 'd'
      const content = randomBytes(size)
      const inode = await b.file(`${dir}/${i % 5 === 0 ? 'ü-' : ''}f${i}`, content)
      blobs.set(inode, content)
      files.push(inode)
      if (rand(4) === 0) b.link(`d/link-${i}`, files[rand(files.length)] as Inode)
    }
    b.symlink('d/long-target', `../${'x/'.repeat(80)}end`)
    await b.pack()
    const got = await members(b.tree)
    expect(got).toEqual(await expected(b.tree, blobs))
    expect(got.filter((m) => m.type === 'link').length).toBeGreaterThan(10)
  })

  it('a spool that ends inside a file fails naming the file', async () => {
    const b = await TreeBuilder.create(path.join(work, 'short'))
    const f = await b.file('f', 'twelve bytes')
    await b.pack()
    f.size += 100
    await expect(members(b.tree)).rejects.toThrow('/f: its content ends after 12 of 112 bytes')
  })
})
