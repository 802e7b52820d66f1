#!/usr/bin/env node
// Write oclif.manifest.json after the bundle (scripts/build-cli.mjs): without it oclif imports
// every command module on each run just to list them (measured: ~0.5 s of CPU per invocation,
// most of `bale --version`); with it, a run imports only the command it runs. Regenerated on
// every build, so it cannot go stale against dist/cli.
import { rmSync, writeFileSync } from 'node:fs'
import { Config } from '@oclif/core'

const root = new URL('..', import.meta.url).pathname
const file = `${root}oclif.manifest.json`
rmSync(file, { force: true }) // never build the manifest from an old manifest
const config = await Config.load({ root })
const plugin = config.getPluginsList().find((p) => p.root === config.root) ?? config.getPluginsList()[0]
const manifest = plugin.manifest
if (!manifest || Object.keys(manifest.commands ?? {}).length === 0) {
  console.error('oclif-manifest: no commands found (did scripts/build-cli.mjs run?)')
  process.exit(1)
}
writeFileSync(file, `${JSON.stringify(manifest, null, 2)}\n`)
