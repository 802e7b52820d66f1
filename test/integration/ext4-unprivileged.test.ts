// The ext4 stage without root: a separate Node process, running as uid/gid 65534 when the tests
// run as root (setpriv), or as the unprivileged test user itself otherwise, builds an image
// with root-owned setuid files, a 0000 directory with children, a 0000 file, devices, a fifo,
// hard links and a security.capability xattr; the image is then read back here with debugfs.
// The stage's sources are transpiled (TypeScript's transpileModule) into a temporary directory
// so that the child needs neither vitest nor a build of the whole project.
import { execFileSync } from 'node:child_process'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import ts from 'typescript'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { cat, e2fsckClean, stat, xattr } from '../helpers/debugfs.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const NOBODY = 65534
const CAP = [0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]

/** Transpile `entry` and every module it imports relatively, keeping the src/ layout under `outDir`. */
async function transpileTree(entry: string, outDir: string): Promise<void> {
  const todo = [entry]
  const done = new Set<string>()
  while (todo.length > 0) {
    const file = todo.pop()
    if (file === undefined || done.has(file)) continue
    done.add(file)
    const source = await fs.readFile(file, 'utf8')
    for (const m of source.matchAll(/from '(\.{1,2}\/[^']+)\.js'/g)) {
      if (m[1]) todo.push(path.resolve(path.dirname(file), `${m[1]}.ts`))
    }
    const js = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText
    const dest = path.join(outDir, path.relative(ROOT, file)).replace(/\.ts$/, '.js')
    await fs.mkdir(path.dirname(dest), { recursive: true })
    await fs.writeFile(dest, js)
  }
  await fs.writeFile(path.join(outDir, 'package.json'), '{"type":"module"}\n')
}

// The child: builds the tree by hand (as flatten leaves it) and calls buildExt4.
const CHILD = `
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { buildExt4 } from './src/pipeline/ext4/index.js'

const [staging, out, input] = process.argv.slice(2)
await fs.mkdir(path.join(staging, 'blobs'), { recursive: true })
const tree = { staging, packed: false, entries: new Map(), nextIno: 1 }
function add(p, kind, a = {}, extra = {}) {
  const inode = { ino: tree.nextIno++, kind, mode: a.mode ?? 0o755, uid: a.uid ?? 0, gid: a.gid ?? 0,
    mtime: a.mtime ?? 1600000000, size: 0, xattrs: new Map(Object.entries(a.xattrs ?? {})), ...extra }
  tree.entries.set(p, inode)
  return inode
}
async function file(p, content, a = {}) {
  const inode = add(p, 'file', a, { size: Buffer.byteLength(content) })
  const blob = path.join(staging, 'blobs', String(inode.ino))
  await fs.writeFile(blob, content)
  // Blobs as unreadable as the image's own mode: the stage must cope without root.
  await fs.chmod(blob, a.mode ?? 0o644)
  return inode
}
add('', 'dir')
add('locked', 'dir', { mode: 0o000, uid: 1000, gid: 1000 })
add('locked/inner', 'dir', { mode: 0o000 })
await file('locked/inner/file', 'behind two 0000 directories\\n', { mode: 0o000 })
add('ro', 'dir', { mode: 0o555 })
await file('ro/child', 'read-only parent\\n')
await file('secret', 'mode zero\\n', { mode: 0o000 })
add('usr', 'dir'); add('usr/bin', 'dir')
await file('usr/bin/su', 'setuid root\\n', { mode: 0o4755 })
await file('usr/bin/wall', 'setgid tty\\n', { mode: 0o2755, gid: 5 })
await file('usr/bin/ping', 'cap\\n', { xattrs: { 'security.capability': Buffer.from(${JSON.stringify(CAP)}) } })
const shared = await file('usr/bin/a', 'hard\\n', { mode: 0o700 })
tree.entries.set('usr/bin/b', shared)
add('dev', 'dir')
add('dev/null', 'char', { mode: 0o666 }, { devMajor: 1, devMinor: 3 })
add('dev/sda', 'block', { mode: 0o660, gid: 6 }, { devMajor: 8, devMinor: 0 })
add('dev/initctl', 'fifo', { mode: 0o600 })
add('tmp', 'dir', { mode: 0o1777 })
const plan = await buildExt4(tree, out, {
  uuid: '9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d', hashSeed: '1e0f9a8b-7c6d-4e5f-9a3b-8c2d1e0f9a8b', timestamp: 1700000000, input,
})
process.stdout.write(JSON.stringify({ uid: process.getuid(), gid: process.getgid(), plan }) + '\\n')
`

