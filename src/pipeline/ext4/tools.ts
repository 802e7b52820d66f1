/**
 * Running e2fsprogs for the ext4 stage: mke2fs with a configuration of our own, debugfs with
 * its output captured in order, e2fsck. Output goes to a log file under the scratch directory
 * (stdout and stderr to one descriptor keep debugfs's echo and error lines in order, and a
 * large script's output is read back as a stream rather than held in memory).
 */
import { spawn } from 'node:child_process'
import { createReadStream, existsSync, readdirSync, promises as fs } from 'node:fs'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { BaleError } from '../../lib/errors.js'
import { toolPath } from '../../lib/exec.js'
import { BLOCK_SIZE, INODE_SIZE, journalBlocks } from './geometry.js'

/**
 * mke2fs reads /etc/mke2fs.conf, which differs between distributions and versions (features,
 * inode size, the "small" and "floppy" types); bale brings its own so that the same e2fsprogs
 * makes the same image on any host. The features are mke2fs 1.47.0's ext4 defaults.
 */
export const MKE2FS_CONF = `[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = ${BLOCK_SIZE}
	inode_size = ${INODE_SIZE}
	inode_ratio = 16384

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
`

/** Host variables that change what e2fsprogs writes or prints; replaced by ours or removed. */
const E2FS_ENV = /^(MKE2FS_|E2FSPROGS_|E2FSCK_|DEBUGFS_)/

function toolEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!E2FS_ENV.test(k)) env[k] = v
  // LC_ALL=C: messages we parse are English, and mke2fs -d sorts names bytewise (alphasort is strcoll).
  // (mke2fs reading a tar sets LC_ALL=C.UTF-8 in `extra`: libarchive converts PAX names to the locale.)
  return { ...env, PATH: toolPath(process.env.PATH), LC_ALL: 'C', ...extra }
}

/**
 * mke2fs, debugfs -w and e2fsck (even -n) fsync the image when they close it: ~0.4 s for the
 * Debian image on the build machine, some minutes as long as all of mke2fs's other work, paid
 * by whichever closes it first. The image is an intermediate: it is checked, hashed,
 * compressed into the bundle (which is fsynced before its rename) and deleted, and after a
 * crash its staging directory is garbage anyway. libeatmydata (Debian's libeatmydata1, made
 * for exactly this: apt, sbuild and mmdebstrap builds use it) makes fsync a no-op when
 * preloaded. Looked for once per process, in the library directories (a bare name that ld.so
 * cannot find would print a complaint into the tool's log); without it the tools run as they
 * are. The bytes written are the same either way.
 */
export function noFsyncPreload(libDirs?: readonly string[]): string | undefined {
  if (libDirs === undefined && preload !== null) return preload
  const dirs = libDirs ?? defaultLibDirs()
  const found = dirs.map((d) => path.join(d, 'libeatmydata.so.1')).find((f) => existsSync(f))
  if (libDirs === undefined) preload = found
  return found
}
let preload: string | undefined | null = null

function defaultLibDirs(): string[] {
  let multiarch: string[] = []
  try {
    multiarch = readdirSync('/usr/lib').filter((d) => /^[a-z0-9_]+-linux-gnu[a-z0-9_]*$/.test(d)).map((d) => path.join('/usr/lib', d))
  } catch {
    // No /usr/lib: nothing to preload.
  }
  return [...multiarch, '/usr/lib64', '/usr/lib']
}

/** `env` with `lib` preloaded after whatever the caller already preloads. */
export function withPreload(env: NodeJS.ProcessEnv, lib: string | undefined): NodeJS.ProcessEnv {
  if (lib === undefined) return env
  const prior = env.LD_PRELOAD?.trim()
  return { ...env, LD_PRELOAD: prior ? `${prior} ${lib}` : lib }
}

