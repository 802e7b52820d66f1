import { promises as fs, readFileSync } from 'node:fs'
import path from 'node:path'

/**
 * What /proc says about a process: enough to tell whether a pid still names the QEMU we
 * started. A pid alone is not enough (pids are reused); the start time (clock ticks since
 * boot, /proc/PID/stat field 22) changes with every new process, and the argv holds the VM id.
 */
export interface ProcInfo {
  readonly pid: number
  /** Field 3 of /proc/PID/stat: R, S, D, Z (zombie), X (dead), … */
  readonly state: string
  /** Field 22 of /proc/PID/stat, as a decimal string (it is an unsigned long long). */
  readonly startTime: string
  readonly argv: readonly string[]
}

export interface ProcFs {
  readonly root: string
}

export const HOST_PROC: ProcFs = Object.freeze({ root: '/proc' })

/**
 * Parse /proc/PID/stat. The command name (field 2) is in parentheses and may itself contain
 * spaces and parentheses, so fields are counted from the LAST ')'.
 */
export function parseStat(text: string): { state: string; startTime: string } | undefined {
  const close = text.lastIndexOf(')')
  if (close < 0) return undefined
  const rest = text.slice(close + 2).trim().split(/\s+/)
  // rest[0] is field 3 (state); field 22 (starttime) is rest[19].
  const state = rest[0]
  const startTime = rest[19]
  if (state === undefined || startTime === undefined || !/^\d+$/.test(startTime)) return undefined
  return { state, startTime }
}

/** /proc/PID/cmdline: NUL-separated, with a trailing NUL. Empty for zombies and kernel threads. */
export function parseCmdline(buf: Buffer): string[] {
  if (buf.length === 0) return []
  const text = buf.toString('utf8')
  const parts = text.split('\0')
  if (parts[parts.length - 1] === '') parts.pop()
  return parts
}

export async function readProc(pid: number, procfs: ProcFs = HOST_PROC): Promise<ProcInfo | undefined> {
  if (!Number.isInteger(pid) || pid <= 0) return undefined
  try {
    const dir = path.join(procfs.root, String(pid))
    const stat = parseStat(await fs.readFile(path.join(dir, 'stat'), 'utf8'))
    if (stat === undefined) return undefined
    const argv = parseCmdline(await fs.readFile(path.join(dir, 'cmdline')))
    return { pid, ...stat, argv }
  } catch {
    // ENOENT (gone), ESRCH (exited between the two reads): not there.
    return undefined
  }
}

/** Synchronous start time, for the moment right after spawn (the record is written before anything else can run). */
export function readStartTimeSync(pid: number, procfs: ProcFs = HOST_PROC): string | undefined {
  try {
    return parseStat(readFileSync(path.join(procfs.root, String(pid), 'stat'), 'utf8'))?.startTime
  } catch {
    return undefined
  }
}

/** Every process whose argv equals `argv` exactly (how a record without a pid finds its QEMU). */
export async function findByArgv(argv: readonly string[], procfs: ProcFs = HOST_PROC): Promise<ProcInfo[]> {
  const out: ProcInfo[] = []
  let names: string[]
  try {
    names = await fs.readdir(procfs.root)
  } catch {
    return out
  }
  for (const name of names) {
    if (!/^\d+$/.test(name)) continue
    const info = await readProc(Number(name), procfs)
    if (info && sameArgv(info.argv, argv)) out.push(info)
  }
  return out
}

export function sameArgv(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}
