import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import path from 'node:path'
import { BaleError } from './errors.js'
import { projectRoot } from './paths.js'

/** The static guest binary built by `npm run build:guest` (guest/Makefile); BALE_GUEST_INIT overrides. */
export function defaultInitBinary(env: NodeJS.ProcessEnv = process.env): string {
  return env.BALE_GUEST_INIT ? path.resolve(env.BALE_GUEST_INIT) : path.join(projectRoot(), 'guest', 'out', 'bale-init')
}

/** The agent version, as the binary itself reports it (`bale-init --version`). */
export async function guestVersion(binary: string): Promise<string> {
  try {
    const { stdout } = await promisify(execFile)(binary, ['--version'], { timeout: 5000 })
    const v = stdout.trim().split('\n')[0]?.trim()
    if (!v) throw new Error('empty version')
    return v.replace(/^bale-init\s+/, '')
  } catch (e) {
    const missing = (e as NodeJS.ErrnoException).code === 'ENOENT'
    throw new BaleError(
      missing ? 'E_NOT_FOUND' : 'E_TOOL',
      missing ? `guest init ${binary} not found: build it with \`npm run build:guest\`` : `guest init ${binary}: cannot read its version`,
      { subject: binary, cause: e },
    )
  }
}
