/**
 * bale-init as PID 1, without a VM: `unshare` gives it a private PID, mount, UTS, network and
 * IPC namespace and a chroot holding a tiny busybox image, so stage 2 does everything it does in
 * the VM (mounts, hostname, /etc files, lo, reaping, signal forwarding, the shutdown sequence)
 * against throwaway namespaces. Stage 1 runs the same way from a tmpfs "initramfs" onto a loop
 * device holding an ext4 image built with mkfs.ext4 -d.
 */
import { execFile } from 'node:child_process'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { waitForAgent, type AgentClient } from '../../src/runtime/agent/index.js'
import { GUEST_BUILT, buildGuest, collect, run, tempDir, waitForPath, type Running } from '../unit/agent/guest-harness.js'

const execFileP = promisify(execFile)

const APPLETS = ['sh', 'echo', 'id', 'pwd', 'env', 'sleep', 'cat', 'ls', 'hostname', 'ip', 'true', 'grep', 'test', '[']

let base: string

interface ImageConfig {
  entrypoint?: string[]
  cmd?: string[]
  env?: string[]
  user?: string
  workdir?: string
  hostname?: string
}

/** A busybox image with a user `app` (1000:1000, also in group `extra` 2000) and the static bale-init
 * (always the built one: a sanitizer build is dynamic and cannot run in this image). */
async function makeRoot(name: string, config: ImageConfig): Promise<string> {
  const root = path.join(base, name)
  for (const d of ['bin', 'etc', 'tmp', '.bale']) await fs.mkdir(path.join(root, d), { recursive: true })
  await fs.copyFile('/bin/busybox', path.join(root, 'bin', 'busybox'))
  await fs.chmod(path.join(root, 'bin', 'busybox'), 0o755)
  for (const a of APPLETS) await fs.symlink('busybox', path.join(root, 'bin', a))
  await fs.writeFile(path.join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n')
  await fs.writeFile(path.join(root, 'etc', 'group'), 'root:x:0:\napp:x:1000:\nextra:x:2000:app\n')
  await fs.copyFile(GUEST_BUILT, path.join(root, '.bale', 'init'))
  await fs.chmod(path.join(root, '.bale', 'init'), 0o755)
  await fs.writeFile(path.join(root, '.bale', 'config.json'), JSON.stringify(config))
  return root
}

const NAMESPACES = ['--fork', '--pid', '--mount', '--uts', '--net', '--ipc']

/** Stage 2 as PID 1 of fresh namespaces, chrooted into `root`. */
function stage2(root: string, opts: { cmdline?: string; poweroff?: boolean } = {}): Running {
  return run('unshare', [
    ...NAMESPACES,
    `--root=${root}`,
    '/.bale/init',
    '--agent-listen',
    '/.bale/agent.sock',
    '--console',
    '-',
    '--cmdline',
    opts.cmdline ?? '',
    ...(opts.poweroff ? [] : ['--no-poweroff']),
  ])
}

/** The host pid of the namespace's PID 1 (unshare --fork's only child). */
async function nsInit(r: Running): Promise<number> {
  const pid = r.proc.pid
  if (pid === undefined) throw new Error('unshare did not start')
  for (let i = 0; i < 500; i++) {
    const kids = await fs.readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '')
    const first = Number(kids.trim().split(/\s+/)[0])
    if (first > 0) return first
    await new Promise((res) => setTimeout(res, 10))
  }
  throw new Error(`unshare ${pid} has no child; output: ${r.output()}`)
}

async function connect(socket: string, r: Running): Promise<AgentClient> {
  await waitForPath(socket, 10_000, r)
  return waitForAgent(socket, 10_000)
}

beforeAll(async () => {
  await buildGuest()
  base = await tempDir('pid1')
})

afterAll(async () => {
  if (base) await fs.rm(base, { recursive: true, force: true })
})

