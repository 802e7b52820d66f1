import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { chooseAccel, hasVirtFlag, tscKhzFromCpuinfo, type AccelProbe } from '../../../src/runtime/vmm/accel.js'

const dir = mkdtempSync(path.join(os.tmpdir(), 'bale-accel-'))
const kvmOk = path.join(dir, 'kvm')
writeFileSync(kvmOk, '') // a file that opens read-write stands in for a working /dev/kvm
const kvmDir = path.join(dir, 'kvm-dir')
mkdirSync(kvmDir) // opening a directory O_RDWR fails (EISDIR): a /dev/kvm that cannot be opened
const cpuVmx = path.join(dir, 'cpuinfo-vmx')
writeFileSync(cpuVmx, 'processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx sse2\ncpu MHz\t\t: 2445.406\n')
const cpuSvm = path.join(dir, 'cpuinfo-svm')
writeFileSync(cpuSvm, 'flags\t\t: fpu svm lm\n')
const cpuNone = path.join(dir, 'cpuinfo-none')
// "vmx" only as part of another word must not count.
writeFileSync(cpuNone, 'flags\t\t: fpu vme de pse tsc msr avx512_vmxish\nvmx flags\t: ept vpid\n')

const probe = (kvmDevice: string, cpuinfo: string): AccelProbe => ({ kvmDevice, cpuinfo })

describe('accelerator choice', () => {
  it('auto picks KVM when /dev/kvm opens read-write and the CPU has vmx or svm', async () => {
    expect(await chooseAccel('auto', probe(kvmOk, cpuVmx))).toEqual({ accel: 'kvm' })
    expect(await chooseAccel('auto', probe(kvmOk, cpuSvm))).toEqual({ accel: 'kvm' })
  })

  it('nested-kvm trap: a /dev/kvm that opens but no vmx/svm flag means TCG, with a one-line warning', async () => {
    const c = await chooseAccel('auto', probe(kvmOk, cpuNone))
    expect(c.accel).toBe('tcg')
    expect(c.warning).toMatch(/neither vmx nor svm/)
    expect(c.warning).not.toContain('\n')
  })

  it('auto falls back to TCG when /dev/kvm is missing or cannot be opened', async () => {
    const missing = await chooseAccel('auto', probe(path.join(dir, 'nope'), cpuVmx))
    expect(missing).toMatchObject({ accel: 'tcg' })
    expect(missing.warning).toMatch(/cannot be opened read-write \(ENOENT\)/)
    expect((await chooseAccel('auto', probe(kvmDir, cpuVmx))).warning).toMatch(/EISDIR/)
  })

  it('--accel kvm on a host without usable KVM is a usage error, not a silent fallback', async () => {
    await expect(chooseAccel('kvm', probe(kvmOk, cpuNone))).rejects.toMatchObject({ code: 'E_USAGE', message: expect.stringMatching(/^--accel kvm: /) })
  })

  it('--accel tcg never probes', async () => {
    expect(await chooseAccel('tcg', probe(path.join(dir, 'nope'), path.join(dir, 'nope')))).toEqual({ accel: 'tcg' })
  })

  it('reads only the flags lines, whole words', () => {
    expect(hasVirtFlag('flags : a vmx b')).toBe(true)
    expect(hasVirtFlag('flags : a vmxx b\nbugs : vmx')).toBe(false)
  })

  it('takes the TSC rate for TCG guests from cpu MHz', () => {
    expect(tscKhzFromCpuinfo('cpu MHz\t\t: 2445.406\n')).toBe(2445406)
    expect(tscKhzFromCpuinfo('flags : fpu\n')).toBeUndefined()
  })
})
