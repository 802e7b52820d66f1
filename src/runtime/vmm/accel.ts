import { constants, promises as fs } from 'node:fs'
import { BaleError } from '../../lib/errors.js'

export type AccelRequest = 'auto' | 'kvm' | 'tcg'
export type Accel = 'kvm' | 'tcg'

export interface AccelChoice {
  readonly accel: Accel
  /** Set when `auto` fell back to TCG: one line saying why, for the user. */
  readonly warning?: string
}

/** Where the host is probed; tests point these at fakes. */
export interface AccelProbe {
  readonly kvmDevice: string
  readonly cpuinfo: string
}

export const HOST_PROBE: AccelProbe = Object.freeze({ kvmDevice: '/dev/kvm', cpuinfo: '/proc/cpuinfo' })

/**
 * Why KVM is unusable, or undefined when it is usable. Both conditions are needed: a nested
 * VM can expose a /dev/kvm that opens read-write but whose CPU has no vmx/svm, and QEMU then
 * fails (or hangs) at start-up instead of falling back. The flags check is what catches that.
 */
export async function kvmUnusable(probe: AccelProbe = HOST_PROBE): Promise<string | undefined> {
  try {
    // Opening is the real test: access(2) says yes to root whatever the device's state.
    const fh = await fs.open(probe.kvmDevice, constants.O_RDWR)
    await fh.close()
  } catch (e) {
    return `${probe.kvmDevice} cannot be opened read-write (${(e as NodeJS.ErrnoException).code ?? String(e)})`
  }
  let cpuinfo: string
  try {
    cpuinfo = await fs.readFile(probe.cpuinfo, 'utf8')
  } catch (e) {
    return `${probe.cpuinfo} is unreadable (${(e as NodeJS.ErrnoException).code ?? String(e)})`
  }
  if (!hasVirtFlag(cpuinfo)) return `the CPU flags in ${probe.cpuinfo} have neither vmx nor svm`
  return undefined
}

/** True when some `flags` line of /proc/cpuinfo lists vmx (Intel VT-x) or svm (AMD-V). */
export function hasVirtFlag(cpuinfo: string): boolean {
  for (const line of cpuinfo.split('\n')) {
    const m = /^flags\s*:(.*)$/.exec(line)
    if (m && m[1] !== undefined && m[1].split(/\s+/).some((f) => f === 'vmx' || f === 'svm')) return true
  }
  return false
}

export async function chooseAccel(request: AccelRequest, probe: AccelProbe = HOST_PROBE): Promise<AccelChoice> {
  if (request === 'tcg') return { accel: 'tcg' }
  const why = await kvmUnusable(probe)
  if (why === undefined) return { accel: 'kvm' }
  if (request === 'kvm') throw new BaleError('E_USAGE', `--accel kvm: ${why}`, { subject: '--accel' })
  return { accel: 'tcg', warning: `KVM is not usable (${why}); using TCG emulation, which boots several times slower` }
}

/**
 * The host's TSC frequency in kHz, from the first `cpu MHz` line. Under TCG the guest reads the
 * host's TSC, and the Linux guest cannot calibrate it against a PIT (we run without one, and on
 * a busy host the calibration fails and the boot hangs); `tsc_early_khz=` gives it the answer.
 */
export function tscKhzFromCpuinfo(cpuinfo: string): number | undefined {
  const m = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(cpuinfo)
  if (!m || m[1] === undefined) return undefined
  const khz = Math.round(Number(m[1]) * 1000)
  return Number.isFinite(khz) && khz > 0 ? khz : undefined
}

export async function hostTscKhz(probe: AccelProbe = HOST_PROBE): Promise<number | undefined> {
  const text = await fs.readFile(probe.cpuinfo, 'utf8').catch(() => '')
  return tscKhzFromCpuinfo(text)
}
