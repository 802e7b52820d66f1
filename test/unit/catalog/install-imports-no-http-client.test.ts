/**
 * Trap: `bale install --from DIR` must work on a host with no network at all, and must not even
 * create an HTTP client there. Walk the static import graph of the install command and assert
 * that nothing on it can open a connection: no undici, no node:http/https/net/tls/dgram, and
 * none of bale's own network modules. (The integration test also runs it inside `unshare -n`.)
 */
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'

const ROOT = path.resolve(import.meta.dirname, '..', '..', '..')
const NETWORK_PACKAGES = ['undici', 'node:http', 'node:https', 'node:net', 'node:tls', 'node:dgram', 'http', 'https', 'net', 'tls', 'dgram']
const NETWORK_MODULES = ['src/catalog/http.ts', 'src/catalog/oci.ts', 'src/catalog/fetch.ts', 'src/registry/client.ts', 'src/registry/push.ts', 'src/registry/pull.ts']

/** Every module reachable from `entry` by static or dynamic import: relative files and bare packages. */
function importGraph(entry: string): { files: Set<string>; packages: Map<string, string> } {
  const files = new Set<string>()
  const packages = new Map<string, string>()
  const todo = [path.join(ROOT, entry)]
  while (todo.length > 0) {
    const file = todo.pop() as string
    if (files.has(file)) continue
    files.add(file)
    const src = readFileSync(file, 'utf8')
    for (const m of src.matchAll(/(?:^|\s)(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)|^import\s+['"]([^'"]+)['"]/gm)) {
      const spec = (m[1] ?? m[2] ?? m[3]) as string
      if (spec.startsWith('.')) todo.push(path.resolve(path.dirname(file), spec.replace(/\.js$/, '.ts')))
      else if (!packages.has(spec)) packages.set(spec, path.relative(ROOT, file))
    }
  }
  return { files, packages }
}

describe('install-imports-no-http-client', () => {
  for (const entry of ['src/commands/install.ts', 'src/catalog/install.ts']) {
    it(`${entry} reaches no network module`, () => {
      const { files, packages } = importGraph(entry)
      expect(files.size).toBeGreaterThan(5)
      const rel = [...files].map((f) => path.relative(ROOT, f))
      expect(rel.filter((f) => NETWORK_MODULES.includes(f))).toEqual([])
      expect([...packages.entries()].filter(([p]) => NETWORK_PACKAGES.includes(p))).toEqual([])
    })
  }

  it('the walk does find network imports where they are (the check can fail)', () => {
    const { packages } = importGraph('src/commands/fetch.ts')
    expect(packages.has('undici')).toBe(true)
  })
})