/**
 * Run `cmd` with stdout and stderr both appended to `log`, and `stdin` (if given) piped in;
 * resolves with the exit status. If feeding stdin fails for a reason of ours (not the tool
 * closing its end early), that is the error: the tool only saw its input stop.
 */
async function runLogged(cmd: string, args: readonly string[], env: NodeJS.ProcessEnv, log: string, stdin?: Readable): Promise<number> {
  const fh = await fs.open(log, 'w', 0o600)
  try {
    const child = spawn(cmd, args, { env, stdio: [stdin ? 'pipe' : 'ignore', fh.fd, fh.fd] })
    const fed = stdin && child.stdin ? pipeline(stdin, child.stdin).then(() => undefined, (e: unknown) => e) : Promise.resolve(undefined)
    const status = await new Promise<number>((resolve, reject) => {
      child.on('error', (e: NodeJS.ErrnoException) => {
        stdin?.destroy()
        if (e.code === 'ENOENT') reject(new BaleError('E_TOOL', `${cmd}: not found on PATH (install e2fsprogs: run the README's set-up command)`, { subject: cmd }))
        else reject(new BaleError('E_TOOL', `${cmd}: ${e.message}`, { subject: cmd, cause: e }))
      })
      child.on('close', (code, sig) => {
        if (sig) reject(new BaleError('E_TOOL', `${cmd} killed by ${sig}`, { subject: cmd }))
        else resolve(code ?? 128)
      })
    })
    const feedError = await fed
    if (feedError !== undefined && !toolClosedStdin(feedError)) throw feedError
    return status
  } finally {
    await fh.close()
  }
}

function toolClosedStdin(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | undefined)?.code
  return code === 'EPIPE' || code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'ECONNRESET'
}

/** The log's lines, streamed; the file is closed even when the reader stops early. */
async function* logLines(log: string): AsyncGenerator<string> {
  const input = createReadStream(log, { encoding: 'utf8' })
  try {
    yield* createInterface({ input, crlfDelay: Infinity })
  } finally {
    input.destroy()
  }
}

/** The first line of `log` that `keep` accepts, for an error message. */
async function firstLine(log: string, keep: (l: string) => boolean): Promise<string | undefined> {
  for await (const line of logLines(log)) {
    const t = line.trim()
    if (t !== '' && keep(t)) return t
  }
  return undefined
}

export interface MkfsArgs {
  /** What `-d` reads: a staged directory, or a tar stream on stdin (see mkfsReadsTar). */
  input: { dir: string } | { tar: Readable }
  out: string
  blocks: number
  inodes: number
  uuid: string
  hashSeed: string
  timestamp: number
  label?: string
  conf: string
  log: string
}

/**
 * mke2fs -d. Reproducible: our configuration file, a fixed UUID and hash seed, every time it
 * writes (superblock times, crtime, lost+found and root times) from E2FSPROGS_FAKE_TIME, which
 * libext2fs 1.47.0 honours; no host xattrs copied (a SELinux label on staging would otherwise
 * land in the image); the output is a file we just created full of zeros, so nothing is
 * discarded or zeroed and the "zeroed" flags do not depend on the host kernel (/sys lazy_itable_init).
 */
