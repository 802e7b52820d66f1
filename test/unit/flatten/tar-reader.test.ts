import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, symlink, link, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Readable } from 'node:stream'
import * as tarStreamLib from 'tar-stream'
import { afterAll, describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { parsePaxRecords, readTar, type TarHeader } from '../../../src/pipeline/flatten/tar-reader.js'
import { buildTar, chunkedStream, paxRecord, type TarEntry } from '../../helpers/tar.js'

interface Member {
  h: TarHeader
  body: Buffer
}

async function read(src: Buffer | Readable, chunkSize = 7): Promise<Member[]> {
  const stream = Buffer.isBuffer(src) ? chunkedStream(src, { chunkSize }) : src
  const out: Member[] = []
  await readTar(stream, 'layer 1', async (h, body) => {
    const parts: Buffer[] = []
    for await (const b of body) parts.push(b)
    out.push({ h, body: Buffer.concat(parts) })
  })
  return out
}

async function readError(src: Buffer | Readable): Promise<BaleError> {
  try {
    await read(src)
  } catch (e) {
    if (e instanceof BaleError) return e
    throw e
  }
  throw new Error('archive was accepted')
}

const names = (ms: Member[]): string[] => ms.map((m) => m.h.name.toString('latin1'))

describe('readTar: framing', () => {
  it('reads every member type with its fields and content, whatever the chunking', async () => {
    const entries: TarEntry[] = [
      { name: 'd', type: 'dir', mode: 0o40755, uid: 1, gid: 2, mtime: 3 },
      { name: 'd/f', content: 'hello world', mode: 0o100644 },
      { name: 'd/l', type: 'link', linkname: 'd/f' },
      { name: 's', type: 'symlink', linkname: '/abs/target' },
      { name: 'c', type: 'char', devmajor: 1, devminor: 3 },
      { name: 'b', type: 'block', devmajor: 259, devminor: 65536 },
      { name: 'p', type: 'fifo' },
    ]
    for (const chunk of [1, 7, 512, 100_000]) {
      const ms = await read(buildTar(entries), chunk)
      expect(names(ms)).toEqual(['d', 'd/f', 'd/l', 's', 'c', 'b', 'p'])
      expect(ms.map((m) => m.h.typeflag)).toEqual(['5', '0', '1', '2', '3', '4', '6'])
      expect(ms[0]?.h).toMatchObject({ mode: 0o40755, uid: 1, gid: 2, mtime: 3, size: 0 })
      expect(ms[1]?.body.toString()).toBe('hello world')
      expect(ms[2]?.h.linkname.toString()).toBe('d/f')
      expect(ms[3]?.h.linkname.toString()).toBe('/abs/target')
      expect(ms[5]?.h).toMatchObject({ devmajor: 259, devminor: 65536 })
    }
  })

  it('streams large contents intact', async () => {
    const big = randomBytes(3 * 1024 * 1024 + 17)
    const ms = await read(buildTar([{ name: 'big', content: big }, { name: 'after', content: 'x' }]), 65536)
    expect(ms[0]?.body.equals(big)).toBe(true)
    expect(ms[1]?.body.toString()).toBe('x')
  })

  it('skips content the handler does not read', async () => {
    const tar = buildTar([{ name: 'a', content: 'x'.repeat(1000) }, { name: 'b', content: 'y' }])
    const seen: string[] = []
    await readTar(chunkedStream(tar), 'l', async (h) => {
      seen.push(h.name.toString())
    })
    expect(seen).toEqual(['a', 'b'])
  })

  it('joins the ustar prefix field and the name field', async () => {
    const ms = await read(buildTar([{ name: 'file.txt', prefix: 'some/deep/dir', content: 'x' }]))
    expect(names(ms)).toEqual(['some/deep/dir/file.txt'])
  })

  it('reads GNU long names and long link names', async () => {
    const long = `${'n'.repeat(150)}/${'m'.repeat(150)}`
    const ms = await read(buildTar([{ name: long, type: 'symlink', linkname: `${long}-target`, longNames: 'gnu' }]))
    expect(names(ms)).toEqual([long])
    expect(ms[0]?.h.linkname.toString()).toBe(`${long}-target`)
  })

  it('treats header-only members as having no data whatever their size field says (as Go does)', async () => {
    // A symlink header claiming 512 bytes is followed directly by the next header.
    const tar = buildTar([{ name: 's', type: 'symlink', linkname: 't', size: 512 }, { name: 'next', content: 'n' }])
    const ms = await read(tar)
    expect(names(ms)).toEqual(['s', 'next'])
    expect(ms[0]?.h.size).toBe(0)
  })

  it('decodes base-256 numbers and PAX numeric records', async () => {
    const ms = await read(
      buildTar([
        { name: 'big-ids', uid: 2 ** 32 - 1, gid: 0o7777777 + 5, mtime: 2 ** 34 },
        { name: 'pax', pax: { uid: '4000000000', gid: '7', mtime: '1700000000.987654321' } },
        { name: 'neg', pax: { mtime: '-10.5' } },
        { name: 'unset', uid: 9, pax: { uid: '' } },
      ]),
    )
    expect(ms[0]?.h).toMatchObject({ uid: 2 ** 32 - 1, gid: 0o7777777 + 5, mtime: 2 ** 34 })
    expect(ms[1]?.h).toMatchObject({ uid: 4_000_000_000, gid: 7, mtime: 1_700_000_000 })
    expect(ms[2]?.h.mtime).toBe(-11)
    expect(ms[3]?.h.uid).toBe(9)
  })

  it('accepts a lone zero block at the end, and ignores what follows two zero blocks while still reading it', async () => {
    const one = buildTar([{ name: 'a' }], { endMarker: false })
    expect(names(await read(Buffer.concat([one, Buffer.alloc(512)])))).toEqual(['a'])
    const trailing = Buffer.concat([buildTar([{ name: 'a' }]), Buffer.from('garbage after the end')])
    expect(names(await read(trailing))).toEqual(['a'])
    // The source's own error after the end marker still surfaces: the rest is drained, not dropped.
    const late = chunkedStream(Buffer.concat([buildTar([{ name: 'a' }]), Buffer.alloc(8192)]), { error: new Error('digest mismatch') })
    await expect(read(late)).rejects.toThrow('digest mismatch')
  })

  it.each([
    ['empty input', Buffer.alloc(0), 'empty input, not a tar archive'],
    ['no end marker', buildTar([{ name: 'a', content: 'x' }], { endMarker: false }), 'no end-of-archive marker'],
    ['cut inside a header', buildTar([{ name: 'a' }]).subarray(0, 300), 'truncated tar archive at byte'],
    ['cut inside content', buildTar([{ name: 'a', content: 'x'.repeat(2000) }]).subarray(0, 1024), 'truncated tar archive at byte'],
    ['cut inside padding', buildTar([{ name: 'a', content: 'x' }]).subarray(0, 600), 'truncated tar archive at byte'],
    ['not a tar', Buffer.alloc(1024, 'not a tar archive '), 'invalid tar header at byte 0 (checksum mismatch)'],
    ['header after one zero block', Buffer.concat([Buffer.alloc(512), buildTar([{ name: 'a' }])]), 'after the end-of-archive marker'],
    ['PAX header without a member', Buffer.concat([buildTar([{ name: 'a', pax: { foo: 'bar' } }]).subarray(0, 1024), Buffer.alloc(1024)]), 'extended header without a member'],
  ])('refuses %s with E_INPUT', async (_what, tar, msg) => {
    const e = await readError(tar)
    expect(e.code).toBe('E_INPUT')
    expect(e.message).toContain('layer 1: ')
    expect(e.message).toContain(msg)
  })

  it('refuses a corrupted checksum and invalid numeric fields', async () => {
    const tar = buildTar([{ name: 'a', content: 'x' }])
    const bad = Buffer.from(tar)
    bad[0] = 0x62 // 'b': the checksum no longer matches
    expect((await readError(bad)).message).toContain('checksum mismatch')
    const badSize = buildTar([{ name: 'a', pax: { size: '12abc' } }])
    expect((await readError(badSize)).message).toBe('layer 1: "a": invalid size field in the tar header at byte 1024')
  })

  it('accepts checksums computed over signed bytes (old tars)', async () => {
    const tar = buildTar([{ name: Buffer.from([0x61, 0xe9]), content: 'x' }])
    let signed = 8 * 0x20
    for (let i = 0; i < 512; i++) if (i < 148 || i >= 156) signed += (tar[i] as number) > 127 ? (tar[i] as number) - 256 : (tar[i] as number)
    tar.write(`${signed.toString(8).padStart(6, '0')}\0 `, 148, 'ascii')
    expect(names(await read(tar))).toEqual(['a\xe9'])
  })

  it('caps extended headers at 1 MiB', async () => {
    const tar = buildTar([{ name: 'a', pax: { comment: 'x'.repeat(1024 * 1024) } }])
    expect((await readError(tar)).message).toMatch(/PAX header at byte 0 is \d+ bytes \(limit 1048576\)/)
  })
})

describe('readTar: PAX records kept as bytes', () => {
  it('keeps binary values (NUL, 0xff, newline, "=") and non-UTF-8 paths exactly', async () => {
    const cap = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0xff, 0x0a, 0x3d, 0x00])
    const rawName = Buffer.from([0x64, 0x69, 0x72, 0x2f, 0xff, 0xfe])
    const ms = await read(buildTar([{ name: 'short', pax: { path: rawName, 'SCHILY.xattr.security.capability': cap } }]))
    expect(ms[0]?.h.name.equals(rawName)).toBe(true)
    expect(ms[0]?.h.pax.get('SCHILY.xattr.security.capability')?.equals(cap)).toBe(true)
  })

  it('ignores PAX global headers, even one that sets a path', async () => {
    const ms = await read(
      buildTar([
        { name: '', type: 'pax-global', pax: { path: 'hijacked', comment: 'commit 123' } },
        { name: 'a', pax: { uid: '5' } },
        { name: 'b' },
      ]),
    )
    expect(names(ms)).toEqual(['a', 'b'])
    expect([...(ms[0]?.h.pax.keys() ?? [])]).toEqual(['uid'])
  })

  it('merges consecutive PAX headers, later records winning, and applies them to the next member only', async () => {
    const x1 = buildTar([{ name: 'ignored', pax: { path: 'first', uid: '1' } }], { endMarker: false }).subarray(0, 1024)
    const x2 = buildTar([{ name: 'ignored', pax: { path: 'second' } }], { endMarker: false }).subarray(0, 1024)
    const rest = buildTar([{ name: 'hdr' }, { name: 'plain' }])
    const ms = await read(Buffer.concat([x1, x2, rest]))
    expect(names(ms)).toEqual(['second', 'plain'])
    expect(ms[0]?.h.uid).toBe(1)
    expect(ms[1]?.h.pax.size).toBe(0)
  })

  it('parses records and refuses malformed ones', () => {
    const good = Buffer.concat([paxRecord('path', 'a b=c'), paxRecord('k', Buffer.from([0, 10, 255]))])
    const m = parsePaxRecords(good)
    expect(m).toBeInstanceOf(Map)
    if (typeof m === 'string') throw new Error(m)
    expect(m.get('path')?.toString()).toBe('a b=c')
    expect(m.get('k')).toEqual(Buffer.from([0, 10, 255]))
    expect(parsePaxRecords(Buffer.from('9 path=a'))).toBe('PAX record length is out of range')
    expect(parsePaxRecords(Buffer.from('8 path=a\n'))).toBe('PAX record does not end with a newline')
    expect(parsePaxRecords(Buffer.from('x path=a\n'))).toMatch(/is not a number/)
    expect(parsePaxRecords(Buffer.from('8 patha\n'))).toBe('PAX record without a key')
    expect(parsePaxRecords(Buffer.from('nolength'))).toBe('PAX record without a length')
  })

  it('refuses an archive with a malformed PAX record', async () => {
    const tar = buildTar([{ name: 'a', pax: { k: 'v' } }])
    tar.write('9', 512) // "8 k=v\n" becomes "9 k=v\n": longer than the header's data
    const e = await readError(Buffer.from(tar))
    expect(e.message).toContain('PAX record length is out of range (PAX header at byte 0)')
  })
})

