import { BaleError } from '../../lib/errors.js'

/**
 * `-e KEY=VAL` as given; `-e KEY` takes this shell's value and is dropped when unset, as
 * `docker run -e` does. The result goes to stage 2 (boot) or the agent (exec), which merge it
 * over the image's env.
 */
export function resolveEnv(specs: readonly string[], env: NodeJS.ProcessEnv, flag = '-e'): string[] {
  const out: string[] = []
  for (const spec of specs) {
    const eq = spec.indexOf('=')
    const key = eq < 0 ? spec : spec.slice(0, eq)
    if (!/^[^=\0]+$/.test(key) || spec.includes('\0')) {
      throw new BaleError('E_USAGE', `${flag} ${JSON.stringify(spec)}: expected KEY=VAL or KEY`, { subject: spec })
    }
    if (eq >= 0) out.push(spec)
    else if (env[key] !== undefined) out.push(`${key}=${env[key]}`)
  }
  return out
}
