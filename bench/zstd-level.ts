/**
 * Which zstd level should bundles use by default? Times bale's own bundle writer (8 MiB
 * independent frames, default concurrency) at several levels on one ext4 image, next to the
 * zstd CLI compressing the same image as one stream (what framing costs in ratio). Not a test:
 * the numbers chose DEFAULT_ZSTD_LEVEL (src/pipeline/bundle/writer.ts, whose comment has them).
 *
 *   npx tsc --outDir .cache/bench --module nodenext --moduleResolution nodenext --target es2022 \
 *     --skipLibCheck --strict bench/zstd-level.ts && node .cache/bench/bench/zstd-level.js [IMAGE.ext4]
 *
 * Without an image, one is made with `mkfs.ext4 -d` from a copy of ~400 MB of this machine's
 * /usr/bin and /usr/share (binaries, libraries, text: the mix of a distro image). Level 19 is
 * timed on the first 16 MiB only and extrapolated: on the full image it takes many minutes.
 * The zstd CLI runs at the default level only, to show what cutting into frames costs.
 */
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream, promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { BundleManifest } from '../src/pipeline/bundle/manifest.js'
import { DEFAULT_ZSTD_LEVEL, defaultConcurrency, FRAME_SIZE, writeBundle } from '../src/pipeline/bundle/writer.js'

const MiB = 1024 * 1024
/** Enough content for a Debian-sized image (DESIGN.md's minbase image is 400 MB as ext4). */
const CONTENT_BUDGET = 400 * MiB
/** Level 19 takes ~30 s per 8 MiB frame on one core here: time two frames, extrapolate. */
const SLICE_FOR_SLOW_LEVELS = 16 * MiB
const LEVELS = [1, 3, 6, 10]
const SLOW_LEVELS = [19]

async function sha256File(p: string): Promise<string> {
  const h = createHash('sha256')
  for await (const c of createReadStream(p)) h.update(c as Buffer)
  return h.digest('hex')
}

/** Copy regular files from `roots` into `dest` until `budget` bytes, keeping relative paths. */
async function copySome(roots: string[], dest: string, budget: number): Promise<number> {
  let total = 0
  const perRoot = budget / roots.length
  for (const root of roots) {
    let used = 0
    const walk = async (dir: string): Promise<void> => {
      let names: string[]
      try {
        names = (await fs.readdir(dir)).sort()
      } catch {
        return
      }
      for (const n of names) {
        if (used >= perRoot) return
        const src = path.join(dir, n)
        const st = await fs.lstat(src).catch(() => undefined)
        if (st === undefined) continue
        if (st.isDirectory()) await walk(src)
        else if (st.isFile() && st.size < 64 * MiB) {
          const to = path.join(dest, path.relative('/', src))
          await fs.mkdir(path.dirname(to), { recursive: true })
          const ok = await fs.copyFile(src, to).then(
            () => true,
            () => false,
          )
          if (ok) used += st.size
        }
      }
    }
    await walk(root)
    total += used
  }
  return total
}

function manifestFor(size: number, sha256: string): BundleManifest {
  return {
    schema_version: 1,
    name: 'bench',
    version: '1',
    description: '',
    distro: 'bench',
    arch: 'amd64',
    kernel_ref: 'default',
    created: '2026-01-01T00:00:00.000Z',
    source: { ref: 'bench', platform: 'linux/amd64', layers: [] },
    config: { entrypoint: [], cmd: [], env: [], user: '', workdir: '', exposed_ports: [] },
    rootfs: { file: 'rootfs.ext4', size, sha256 },
    agent: { version: '0', sha256: '0'.repeat(64) },
  }
}

async function timeWrite(image: string, level: number, out: string): Promise<{ seconds: number; size: number }> {
  const st = await fs.stat(image)
  const manifest = manifestFor(st.size, await sha256File(image))
  const t0 = process.hrtime.bigint()
  const r = await writeBundle({ manifest, rootfsPath: image, out, level })
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  await fs.rm(out)
  return { seconds, size: r.size }
}

function timeCli(image: string, level: number, out: string): { seconds: number; size: number } {
  const t0 = process.hrtime.bigint()
  execFileSync('zstd', ['-q', '-f', `-T${defaultConcurrency()}`, `-${level}`, image, '-o', out])
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  return { seconds, size: Number(execFileSync('stat', ['-c', '%s', out]).toString().trim()) }
}

async function main(): Promise<void> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-zstd-bench-'))
  try {
    let image = process.argv[2]
    if (image === undefined) {
      const staging = path.join(work, 'staging')
      const bytes = await copySome(['/usr/bin', '/usr/share'], staging, CONTENT_BUDGET)
      image = path.join(work, 'image.ext4')
      // Room for metadata and some free space, as bale's sizing leaves (free blocks are zeros).
      const size = Math.ceil((bytes * 1.2) / MiB)
      execFileSync('mkfs.ext4', ['-q', '-F', '-d', staging, image, `${size}M`], { env: { ...process.env, LC_ALL: 'C' } })
      await fs.rm(staging, { recursive: true })
    }
    const imageSize = (await fs.stat(image)).size
    const slice = path.join(work, 'slice.ext4')
    await fs.copyFile(image, slice)
    await fs.truncate(slice, Math.min(SLICE_FOR_SLOW_LEVELS, imageSize))

    console.log(`image ${image}: ${(imageSize / MiB).toFixed(0)} MiB; frames ${FRAME_SIZE / MiB} MiB; concurrency ${defaultConcurrency()}; ${os.availableParallelism()} cores; current default level ${DEFAULT_ZSTD_LEVEL}`)
    console.log('level  bale s   bale MiB  ratio')
    const out = path.join(work, 'b.tar.zst')
    const sizes = new Map<number, number>()
    for (const level of LEVELS) {
      const b = await timeWrite(image, level, out)
      sizes.set(level, b.size)
      console.log(`${String(level).padStart(5)}  ${b.seconds.toFixed(2).padStart(6)}  ${(b.size / MiB).toFixed(1).padStart(8)}  ${((100 * b.size) / imageSize).toFixed(1).padStart(5)}%`)
    }
    const c = timeCli(image, 3, path.join(work, 'cli.zst'))
    const framed = sizes.get(3) ?? 0
    console.log(`zstd CLI -3 -T${defaultConcurrency()}, one stream: ${c.seconds.toFixed(2)} s, ${(c.size / MiB).toFixed(1)} MiB; 8 MiB frames cost ${((100 * (framed - c.size)) / c.size).toFixed(2)}% in size`)
    const sliceSize = (await fs.stat(slice)).size
    for (const level of SLOW_LEVELS) {
      const b = await timeWrite(slice, level, out)
      const scale = imageSize / sliceSize
      console.log(`${String(level).padStart(5)}  ${(b.seconds * scale).toFixed(0).padStart(6)}  (extrapolated from ${(sliceSize / MiB).toFixed(0)} MiB: ${b.seconds.toFixed(1)} s, ratio ${((100 * b.size) / sliceSize).toFixed(1)}% of the slice)`)
    }
    const base = await timeWrite(slice, 3, out)
    console.log(`(level 3 on the same slice: ${base.seconds.toFixed(1)} s, ratio ${((100 * base.size) / sliceSize).toFixed(1)}%)`)
  } finally {
    await fs.rm(work, { recursive: true, force: true })
  }
}

await main()