describe('readTar: archives from other writers', () => {
  let dir: string | undefined
  afterAll(async () => {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  async function makeTree(): Promise<string> {
    dir ??= await mkdtemp(path.join(tmpdir(), 'bale-tar-writers-'))
    const root = await mkdtemp(path.join(dir, 'src-'))
    const deep = path.join(root, 'a'.repeat(80), 'b'.repeat(80), 'c'.repeat(80))
    await mkdir(deep, { recursive: true })
    await writeFile(path.join(deep, `${'f'.repeat(120)}.txt`), 'deep content')
    await writeFile(path.join(root, 'small'), 'small')
    await link(path.join(root, 'small'), path.join(root, 'hard'))
    await symlink('small', path.join(root, 'sym'))
    await symlink(path.join('x'.repeat(150), 'y'), path.join(root, 'longsym'))
    return root
  }

  it.each(['gnu', 'pax', 'ustar', 'v7'])('reads GNU tar --format=%s like GNU tar lists it', async (format) => {
    const root = await makeTree()
    const out = path.join(root, '..', `${path.basename(root)}.${format}.tar`)
    const env = { ...process.env, LC_ALL: 'C' }
    const create = ['--format', format, '--sort=name', '-C', root, '-cf', out, '.']
    try {
      execFileSync('tar', create, { env, stdio: 'pipe' })
    } catch (e) {
      // ustar and v7 cannot hold names this long: GNU tar refuses them; that is not our concern.
      if (format === 'ustar' || format === 'v7') {
        execFileSync('tar', ['--format', format, '--sort=name', '-C', root, '-cf', out, './small', './hard', './sym'], { env })
      } else throw e
    }
    const expected = execFileSync('tar', ['-tf', out], { env }).toString().split('\n').filter(Boolean)
    const ms = await read(await readFile(out), 4096)
    expect(names(ms)).toEqual(expected)
    // One of ./hard and ./small is archived as the file, the other as a hard link to it.
    const pair = ms.filter((m) => ['./hard', './small'].includes(m.h.name.toString()))
    expect(pair.map((m) => m.h.typeflag).sort()).toEqual(['0', '1'])
    expect(pair.find((m) => m.h.typeflag === '0')?.body.toString()).toBe('small')
    const linkMember = pair.find((m) => m.h.typeflag === '1')
    expect(linkMember?.h.linkname.toString()).toBe(pair.find((m) => m.h.typeflag === '0')?.h.name.toString())
    const deep = ms.find((m) => m.h.name.toString().endsWith('.txt'))
    if (deep !== undefined) expect(deep.body.toString()).toBe('deep content')
  })

  it('reads what tar-stream packs (ustar, PAX for long names)', async () => {
    const pack = tarStreamLib.pack()
    const long = `${'z'.repeat(90)}/${'w'.repeat(120)}`
    pack.entry({ name: 'a.txt', mode: 0o600, uid: 7, gid: 8, mtime: new Date(5000) }, 'AAA')
    pack.entry({ name: long }, 'long')
    pack.entry({ name: 'ln', type: 'symlink', linkname: 'a.txt' })
    pack.entry({ name: 'dev', type: 'character-device', devmajor: 4, devminor: 64 })
    pack.finalize()
    const chunks: Buffer[] = []
    for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c)
    const ms = await read(Buffer.concat(chunks))
    expect(names(ms)).toEqual(['a.txt', long, 'ln', 'dev'])
    expect(ms[0]?.h).toMatchObject({ mode: 0o600, uid: 7, gid: 8, mtime: 5 })
    expect(ms[0]?.body.toString()).toBe('AAA')
    expect(ms[1]?.body.toString()).toBe('long')
    expect(ms[3]?.h).toMatchObject({ typeflag: '3', devmajor: 4, devminor: 64 })
  })
})