describe('stage 2 as PID 1', () => {
  it('runs the entrypoint with the config env, workdir, user and hostname, and reports exit status 3', async () => {
    const root = await makeRoot('main3', {
      entrypoint: ['/bin/sh', '-c'],
      cmd: ['while [ ! -e /tmp/go ]; do sleep 0.02; done; echo "GREETING=$GREETING"; pwd; id -u; id -G; hostname; exit 3'],
      env: ['GREETING=hello world', 'PATH=/bin'],
      user: 'app',
      workdir: '/work',
      hostname: 'cfghost',
    })
    const r = stage2(root, { cmdline: 'bale.hostname=vmhost' })
    const c = await connect(path.join(root, '.bale', 'agent.sock'), r)
    try {
      expect(c.hello.mainPid).toBe(2)
      expect(c.hello.mainExit).toBeNull()
      // What stage 2 set up, seen from inside.
      const hosts = (await c.readFile('/etc/hosts')).toString()
      expect(hosts).toContain('127.0.0.1\tlocalhost')
      expect(hosts).toMatch(/\tvmhost\n/)
      expect((await c.readFile('/etc/resolv.conf')).toString()).toBe('nameserver 10.0.2.3\n')
      const lo = await c.exec({ argv: ['ip', 'addr', 'show', 'lo'] })
      expect((await collect(lo.stdout)).toString()).toContain('inet 127.0.0.1/8')
      const mounts = (await c.readFile('/proc/self/mounts')).toString()
      for (const m of [' /proc proc ', ' /sys sysfs ', ' /dev devtmpfs ', ' /dev/pts devpts ', ' /dev/shm tmpfs ', ' /run tmpfs ']) expect(mounts).toContain(m)
      await c.writeFile('/tmp/go', Buffer.alloc(0))
      expect(await c.mainExit).toEqual({ exitCode: 3, signal: null })
    } finally {
      c.close()
    }
    expect(await r.exited).toEqual({ code: 3, signal: null })
    expect(r.output()).toContain('GREETING=hello world\n/work\n1000\n1000 2000\nvmhost\n')
    expect(r.output()).toContain('bale-init: exit status 3\n')
    expect(r.output()).toContain('bale-init: eth0: no such device; only loopback networking\n')
  })

  it('powers off at the end (in a PID namespace, reboot(POWER_OFF) kills its init with SIGINT)', async () => {
    const root = await makeRoot('poweroff', { entrypoint: ['/bin/sh', '-c', 'echo bye'] })
    const r = stage2(root, { poweroff: true })
    expect(await r.exited).toEqual({ code: null, signal: 'SIGINT' })
    expect(r.output()).toContain('bye\nbale-init: exit status 0\n')
  })

  it('forwards SIGTERM to the main process and reports death by signal', async () => {
    const root = await makeRoot('sigterm', { entrypoint: ['/bin/sleep', '1000'] })
    const r = stage2(root)
    const c = await connect(path.join(root, '.bale', 'agent.sock'), r)
    try {
      process.kill(await nsInit(r), 'SIGTERM')
      expect(await c.mainExit).toEqual({ exitCode: null, signal: 'SIGTERM' })
    } finally {
      c.close()
    }
    expect(await r.exited).toEqual({ code: 143, signal: null })
    expect(r.output()).toContain('bale-init: signal 15\n')
  })

  it('reaps orphans without stealing the exit status of execs, then stops on SHUTDOWN', async () => {
    const root = await makeRoot('reap', { entrypoint: ['/bin/sleep', '1000'] })
    const r = stage2(root)
    const c = await connect(path.join(root, '.bale', 'agent.sock'), r)
    try {
      // Each exec leaves orphans that exit (with 9) around the time the execs themselves exit:
      // PID 1 reaps them all, and every exec still gets its own status.
      const statuses = await Promise.all(
        Array.from({ length: 8 }, async (_, i) => {
          const s = await c.exec({ argv: ['sh', '-c', `(sleep 0.1; exit 9) & (sleep 0.1; exit 9) & sleep 0.1; exit ${10 + i}`] })
          return (await s.wait()).exitCode
        }),
      )
      expect(statuses).toEqual(Array.from({ length: 8 }, (_, i) => 10 + i))
      await new Promise((res) => setTimeout(res, 400))
      const ps = await c.exec({ argv: ['sh', '-c', 'cat /proc/[0-9]*/stat'] })
      const states = (await collect(ps.stdout))
        .toString()
        .split('\n')
        .filter(Boolean)
        .map((l) => /\) (\S) /.exec(l)?.[1])
      expect(states.length).toBeGreaterThan(1)
      expect(states).not.toContain('Z')
      await c.shutdown({ timeoutMs: 2000 })
      expect(await c.mainExit).toEqual({ exitCode: null, signal: 'SIGTERM' })
    } finally {
      c.close()
    }
    expect(await r.exited).toEqual({ code: 143, signal: null })
  })

  it('kills a main process that ignores TERM once the shutdown timeout is over', async () => {
    const root = await makeRoot('stubborn', { entrypoint: ['/bin/sh', '-c', 'trap "" TERM; echo ignoring-TERM; while true; do sleep 1; done'] })
    const r = stage2(root)
    const c = await connect(path.join(root, '.bale', 'agent.sock'), r)
    try {
      // The shutdown's TERM must come after the shell has set its trap, or it simply dies of it.
      for (let i = 0; !r.output().includes('ignoring-TERM\n'); i++) {
        if (i > 500) throw new Error(`the entrypoint never set its trap; output: ${r.output()}`)
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
      const t0 = Date.now()
      await c.shutdown({ timeoutMs: 300 })
      expect(await c.mainExit).toEqual({ exitCode: null, signal: 'SIGKILL' })
      expect(Date.now() - t0).toBeGreaterThanOrEqual(250)
    } finally {
      c.close()
    }
    expect(await r.exited).toEqual({ code: 137, signal: null })
  })

  it('exits 127 with a console message when the entrypoint does not exist', async () => {
    const root = await makeRoot('missing', { entrypoint: ['/app/server'], cmd: ['--port', '80'] })
    const r = stage2(root)
    expect(await r.exited).toEqual({ code: 127, signal: null })
    expect(r.output()).toContain('bale-init: exec /app/server: No such file or directory\nbale-init: exit status 127\n')
  })

  it('exits 126 with a console message when the entrypoint cannot be executed', async () => {
    const root = await makeRoot('noexec', { entrypoint: ['/app.sh'] })
    await fs.writeFile(path.join(root, 'app.sh'), '#!/bin/sh\necho never\n', { mode: 0o644 })
    const r = stage2(root)
    expect(await r.exited).toEqual({ code: 126, signal: null })
    expect(r.output()).toContain('bale-init: exec /app.sh: Permission denied\nbale-init: exit status 126\n')
  })

  it('applies a bale.run overlay from the command line over the image config', async () => {
    const root = await makeRoot('overlay', { entrypoint: ['/bin/sh', '-c'], cmd: ['echo image'], env: ['A=image', 'B=image'] })
    const overlay = Buffer.from(JSON.stringify({ cmd: ['echo "A=$A B=$B"; exit 5'], env: ['A=run'] })).toString('base64url')
    const r = stage2(root, { cmdline: `bale.run=${overlay}` })
    expect(await r.exited).toEqual({ code: 5, signal: null })
    expect(r.output()).toContain('A=run B=image\n')
  })

  it('refuses a malformed config with exit status 126 and a message naming it', async () => {
    const root = await makeRoot('badconfig', {})
    await fs.writeFile(path.join(root, '.bale', 'config.json'), '{"entrypoint": "not an array"}')
    const r = stage2(root)
    expect(await r.exited).toEqual({ code: 126, signal: null })
    expect(r.output()).toContain('bale-init: /.bale/config.json: "entrypoint": expected an array of strings\n')
  })
})