// Both ways of feeding mke2fs: a staged directory, and a tar on its stdin (e2fsprogs >= 1.47.1).
describe.each(['dir', 'tar'])('ext4 stage without root, mke2fs fed a %s', (input) => {
  let dir: string
  let image: string
  let report: { uid: number; gid: number; plan: { sizeBytes: number } }

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bale-ext4-unpriv-'))
    await transpileTree(path.join(ROOT, 'src/pipeline/ext4/index.ts'), dir)
    await fs.writeFile(path.join(dir, 'child.mjs'), CHILD)
    // The transpiled stage imports packages (tar-stream) as the project does.
    await fs.symlink(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'))
    const work = path.join(dir, 'work')
    await fs.mkdir(work)
    const asRoot = process.getuid?.() === 0
    if (asRoot) {
      // The child runs as nobody: it may read the transpiled code and write only in work/.
      await fs.chmod(dir, 0o755)
      execFileSync('chmod', ['-R', 'a+rX', dir])
      await fs.chown(work, NOBODY, NOBODY)
    }
    const args = [path.join(dir, 'child.mjs'), path.join(work, 'staging'), path.join(work, 'rootfs.ext4'), input]
    const out = asRoot
      ? execFileSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, ...args], { cwd: dir })
      : execFileSync(process.execPath, args, { cwd: dir })
    report = JSON.parse(out.toString()) as typeof report
    image = path.join(work, 'rootfs.ext4')
  })

  afterAll(async () => {
    await fs.rm(dir, { recursive: true, force: true })
  })

  it('ran unprivileged', () => {
    expect(report.uid).not.toBe(0)
    expect(report.gid).not.toBe(0)
    if (process.getuid?.() === 0) expect(report.uid).toBe(NOBODY)
  })

  it('the image is clean and has the planned size', async () => {
    expect(() => e2fsckClean(image)).not.toThrow()
    expect((await fs.stat(image)).size).toBe(report.plan.sizeBytes)
  })

  it('root ownership and setuid/setgid bits that the building user could never set on the host', () => {
    expect(stat(image, '/')).toMatchObject({ uid: 0, gid: 0, mode: 0o755 })
    expect(stat(image, '/usr/bin/su')).toMatchObject({ uid: 0, gid: 0, mode: 0o4755 })
    expect(stat(image, '/usr/bin/wall')).toMatchObject({ gid: 5, mode: 0o2755 })
    expect(stat(image, '/tmp').mode).toBe(0o1777)
  })

  it('mode 0000 directories and files, with their children and contents', () => {
    expect(stat(image, '/locked')).toMatchObject({ mode: 0o000, uid: 1000, gid: 1000 })
    expect(stat(image, '/locked/inner').mode).toBe(0o000)
    expect(stat(image, '/locked/inner/file').mode).toBe(0o000)
    expect(cat(image, '/locked/inner/file').toString()).toBe('behind two 0000 directories\n')
    expect(stat(image, '/secret').mode).toBe(0o000)
    expect(cat(image, '/secret').toString()).toBe('mode zero\n')
    expect(stat(image, '/ro').mode).toBe(0o555)
  })

  it('devices, a fifo, a hard link and a security.capability xattr, without mknod or root on the host', () => {
    expect(stat(image, '/dev/null')).toMatchObject({ type: 'character', mode: 0o666, device: [1, 3], uid: 0 })
    expect(stat(image, '/dev/sda')).toMatchObject({ type: 'block', mode: 0o660, gid: 6, device: [8, 0] })
    expect(stat(image, '/dev/initctl')).toMatchObject({ type: 'FIFO', mode: 0o600 })
    expect(stat(image, '/usr/bin/a')).toMatchObject({ links: 2, mode: 0o700 })
    expect(xattr(image, '/usr/bin/ping', 'security.capability', path.join(dir, 'cap')).equals(Buffer.from(CAP))).toBe(true)
  })
})
