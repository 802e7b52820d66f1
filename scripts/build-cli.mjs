#!/usr/bin/env node
// Bundle the CLI into dist/cli/ (after `tsc`, which still writes dist/ for benches and tools that
// import single modules). Why: a cold `bale pull` spent ~0.4 s before its first request, most of it
// Node resolving, reading and compiling ~400 small ESM/CJS files (oclif, undici, zod, ours) one
// by one. esbuild turns them into a few large files; ESM code splitting keeps each command's
// heavy dependencies (QEMU runtime, catalog, zstd, tar) in chunks that only that command loads.
//
// Layout (oclif's default 'pattern' command discovery, over the bundled files):
//   dist/cli/oclif.js               @oclif/core itself, for bin/run.js (same instance the commands use)
//   dist/cli/commands/<topic>/<x>.js one entry per command; oclif.manifest.json points at these
//   dist/cli/chunk-*.js             shared code, at depth 2 like dist/lib/*.js (see PATHS below)
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import * as esbuild from 'esbuild'

const root = path.resolve(new URL('..', import.meta.url).pathname)
const outdir = path.join(root, 'dist', 'cli')
const commandsDir = path.join(root, 'src', 'commands')

// src/lib/paths.ts finds the package root as two directories above its own file (dist/lib/ under
// tsc). Made an entry of its own, its code always lands in a shared chunk at dist/cli/ (esbuild
// puts code reached from more than one entry into chunks), two levels below the root as well,
// never inlined into a deeper command file. Checked after the build.
const PATHS = 'src/lib/paths.ts'

function sourceFiles(dir) {
  return readdirSync(dir).flatMap((name) => {
    const p = path.join(dir, name)
    if (statSync(p).isDirectory()) return sourceFiles(p)
    return name.endsWith('.ts') ? [p] : []
  })
}

const entryPoints = {
  oclif: '@oclif/core',
  paths: path.join(root, PATHS),
  ...Object.fromEntries(sourceFiles(commandsDir).map((f) => [`commands/${path.relative(commandsDir, f).replace(/\.ts$/, '')}`, f])),
}

/**
 * undici's index.js loads every feature it has (fetch, WebSocket, cookies, mocks, caches; the
 * cookie module alone pulls in Node's own bundled undici): ~1 MB of JS, ~50 ms, for the two
 * things bale uses, `Agent` and `request(url, { dispatcher })`. This module gives exactly those,
 * built from the same undici files index.js uses (version 7's layout; the build fails if it moves).
 */
const UNDICI_LEAN = `
const Agent = require('undici/lib/dispatcher/agent')
const Dispatcher = require('undici/lib/dispatcher/dispatcher')
const api = require('undici/lib/api')
const util = require('undici/lib/core/util')
const { InvalidArgumentError } = require('undici/lib/core/errors')
const { getGlobalDispatcher } = require('undici/lib/global')
// What index.js does so that dispatchers have .request(), .stream(), ...
Object.assign(Dispatcher.prototype, api)
// index.js's makeDispatcher(api.request), kept to the same checks and defaults.
function request(url, opts, handler) {
  if (typeof opts === 'function') {
    handler = opts
    opts = null
  }
  if (!url || (typeof url !== 'string' && typeof url !== 'object' && !(url instanceof URL))) throw new InvalidArgumentError('invalid url')
  if (opts != null && typeof opts !== 'object') throw new InvalidArgumentError('invalid opts')
  if (opts && opts.path != null) {
    if (typeof opts.path !== 'string') throw new InvalidArgumentError('invalid opts.path')
    url = new URL(util.parseOrigin(url).origin + (opts.path.startsWith('/') ? opts.path : '/' + opts.path))
  } else {
    if (!opts) opts = typeof url === 'object' ? url : {}
    url = util.parseURL(url)
  }
  const { agent, dispatcher = getGlobalDispatcher() } = opts
  if (agent) throw new InvalidArgumentError('unsupported opts.agent. Did you mean opts.client?')
  return api.request.call(dispatcher, {
    ...opts,
    origin: url.origin,
    path: url.search ? url.pathname + url.search : url.pathname,
    method: opts.method || (opts.body ? 'PUT' : 'GET'),
  }, handler)
}
module.exports = { Agent, request }
`

/** `import ... from 'undici'` in our sources gets UNDICI_LEAN; undici's own files are untouched. */
const undiciLean = {
  name: 'undici-lean',
  setup(build) {
    build.onResolve({ filter: /^undici$/ }, (args) => (args.importer.startsWith(path.join(root, 'src')) ? { path: 'undici-lean', namespace: 'bale' } : undefined))
    build.onLoad({ filter: /^undici-lean$/, namespace: 'bale' }, () => ({ contents: UNDICI_LEAN, loader: 'js', resolveDir: root }))
  },
}

/**
 * zod's `z` namespace re-exports all of its ~50 locales (error messages in other languages):
 * 366 KB of the 757 KB zod chunk, parsed on every run of a command that validates anything.
 * bale uses zod's default (English) messages only, so the bundle keeps `en` alone; a source
 * that reaches for another locale fails the build rather than getting undefined at run time.
 */
const zodEnglishOnly = {
  name: 'zod-english-only',
  setup(build) {
    build.onLoad({ filter: /[\\/]node_modules[\\/]zod[\\/]v4[\\/]locales[\\/]index\.js$/ }, () => ({ contents: "export { default as en } from './en.js'", loader: 'js' }))
  },
}
const localeUse = sourceFiles(path.join(root, 'src')).filter((f) => /\blocales\b/.test(readFileSync(f, 'utf8')))
if (localeUse.length > 0) {
  console.error(`build-cli: ${localeUse.join(', ')} mention zod locales, which the bundle leaves out (see zodEnglishOnly)`)
  process.exit(1)
}

rmSync(outdir, { recursive: true, force: true }) // no chunk from an earlier build may linger
const result = await esbuild.build({
  absWorkingDir: root,
  entryPoints,
  outdir,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  chunkNames: 'chunk-[hash]',
  sourcemap: 'linked',
  minifyWhitespace: true,
  minifySyntax: true,
  metafile: true,
  logLevel: 'warning',
  plugins: [undiciLean, zodEnglishOnly],
  external: [
    // Native addon: loaded by Node from node_modules, with its prebuilt binary beside it.
    '@mongodb-js/zstd',
    // oclif's development mode (ts-node/tsx) only; never installed for users, never reached here.
    'typescript',
  ],
  // Bundled CommonJS (oclif, undici, ...) calls require() for Node built-ins; an ESM file has no
  // require of its own, so each output file gets one.
  banner: { js: "import { createRequire as __baleCreateRequire } from 'node:module'; const require = __baleCreateRequire(import.meta.url);" },
})

// The package-root lookup must run from a file two levels below the root (see PATHS).
const pathsOut = Object.entries(result.metafile.outputs).filter(([, o]) => Object.keys(o.inputs).includes(PATHS)).map(([f]) => f)
const misplaced = pathsOut.filter((f) => path.dirname(f) !== 'dist/cli')
if (pathsOut.length === 0 || misplaced.length > 0) {
  console.error(`build-cli: ${PATHS} bundled into ${pathsOut.join(', ') || 'nothing'}; it must be in dist/cli/*.js for projectRoot() to find the package root`)
  process.exit(1)
}

// BALE_BUILD_META=FILE: esbuild's metafile, to see what each chunk holds (e.g. esbuild.github.io/analyze).
if (process.env.BALE_BUILD_META) writeFileSync(process.env.BALE_BUILD_META, JSON.stringify(result.metafile))