describe('stage 1 as PID 1', () => {
  let image: string
  let loop = ''

  beforeAll(async () => {
    const root = await makeRoot('s1root', {
      entrypoint: ['/bin/sh', '-c', 'while [ ! -e /tmp/go ]; do sleep 0.02; done; echo "in the image as $(id -u) on $(hostname)"; exit 7'],
    })
    image = path.join(base, 'root.ext4')
    // 32 MiB: busybox and bale-init with room to spare; mkfs.ext4 -d is how bundles are built.
    await execFileP('mkfs.ext4', ['-q', '-F', '-d', root, image, '32M'])
    loop = (await execFileP('losetup', ['--find', '--show', image])).stdout.trim()
  })

  afterAll(async () => {
    if (loop) await execFileP('losetup', ['-d', loop])
  })

  /** A tmpfs "initramfs" holding only /init, chrooted into as PID 1 of fresh namespaces. */
  function stage1(cmdline: string): Running {
    const ir = path.join(base, `initramfs-${Math.random().toString(36).slice(2)}`)
    const script = `set -e; mkdir -p ${ir}; mount -t tmpfs tmpfs ${ir}; cp ${GUEST_BUILT} ${ir}/init; exec chroot ${ir} /init --stage1 --cmdline "$0" --agent-listen /.bale/agent.sock --console - --no-poweroff`
    return run('unshare', [...NAMESPACES, 'sh', '-c', script, cmdline])
  }

  it('mounts the root device, switches root and execs stage 2 from the image', async () => {
    const r = stage1(`root=${loop} rootfstype=ext4 rw bale.hostname=s1host`)
    const init = await nsInit(r)
    // The image is mounted only inside the namespace: reach its socket through PID 1's root.
    const c = await connect(`/proc/${init}/root/.bale/agent.sock`, r)
    try {
      // The initramfs is gone and / is the ext4 image.
      const ls = await c.exec({ argv: ['ls', '-a', '/'] })
      const entries = (await collect(ls.stdout)).toString().split('\n')
      expect(entries).toContain('.bale')
      expect(entries).not.toContain('init')
      expect(entries).not.toContain('newroot')
      expect((await c.readFile('/proc/self/mounts')).toString()).toMatch(new RegExp(`^${loop} / ext4 rw`, 'm'))
      await c.writeFile('/tmp/go', Buffer.alloc(0))
      expect(await c.mainExit).toEqual({ exitCode: 7, signal: null })
    } finally {
      c.close()
    }
    expect(await r.exited).toEqual({ code: 7, signal: null })
    expect(r.output()).toContain('in the image as 0 on s1host\nbale-init: exit status 7\n')
  })

  it('fails with one console line and powers off when the root device is wrong', async () => {
    const r = stage1('root=/dev/null')
    expect(await r.exited).toEqual({ code: null, signal: 'SIGINT' })
    expect(r.output()).toBe('bale-init: stage 1: root device /dev/null is not a block device; powering off\n')
  })
})
