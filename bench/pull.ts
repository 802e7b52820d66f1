/**
 * `bale pull` vs `skopeo copy docker://… oci:…` from the same local registry (the Debian
 * docker-registry on 127.0.0.1), cold (empty store / empty destination) and warm (everything
 * already there), run alternately, median of N. Prints wall times and bale/skopeo ratios.
 * Not a test: the numbers go into notes and bench/README.md. Targets: ≤ 1.0× cold, near-zero warm.
 *
 *   npm run build && npx tsc --outDir .cache/bench --module nodenext --moduleResolution nodenext \
 *     --target es2022 --skipLibCheck --strict bench/pull.ts && node .cache/bench/bench/pull.js [LAYOUT[:TAG]] [RUNS]
 *
 * LAYOUT defaults to the Debian bookworm minbase fixture (fixtures/debian/build.sh, two gzip
 * layers, ~58 MB compressed); pass '' to keep it and set RUNS. A larger image, where start-up is
 * amortized: the same two layers plus a ~400 MB incompressible gzip layer, built under .cache/
 * (not in git) and run with 3 runs:
 *
 *   D=.cache/debian-oci; B=.cache/pull-big; mkdir -p $B/in && head -c 400M /dev/urandom > $B/big.bin &&
 *   tar -C $B -cf - big.bin | gzip -1 > $B/in/3.tar.gz && rm $B/big.bin && echo '{}' > $B/in/config.json &&
 *   M=$(node -p "require('./$D/index.json').manifests[0].digest.slice(7)") && i=1 &&
 *   for d in $(node -p "JSON.parse(require('fs').readFileSync('$D/blobs/sha256/$M')).layers.map(l => l.digest.slice(7)).join(' ')"); do
 *     ln -sf $PWD/$D/blobs/sha256/$d $B/in/$i.tar.gz; i=$((i+1)); done &&
 *   node fixtures/oci-from-tars.mjs $B/oci big $B/in/config.json $B/in/1.tar.gz $B/in/2.tar.gz $B/in/3.tar.gz &&
 *   node .cache/bench/bench/pull.js $B/oci:big 3 Both tools run as fresh
 * processes, so bale's CLI numbers include Node and oclif start-up (bin/run.js over the bundle
 * in dist/cli); that start-up is timed on its own (`bale --version`), and the pull engine is
 * also timed in this process (tsc's dist/registry/pull.js), which is what start-up hides.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { pushLayout, startRegistry } from '../test/helpers/registry.js'

/** Run from the repository root (wherever the compiled file lives). */
const ROOT = process.cwd()

function timeRun(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): number {
  const t0 = process.hrtime.bigint()
  const r = spawnSync(cmd, args, { env: { ...process.env, CI: 'true', ...env }, stdio: ['ignore', 'ignore', 'pipe'], cwd: ROOT })
  const s = Number(process.hrtime.bigint() - t0) / 1e9
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr.toString().trim().split('\n').slice(-3).join(' | ')}`)
  return s
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2
}

async function main(): Promise<void> {
  await fs.access(path.join(ROOT, 'dist', 'commands', 'pull.js')).catch(() => {
    throw new Error('run from the repository root after `npm run build` (dist/commands/pull.js is missing)')
  })
  const arg = process.argv[2] || undefined // '' too: `pull.js '' 9` takes the default image with 9 runs
  const runs = Number(process.argv[3] ?? 5)
  const spec = arg ?? `${execFileSync('bash', [path.join(ROOT, 'fixtures', 'debian', 'build.sh')], { encoding: 'utf8' }).trim()}:bookworm`
  const colon = spec.lastIndexOf(':')
  const [layout, tag] = colon > 0 ? [spec.slice(0, colon), spec.slice(colon + 1)] : [spec, 'latest']
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-bench-pull-'))
  const registry = await startRegistry(path.join(work, 'registry'))
  try {
    const ref = `${registry.address}/bench/image:${tag}`
    await pushLayout(layout, tag, ref)
    const bale = path.join(ROOT, 'bin', 'run.js')
    const node = process.execPath
    const { pull } = (await import(path.join(ROOT, 'dist', 'registry', 'pull.js'))) as typeof import('../src/registry/pull.js')
    const inProcess = async (storeDir: string): Promise<number> => {
      const t0 = process.hrtime.bigint()
      await pull(ref, { storeDir })
      return Number(process.hrtime.bigint() - t0) / 1e9
    }
    const t = {
      baleCold: [] as number[],
      skopeoCold: [] as number[],
      baleWarm: [] as number[],
      skopeoWarm: [] as number[],
      startup: [] as number[],
      engineCold: [] as number[],
      engineWarm: [] as number[],
    }
    for (let i = 0; i < runs; i++) {
      const cache = path.join(work, `cache-${i}`)
      const dest = path.join(work, `skopeo-${i}`)
      // Alternate who goes first, so neither always meets a warmer page cache.
      const pair = [
        () => t.baleCold.push(timeRun(node, [bale, 'pull', ref, '--quiet'], { BALE_CACHE_DIR: cache })),
        () => t.skopeoCold.push(timeRun('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${ref}`, `oci:${dest}:${tag}`])),
      ]
      if (i % 2 === 1) pair.reverse()
      for (const f of pair) f()
      t.baleWarm.push(timeRun(node, [bale, 'pull', ref, '--quiet'], { BALE_CACHE_DIR: cache }))
      t.skopeoWarm.push(timeRun('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${ref}`, `oci:${dest}:${tag}`]))
      t.startup.push(timeRun(node, [bale, '--version']))
      const store = path.join(work, `engine-${i}`)
      t.engineCold.push(await inProcess(store))
      t.engineWarm.push(await inProcess(store))
      await fs.rm(store, { recursive: true, force: true })
      await fs.rm(cache, { recursive: true, force: true })
      await fs.rm(dest, { recursive: true, force: true })
    }
    const m = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)])) as Record<keyof typeof t, number>
    const out = (label: string, s: number): string => `${label.padEnd(34)} ${s.toFixed(3)} s`
    console.log(`image ${spec} via ${ref}; median of ${runs} runs (${os.cpus().length} CPUs)`)
    console.log(out('skopeo copy, cold', m.skopeoCold))
    console.log(out('bale pull, cold', m.baleCold))
    console.log(out('skopeo copy, warm', m.skopeoWarm))
    console.log(out('bale pull, warm (0 requests)', m.baleWarm))
    console.log(out('bale --version (start-up alone)', m.startup))
    console.log(out('pull() in-process, cold', m.engineCold))
    console.log(out('pull() in-process, warm', m.engineWarm))
    console.log(`ratio cold  bale/skopeo ${(m.baleCold / m.skopeoCold).toFixed(2)}x   (target <= 1.0x)`)
    console.log(`ratio warm  bale/skopeo ${(m.baleWarm / m.skopeoWarm).toFixed(2)}x`)
    console.log(`ratio cold  pull() engine/skopeo ${(m.engineCold / m.skopeoCold).toFixed(2)}x   warm engine ${(m.engineWarm * 1000).toFixed(1)} ms`)
  } finally {
    await registry.stop()
    await fs.rm(work, { recursive: true, force: true })
  }
}

await main()
