/** Read an ext4 image back with the real debugfs, for assertions on what make-bundle wrote. */
import { execFileSync } from 'node:child_process'

export function debugfs(image: string, request: string): string {
  return execFileSync('debugfs', ['-R', request, image], { env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] }).toString()
}

export interface Ext4Stat {
  type: string
  mode: number
  uid: number
  gid: number
  links: number
  size: number
  mtime: number
  /** For device inodes: [major, minor]. */
  device?: [number, number]
  /** Fast symlink target, when stat shows it. */
  fastLinkTarget?: string
}

/** `debugfs -R 'stat "PATH"'` parsed into the fields the tests assert. */
export function stat(image: string, p: string): Ext4Stat {
  const out = debugfs(image, `stat "${p.replace(/"/g, '""')}"`)
  const m = (re: RegExp): string => {
    const r = re.exec(out)
    if (!r?.[1]) throw new Error(`debugfs stat ${p}: no ${re} in:\n${out}`)
    return r[1]
  }
  const dev = /Device major\/minor number: (\d+):(\d+)/.exec(out)
  const fast = /Fast link dest: "(.*)"/.exec(out)
  return {
    type: m(/Type: (\S+)/),
    mode: parseInt(m(/Mode:\s+(\d+)/), 8),
    uid: Number(m(/User:\s+(\d+)/)),
    gid: Number(m(/Group:\s+(\d+)/)),
    links: Number(m(/Links: (\d+)/)),
    size: Number(m(/Size: (\d+)/)),
    mtime: parseInt(m(/mtime: (0x[0-9a-f]+)/), 16),
    ...(dev ? { device: [Number(dev[1]), Number(dev[2])] as [number, number] } : {}),
    ...(fast ? { fastLinkTarget: fast[1] } : {}),
  }
}

export function cat(image: string, p: string): Buffer {
  return execFileSync('debugfs', ['-R', `cat "${p.replace(/"/g, '""')}"`, image], { stdio: ['ignore', 'pipe', 'ignore'] })
}

/** An xattr's raw value (`ea_get -f` writes it to a file verbatim). */
export function xattr(image: string, p: string, name: string, tmpFile: string): Buffer {
  debugfs(image, `ea_get -f ${tmpFile} "${p.replace(/"/g, '""')}" ${name}`)
  return execFileSync('cat', [tmpFile])
}

export function e2fsckClean(image: string): void {
  execFileSync('e2fsck', ['-fn', image], { stdio: 'pipe' })
}