export async function mkfs(a: MkfsArgs): Promise<void> {
  const ext = [`hash_seed=${a.hashSeed}`, 'root_owner=0:0', 'no_copy_xattrs', 'nodiscard', 'assume_storage_prezeroed=1']
  const args = [
    '-q', '-F',
    '-t', 'ext4',
    '-T', 'default', // no usage type by size ("small", "floppy"): those are not in our configuration
    '-b', String(BLOCK_SIZE),
    '-I', String(INODE_SIZE),
    '-N', String(a.inodes),
    '-m', '0', // no blocks reserved for root: the free space planned is the VM's, and the VM runs as root
    '-J', `size=${(journalBlocks(a.blocks) * BLOCK_SIZE) / 2 ** 20}`,
    '-U', a.uuid,
    ...(a.label !== undefined ? ['-L', a.label] : []),
    '-E', ext.join(','),
    '-d', 'dir' in a.input ? a.input.dir : '-',
    a.out,
    String(a.blocks),
  ]
  const tar = 'tar' in a.input ? a.input.tar : undefined
  const env = withPreload(toolEnv({ MKE2FS_CONFIG: a.conf, E2FSPROGS_FAKE_TIME: String(a.timestamp), ...(tar ? { LC_ALL: 'C.UTF-8' } : {}) }), noFsyncPreload())
  const code = await runLogged('mkfs.ext4', args, env, a.log, tar)
  if (code !== 0) {
    const why = (await firstLine(a.log, () => true)) ?? `exit status ${code}`
    throw new BaleError('E_TOOL', `mkfs.ext4 failed on ${a.out}: ${why}`, { subject: a.out })
  }
}

let readsTar: Promise<boolean> | undefined

/**
 * Whether this host's mke2fs can be fed a tar on stdin (`-d -`: e2fsprogs 1.47.1 and later,
 * with libarchive, which it loads at run time): asked once per process by making a tiny
 * filesystem from an empty tar in `scratch` (a directory of ours), which fails on 1.47.0 ("-" is
 * no directory) and where libarchive is missing. About 10 ms.
 */
export function mkfsReadsTar(scratch: string): Promise<boolean> {
  readsTar ??= (async () => {
    const dir = await fs.mkdtemp(path.join(scratch, 'mkfs-probe-'))
    try {
      const img = path.join(dir, 'probe.img')
      const args = ['-q', '-F', '-t', 'ext2', '-b', '1024', '-N', '16', '-d', '-', img, '128']
      // An empty archive: two zero blocks.
      const code = await runLogged('mkfs.ext4', args, toolEnv({ LC_ALL: 'C.UTF-8' }), path.join(dir, 'log'), Readable.from([Buffer.alloc(1024)]))
      return code === 0
    } catch (e) {
      if (e instanceof BaleError) throw e
      return false
    } finally {
      await fs.rm(dir, { recursive: true, force: true })
    }
  })()
  return readsTar
}

export interface DebugfsArgs {
  image: string
  script: string
  /** Open the image read-write (-w); read-only otherwise. */
  write: boolean
  timestamp: number
  log: string
}

/** Run the script; returns the exit status and the output lines (echoes and complaints, in order). */
export async function debugfs(a: DebugfsArgs): Promise<{ code: number; output: AsyncIterable<string> }> {
  // FAKE_TIME: mknod's inode times and crtime, and the superblock's write time on close.
  const env = withPreload(toolEnv({ E2FSPROGS_FAKE_TIME: String(a.timestamp) }), a.write ? noFsyncPreload() : undefined)
  const code = await runLogged('debugfs', [...(a.write ? ['-w'] : []), '-f', a.script, a.image], env, a.log)
  return { code, output: logLines(a.log) }
}

/** e2fsck's progress and summary lines, which are not complaints. */
const E2FSCK_NOISE = /^(e2fsck \d|Pass \d|\S+: \d+\/\d+ files)/

/** `e2fsck -fn`: a full read-only check; anything but exit 0 is E_TOOL with its first complaint. */
export async function e2fsck(image: string, log: string): Promise<void> {
  // Read-only, but its close fsyncs the image all the same (unix_io flushes on close): a
  // write-back of the whole fresh image, ~0.3 s of waiting here. Nothing to make durable.
  const code = await runLogged('e2fsck', ['-fn', image], withPreload(toolEnv({}), noFsyncPreload()), log)
  if (code !== 0) {
    const why = (await firstLine(log, (l) => !E2FSCK_NOISE.test(l))) ?? 'no message'
    throw new BaleError('E_TOOL', `e2fsck -fn ${image}: exit status ${code}: ${why}`, { subject: image })
  }
}
