#!/usr/bin/env node
// oclif entry point. Commands live in dist/commands (built by `npm run build`).
import { execute } from '@oclif/core'

await execute({ dir: import.meta.url })
