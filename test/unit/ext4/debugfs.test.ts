// The debugfs script and the reading of debugfs's output, without running debugfs (the
// integration tests run the same scripts against the real one).
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import {
  MAX_DEBUGFS_LINE_BYTES,
  checkDebugfsOutput,
  debugfsLines,
  debugfsQuote,
  debugfsScript,
  type ScriptLine,
} from '../../../src/pipeline/ext4/debugfs.js'
import { TreeBuilder } from './fixture.js'

const XD = '/x/xattrs'
const T = 1_700_000_000
const staging = path.join(os.tmpdir(), 'bale-ext4-unit-never-written')

function lines(s: string): string[] {
  return s.split('\n').filter((l) => l !== '')
}

async function* feed(...ls: string[]): AsyncGenerator<string> {
  for (const l of ls) yield l
}

function echo(script: Iterable<ScriptLine>): string[] {
  return [...script].map((l) => `debugfs: ${l.cmd}`)
}

async function rejection(p: Promise<unknown>): Promise<BaleError> {
  const e: unknown = await p.then(() => undefined, (err: unknown) => err)
  expect(e).toBeInstanceOf(BaleError)
  return e as BaleError
}

function throwsBale(f: () => unknown): BaleError {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(BaleError)
    return e as BaleError
  }
  throw new Error('expected a BaleError')
}

/** A tree built in memory only (no blobs: the script never reads them). */
function builder(): TreeBuilder {
  const b = new TreeBuilder(staging)
  b.dir('', { mode: 0o755 })
  return b
}

describe('debugfsQuote', () => {
  it('quotes every token, so spaces and tabs stay inside one token', () => {
    expect(debugfsQuote('/usr/bin')).toBe('"/usr/bin"')
    expect(debugfsQuote('/a b')).toBe('"/a b"')
    expect(debugfsQuote('/a\tb')).toBe('"/a\tb"')
  })

  it('doubles inner quotes', () => {
    expect(debugfsQuote('/quote"inside')).toBe('"/quote""inside"')
    expect(debugfsQuote('"')).toBe('""""')
    expect(debugfsQuote('/x"')).toBe('"/x"""')
  })

  it('leaves <2> as a quoted path, never a bare inode reference', () => {
    expect(debugfsQuote('/<2>')).toBe('"/<2>"')
  })

  it('refuses NUL, newline and carriage return (a line ends at the first \\n or \\r)', () => {
    for (const bad of ['/a\nb', '/a\rb', '/a\0b']) {
      const e = throwsBale(() => debugfsQuote(bad))
      expect(e.code).toBe('E_UNSAFE_PATH')
      expect(e.message).not.toMatch(/[\n\r]/)
    }
  })
})

