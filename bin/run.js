#!/usr/bin/env node
// oclif entry point. `npm run build` bundles the CLI into dist/cli (scripts/build-cli.mjs): oclif
// itself is dist/cli/oclif.js, the one copy the bundled commands extend, so it is imported from
// there rather than from node_modules.
import oclif from '../dist/cli/oclif.js'

await oclif.execute({ dir: import.meta.url })
