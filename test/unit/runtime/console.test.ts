import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { ConsoleFilter, exitCodeOfGuestLine } from '../../../src/runtime/vmm/console.js'

interface Seen {
  out: string
  guest: string[]
  kernel: string[]
}

/** Feed the text in the given pieces and collect what comes out of each channel. */
function run(pieces: Array<string | Buffer>): Seen {
  const seen: Seen = { out: '', guest: [], kernel: [] }
  const f = new ConsoleFilter({ output: (t) => (seen.out += t), guest: (l) => seen.guest.push(l), kernel: (l) => seen.kernel.push(l) })
  for (const p of pieces) f.push(p)
  f.end()
  return seen
}

const LOG =
  '[    1.249996] PCI: Fatal: No config space access function found\r\n' +
  'hello from the entrypoint\r\n' +
  'bale-init: exec /bin/httpd: No such file or directory\r\n' +
  '[x] not a kernel line\r\n' +
  'bale\r\n' +
  'no newline' +
  'bale-init: exit status 3\r\n' +
  '[    6.504605] reboot: Power down\r\n'

const EXPECTED: Seen = {
  out: 'hello from the entrypoint\n[x] not a kernel line\nbale\nno newline',
  guest: ['exec /bin/httpd: No such file or directory', 'exit status 3'],
  kernel: ['[    1.249996] PCI: Fatal: No config space access function found', '[    6.504605] reboot: Power down'],
}

describe('console filter', () => {
  it('separates kernel lines, guest init lines and entrypoint output; drops the tty\'s \\r before \\n', () => {
    expect(run([LOG])).toEqual(EXPECTED)
  })

  it('exit-line-after-partial-output trap: stage 2\'s report mid-line is still found', () => {
    expect(run(['no newline', 'bale-init: exit status 3\r\n'])).toEqual({ out: 'no newline', guest: ['exit status 3'], kernel: [] })
    expect(run(['abcbale-', 'init: signal 15\n'])).toEqual({ out: 'abc', guest: ['signal 15'], kernel: [] })
  })

  it('printk-timestamp-split trap: a kernel line cut right after its "]" is still a kernel line', () => {
    expect(run(['[', '    1.249996]', ' PCI: Fatal\r\n'])).toEqual({ out: '', guest: [], kernel: ['[    1.249996] PCI: Fatal'] })
    expect(run(['[12]', 'x\n'])).toEqual({ out: '[12]x\n', guest: [], kernel: [] })
  })

  it('a held-back prefix that turns out not to be one is output unchanged', () => {
    expect(run(['x bale-in', 'side\n'])).toEqual({ out: 'x bale-inside\n', guest: [], kernel: [] })
    expect(run(['x bal'])).toEqual({ out: 'x bal', guest: [], kernel: [] })
  })

  it('keeps a \\r that is not before \\n (progress output)', () => {
    expect(run(['10%\r', '20%\r', '\n'])).toEqual({ out: '10%\r20%\n', guest: [], kernel: [] })
  })

  it('passes output through before its line ends once it cannot be a kernel or init line (a prompt is not held back)', () => {
    const outs: string[] = []
    const f = new ConsoleFilter({ output: (t) => outs.push(t) })
    f.push('Password: ')
    expect(outs.join('')).toBe('Password: ')
  })

  it('is the same however the bytes are split, UTF-8 included (chunking invariance)', () => {
    const text = `${LOG}ünïcödé ✓ bale-init: exit status 0\n`
    const bytes = Buffer.from(text, 'utf8')
    const whole = run([bytes])
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: bytes.length - 1 }), { maxLength: 12 }), (cuts) => {
        const at = [0, ...cuts.sort((a, b) => a - b), bytes.length]
        const pieces = at.slice(1).map((end, i) => bytes.subarray(at[i]!, end))
        expect(run(pieces)).toEqual(whole)
      }),
    )
    expect(whole.guest).toContain('exit status 0')
    expect(whole.out).toContain('ünïcödé ✓ ')
  })

  it('maps stage 2\'s report to an exit code: N, or 128+N for signal N', () => {
    expect(exitCodeOfGuestLine('exit status 0')).toBe(0)
    expect(exitCodeOfGuestLine('exit status 127')).toBe(127)
    expect(exitCodeOfGuestLine('signal 15')).toBe(143)
    expect(exitCodeOfGuestLine('exec /x: No such file or directory')).toBeUndefined()
  })
})
