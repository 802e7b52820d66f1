import { promises as fs } from 'node:fs'
import path from 'node:path'
import { BaleError } from '../../lib/errors.js'
import { run } from '../../lib/exec.js'

/**
 * A Debian `linux-image-*` package, unpacked with `dpkg -x` into a private directory (never
 * installed: nothing touches /boot or the package database).
 */

export interface DebFields {
  package: string
  version: string
  depends: string
}

export async function readDebFields(deb: string): Promise<DebFields> {
  const { stdout } = await run('dpkg-deb', ['--field', deb, 'Package', 'Version', 'Depends']).catch((e: unknown) => {
    throw new BaleError('E_INPUT', `${deb}: not a Debian package (${(e as Error).message})`, { subject: deb, cause: e })
  })
  const fields = new Map<string, string>()
  for (const line of stdout.split('\n')) {
    const m = /^([A-Za-z-]+):\s*(.*)$/.exec(line)
    if (m) fields.set(m[1]!.toLowerCase(), m[2]!.trim())
  }
  return { package: fields.get('package') ?? '', version: fields.get('version') ?? '', depends: fields.get('depends') ?? '' }
}

export interface UnpackedKernel {
  /** The bzImage, `boot/vmlinuz-<release>`. */
  vmlinuz: string
  /** `lib/modules/<release>` (or `usr/lib/modules/<release>` in merged-/usr packages). */
  modulesDir: string
  /** `boot/config-<release>`, when the package has it. */
  config?: string
  release: string
}

export async function unpackDeb(deb: string, dir: string, fields: DebFields): Promise<UnpackedKernel> {
  await run('dpkg', ['-x', deb, dir]).catch((e: unknown) => {
    throw new BaleError('E_INPUT', `${deb}: dpkg -x failed: ${(e as Error).message}`, { subject: deb, cause: e })
  })
  const boot = await fs.readdir(path.join(dir, 'boot')).catch(() => [] as string[])
  const images = boot.filter((f) => f.startsWith('vmlinuz-'))
  if (images.length !== 1) {
    const dep = /linux-image-[^\s,(]+/.exec(fields.depends)?.[0]
    const hint = dep ? `: it is a meta package; import its dependency (apt-get download ${dep})` : ''
    throw new BaleError(
      'E_INPUT',
      images.length === 0 ? `${deb}: package ${fields.package} holds no boot/vmlinuz-*${hint}` : `${deb}: package holds several kernels (${images.join(', ')})`,
      { subject: deb },
    )
  }
  const release = images[0]!.slice('vmlinuz-'.length)
  let modulesDir: string | undefined
  for (const base of ['lib/modules', 'usr/lib/modules']) {
    const candidate = path.join(dir, base, release)
    if (await fs.stat(candidate).then((s) => s.isDirectory(), () => false)) modulesDir = candidate
  }
  if (modulesDir === undefined) {
    throw new BaleError('E_INPUT', `${deb}: package has boot/vmlinuz-${release} but no lib/modules/${release}`, { subject: deb })
  }
  const config = path.join(dir, 'boot', `config-${release}`)
  const hasConfig = await fs.stat(config).then((s) => s.isFile(), () => false)
  return { vmlinuz: path.join(dir, 'boot', images[0]!), modulesDir, config: hasConfig ? config : undefined, release }
}