describe('debugfsScript by path', () => {
  it('sets uid, gid, full mode with type bits, mtime/atime as @EPOCH and ctime = timestamp for every inode', () => {
    const b = builder()
    b.dir('usr', { mtime: 10 })
    b.dir('usr/bin')
    b.add('usr/bin/su', b.inode('file', { mode: 0o4755, uid: 0, gid: 0, mtime: 1_234_567_890 }, { size: 0 }))
    b.add('usr/bin/wall', b.inode('file', { mode: 0o2755, gid: 5 }, { size: 0 }))
    b.dir('tmp', { mode: 0o1777 })
    b.symlink('lib', 'usr/lib', { uid: 3, gid: 4 })
    const s = lines(debugfsScript(b.tree, { timestamp: T, xattrDir: XD }))
    expect(s).toContain('sif "/usr/bin/su" mode 0104755')
    expect(s).toContain('sif "/usr/bin/su" mtime @1234567890')
    expect(s).toContain('sif "/usr/bin/su" atime @1234567890')
    expect(s).toContain(`sif "/usr/bin/su" ctime @${T}`)
    expect(s).toContain('sif "/usr/bin/wall" mode 0102755')
    expect(s).toContain('sif "/usr/bin/wall" gid 5')
    expect(s).toContain('sif "/tmp" mode 041777')
    expect(s).toContain('sif "/" mode 040755')
    expect(s).toContain('sif "/lib" mode 0120777')
    expect(s).toContain('sif "/lib" uid 3')
    expect(s).toContain('sif "/usr" mtime @10')
    for (const p of ['/', '/usr', '/usr/bin', '/usr/bin/su', '/usr/bin/wall', '/tmp', '/lib']) {
      for (const f of ['uid', 'gid', 'mode', 'mtime', 'atime', 'ctime']) {
        expect(s.filter((l) => l.startsWith(`sif ${debugfsQuote(p)} ${f} `))).toHaveLength(1)
      }
    }
  })

  it('debugfs-mknod-slash-name: cd to the parent, then mknod the bare name; type bits in the mode', () => {
    const b = builder()
    b.dir('dev')
    b.device('dev/null', 'char', 1, 3, { mode: 0o666 })
    b.device('dev/sda', 'block', 8, 0, { mode: 0o660, gid: 6 })
    b.fifo('dev/initctl', { mode: 0o600 })
    b.fifo('top-fifo')
    const s = lines(debugfsScript(b.tree, { timestamp: T, xattrDir: XD }))
    const cd = s.indexOf('cd "/dev"')
    expect(cd).toBeGreaterThanOrEqual(0)
    expect(s.indexOf('mknod "null" c 1 3')).toBeGreaterThan(cd)
    expect(s).toContain('mknod "sda" b 8 0')
    expect(s).toContain('mknod "initctl" p')
    expect(s).toContain('sif "/dev/null" mode 020666')
    expect(s).toContain('sif "/dev/sda" mode 060660')
    expect(s).toContain('sif "/dev/initctl" mode 010600')
    // Back to the root for a top-level fifo; one cd per change of directory only.
    expect(s.indexOf('cd "/"')).toBeGreaterThan(cd)
    expect(s.indexOf('mknod "top-fifo" p')).toBeGreaterThan(s.indexOf('cd "/"'))
    expect(s.filter((l) => l.startsWith('cd '))).toHaveLength(2)
    expect(s.some((l) => /^mknod "[^"]*\//.test(l))).toBe(false)
  })

  it('debugfs-inode-number-name: a file named <2> is addressed by its absolute path', () => {
    const b = builder()
    b.add('<2>', b.inode('file', {}, { size: 0 }))
    const s = lines(debugfsScript(b.tree, { timestamp: T, xattrDir: XD }))
    expect(s).toContain('sif "/<2>" mode 0100644')
    expect(s.some((l) => / <\d+> /.test(l))).toBe(false)
  })

  it('quotes names with spaces, tabs, quotes and unicode in every command', () => {
    const b = builder()
    b.dir('names')
    b.add('names/with space', b.inode('file', {}, { size: 0 }))
    b.add('names/q"uote', b.inode('file', {}, { size: 0 }))
    b.add('names/tab\there', b.inode('file', {}, { size: 0 }))
    b.add('names/ünï 文件', b.inode('file', {}, { size: 0 }))
    b.fifo('names/fifo "x"')
    const s = lines(debugfsScript(b.tree, { timestamp: T, xattrDir: XD }))
    expect(s).toContain('sif "/names/with space" uid 0')
    expect(s).toContain('sif "/names/q""uote" uid 0')
    expect(s).toContain('sif "/names/tab\there" uid 0')
    expect(s).toContain('sif "/names/ünï 文件" uid 0')
    expect(s).toContain('mknod "fifo ""x""" p')
  })

  it('debugfs-mtime-epoch: times are @EPOCH, clamped to what debugfs parses (0 … 2446), timestamp 0 becomes 1', () => {
    const b = builder()
    b.add('old', b.inode('file', { mtime: -5 }, { size: 0 }))
    b.add('far', b.inode('file', { mtime: 2 ** 40 }, { size: 0 }))
    b.add('y2100', b.inode('file', { mtime: 4_102_444_800 }, { size: 0 }))
    const s = lines(debugfsScript(b.tree, { timestamp: 0, xattrDir: XD }))
    expect(s).toContain('sif "/old" mtime @0')
    expect(s).toContain(`sif "/far" mtime @${2 ** 34 - 2 ** 31 - 1}`)
    expect(s).toContain('sif "/y2100" mtime @4102444800')
    expect(s).toContain('sif "/old" ctime @1')
    expect(s.every((l) => !/ (m|a|c)time [^@]/.test(l))).toBe(true)
  })

  it('sets each xattr from its own value file, in name order, quoted', () => {
    const b = builder()
    const f = b.add('ping', b.inode('file', { xattrs: { 'user.z': 'last', 'security.capability': Buffer.from([1, 0, 0, 2]) } }, { size: 0 }))
    const s = lines(debugfsScript(b.tree, { timestamp: T, xattrDir: '/x/with space' }))
    const ea = s.filter((l) => l.startsWith('ea_set'))
    expect(ea).toEqual([
      `ea_set -f "/x/with space/${f.ino}.0" "/ping" "security.capability"`,
      `ea_set -f "/x/with space/${f.ino}.1" "/ping" "user.z"`,
    ])
  })

  it('hard links: a file is set once (mke2fs made its names), symlinks and devices get ln and a link count', () => {
    const b = builder()
    b.dir('data')
    const f = b.add('data/a', b.inode('file', { mode: 0o640 }, { size: 0 }))
    b.link('data/b', f)
    b.link('c', f)
    const sl = b.symlink('data/s1', 'a')
    b.link('data/s2', sl)
    b.dir('dev')
    const nul = b.device('dev/null', 'char', 1, 3)
    b.link('dev/null2', nul)
    const s = lines(debugfsScript(b.tree, { timestamp: T, xattrDir: XD }))
    // Sorted: "c" < "data/a" < "data/b": the first name carries the attributes.
    expect(s.filter((l) => l.endsWith(' mode 0100640'))).toEqual(['sif "/c" mode 0100640'])
    expect(s.some((l) => l.startsWith('ln ') && (l.includes('"a"') || l.includes('"b"') || l.includes('"c"')))).toBe(false)
    expect(s).toContain('ln "/data/s1" "s2"')
    expect(s).toContain('sif "/data/s1" links_count 2')
    expect(s).toContain('ln "/dev/null" "null2"')
    expect(s).toContain('sif "/dev/null" links_count 2')
    expect(s.filter((l) => l.includes('links_count'))).toHaveLength(2)
  })

  it('debugfs-line-limit: a line of exactly 8190 bytes passes, 8191 is refused naming the path, bytes not characters', () => {
    const dirs = Array.from({ length: 40 }, (_, i) => `${String(i).padStart(2, '0')}${'d'.repeat(198)}`)
    const build = (last: string): TreeBuilder => {
      const b = builder()
      let p = ''
      for (const d of dirs) {
        p = p ? `${p}/${d}` : d
        b.dir(p)
      }
      b.add(`${p}/${last}`, b.inode('file', {}, { size: 0 }))
      return b
    }
    // The longest line of a file is `sif "/PATH" mtime @1600000000`: 6 + |PATH| + 19 bytes.
    const prefix = dirs.join('/').length + 1
    const fit = 'f'.repeat(MAX_DEBUGFS_LINE_BYTES - 25 - prefix)
    const ok = lines(debugfsScript(build(fit).tree, { timestamp: T, xattrDir: XD }))
    expect(Math.max(...ok.map((l) => Buffer.byteLength(l)))).toBe(MAX_DEBUGFS_LINE_BYTES)
    const e = throwsBale(() => debugfsScript(build(`${fit}f`).tree, { timestamp: T, xattrDir: XD }))
    expect(e.code).toBe('E_UNSAFE_PATH')
    expect(e.message).toMatch(/path too long for a debugfs command \(8191 bytes, limit 8190\)/)
    expect(e.subject).toBe(`/${dirs.join('/')}/${fit}f`)
    // 'é' is two bytes: fewer characters than the limit still overflow it.
    const multi = `${'f'.repeat(fit.length - 1)}é`
    expect(`${dirs.join('/')}/${multi}`.length).toBe(prefix + fit.length)
    expect(throwsBale(() => debugfsScript(build(multi).tree, { timestamp: T, xattrDir: XD })).code).toBe('E_UNSAFE_PATH')
  })
})

describe('debugfsScript by inode number', () => {
  it('addresses what mke2fs made as <N> and what debugfs makes by path; cd by number', () => {
    const b = builder()
    b.dir('dev')
    b.device('dev/null', 'char', 1, 3)
    b.add('<2>', b.inode('file', {}, { size: 0 }))
    const sl = b.symlink('s1', 't')
    b.link('s2', sl)
    const inodes = new Map([['', 2], ['dev', 12], ['<2>', 13], ['s1', 14]])
    const s = lines(debugfsScript(b.tree, { timestamp: T, xattrDir: XD, inodes }))
    expect(s).toContain('sif <2> mode 040755')
    expect(s).toContain('sif <13> mode 0100644')
    expect(s).toContain('cd <12>')
    expect(s).toContain('mknod "null" c 1 3')
    expect(s).toContain('sif "/dev/null" mode 020644')
    expect(s).toContain('cd <2>')
    expect(s).toContain('ln <14> "s2"')
    expect(s).toContain('sif <14> links_count 2')
    // The file named <2> is never confused with the root: its own lines use <13>.
    expect(s.filter((l) => l.startsWith('sif <2> mode'))).toEqual(['sif <2> mode 040755'])
  })
})

describe('debugfsScript with patched inodes (image.ts wrote their owner, mode and times)', () => {
  it('is empty for a tree of files, directories, hard links and single symlinks: debugfs need not run', () => {
    const b = builder()
    b.dir('usr', { mode: 0o1777, uid: 70_000 })
    const f = b.add('usr/f', b.inode('file', { mode: 0o4755 }, { size: 0 }))
    b.link('usr/g', f)
    b.symlink('lib', 'usr/lib')
    expect(debugfsScript(b.tree, { timestamp: T, xattrDir: XD, patched: true })).toBe('')
    expect(debugfsScript(b.tree, { timestamp: T, xattrDir: XD, patched: true, inodes: new Map([['', 2], ['usr', 12], ['usr/f', 13], ['lib', 14]]) })).toBe('')
  })

  it('keeps everything debugfs alone does: devices, fifos, extra symlink names, link counts, xattrs', () => {
    const b = builder()
    b.dir('dev')
    b.device('dev/null', 'char', 1, 3, { mode: 0o666 })
    b.fifo('dev/initctl', { mode: 0o600 })
    const sl = b.symlink('s1', 't', { uid: 5 })
    b.link('s2', sl)
    const ping = b.add('ping', b.inode('file', { mode: 0o755, xattrs: { 'security.capability': Buffer.from([1]) } }, { size: 0 }))
    const inodes = new Map([['', 2], ['dev', 12], ['ping', 13], ['s1', 14]])
    const s = lines(debugfsScript(b.tree, { timestamp: T, xattrDir: XD, inodes, patched: true }))
    expect(s).toEqual([
      'cd <12>',
      'mknod "initctl" p',
      'sif "/dev/initctl" uid 0',
      'sif "/dev/initctl" gid 0',
      'sif "/dev/initctl" mode 010600',
      'sif "/dev/initctl" mtime @1600000000',
      'sif "/dev/initctl" atime @1600000000',
      `sif "/dev/initctl" ctime @${T}`,
      'mknod "null" c 1 3',
      'sif "/dev/null" uid 0',
      'sif "/dev/null" gid 0',
      'sif "/dev/null" mode 020666',
      'sif "/dev/null" mtime @1600000000',
      'sif "/dev/null" atime @1600000000',
      `sif "/dev/null" ctime @${T}`,
      `ea_set -f "${XD}/${ping.ino}.0" <13> "security.capability"`,
      'cd <2>',
      'ln <14> "s2"',
      'sif <14> links_count 2',
    ])
    // The symlink's own attributes were patched: no sif for it but its link count.
    expect(s.filter((l) => l.startsWith('sif <14>'))).toEqual(['sif <14> links_count 2'])
  })
})

describe('checkDebugfsOutput: debugfs-exits-zero-on-failure', () => {
  const b = builder()
  b.dir('dev')
  b.device('dev/null', 'char', 1, 3)
  b.add('f', b.inode('file', {}, { size: 0 }))
  const script = (): Generator<ScriptLine> => debugfsLines(b.tree, { timestamp: T, xattrDir: XD })
  const echoes = echo(script())

  it('accepts the echoes, the banner, blank lines and Allocated inode after mknod', async () => {
    const mk = echoes.findIndex((l) => l.startsWith('debugfs: mknod'))
    const out = ['debugfs 1.47.0 (5-Feb-2023)', ...echoes.slice(0, mk + 1), 'Allocated inode: 14', '', ...echoes.slice(mk + 1)]
    await expect(checkDebugfsOutput(feed(...out), script(), 0)).resolves.toBeUndefined()
  })

  it('a complaint after a command fails that command, naming its path', async () => {
    const at = echoes.indexOf('debugfs: sif "/f" gid 0')
    const out = [...echoes.slice(0, at + 1), '/f: File not found by ext2_lookup ', ...echoes.slice(at + 1)]
    const e = await rejection(checkDebugfsOutput(feed(...out), script(), 0))
    expect(e.code).toBe('E_TOOL')
    expect(e.message).toBe('debugfs failed on /f: /f: File not found by ext2_lookup')
    expect(e.subject).toBe('/f')
  })

  it('Allocated inode after anything but mknod is a complaint', async () => {
    const out = [echoes[0] ?? '', 'Allocated inode: 14', ...echoes.slice(1)]
    await expect(checkDebugfsOutput(feed(...out), script(), 0)).rejects.toThrow(/debugfs failed on \/: Allocated inode/)
  })

  it('a "debugfs: Command not found" line is not mistaken for an echo', async () => {
    const out = [echoes[0] ?? '', 'debugfs: Command not found sif', ...echoes.slice(1)]
    await expect(checkDebugfsOutput(feed(...out), script(), 0)).rejects.toThrow(/Command not found/)
  })

  it('a complaint before the first command means the image could not be opened', async () => {
    const out = ['debugfs: Bad magic number in super-block while trying to open x', ...echoes]
    await expect(checkDebugfsOutput(feed(...out), script(), 0)).rejects.toThrow(/^debugfs could not start on the image: debugfs: Bad magic/)
  })

  it('output that stops early, or a non-zero exit, fails', async () => {
    await expect(checkDebugfsOutput(feed(...echoes.slice(0, 3)), script(), 0)).rejects.toThrow(/debugfs stopped early/)
    await expect(checkDebugfsOutput(feed(...echoes), script(), 1)).rejects.toThrow(/exited with status 1/)
  })
})
