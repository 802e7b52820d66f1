import { describe, expect, it } from 'vitest'
import { parsePublishes } from '../../../src/runtime/net/publish.js'
import { buildQemuArgv, KERNEL_CMDLINE_MAX, kernelCmdline, QEMU_BINARY, type QemuSpec } from '../../../src/runtime/vmm/argv.js'

const spec = (over: Partial<QemuSpec> = {}): QemuSpec => ({
  id: '0123456789ab',
  accel: 'tcg',
  cpus: 2,
  memoryMiB: 512,
  vmlinux: '/k/vmlinux',
  initramfs: '/k/initramfs.cpio.gz',
  overlay: '/vms/web/overlay.qcow2',
  agentSockets: ['/vms/web/agent.sock', '/vms/web/agent.1.sock'],
  qmpSocket: '/vms/web/qmp.sock',
  consoleLog: '/vms/web/console.log',
  ports: parsePublishes(['18080:8080', '5353:53/udp']),
  cmdline: 'console=ttyS0',
  ...over,
})

/** The value following `flag` (every occurrence). */
function values(argv: string[], flag: string): string[] {
  return argv.flatMap((a, i) => (a === flag && argv[i + 1] !== undefined ? [argv[i + 1]!] : []))
}

describe('QEMU argv', () => {
  it('carries the VM id as an argument of its own, so pgrep -f <id> finds exactly this VM', () => {
    const argv = buildQemuArgv(spec())
    expect(argv[0]).toBe(QEMU_BINARY)
    expect(values(argv, '-name')).toEqual(['bale-0123456789ab'])
    expect(argv.filter((a) => a.includes('0123456789ab'))).toEqual(['bale-0123456789ab'])
  })

  it('boots microvm without firmware, PIT or PIC, with the RTC, and no defaults', () => {
    const argv = buildQemuArgv(spec())
    expect(values(argv, '-M')).toEqual(['microvm,x-option-roms=off,pit=off,pic=off,rtc=on,isa-serial=on'])
    for (const f of ['-nodefaults', '-no-user-config', '-nographic', '-no-reboot']) expect(argv).toContain(f)
    expect(values(argv, '-kernel')).toEqual(['/k/vmlinux'])
    expect(values(argv, '-initrd')).toEqual(['/k/initramfs.cpio.gz'])
    expect(values(argv, '-append')).toEqual(['console=ttyS0'])
    expect(values(argv, '-smp')).toEqual(['2'])
    expect(values(argv, '-m')).toEqual(['512M'])
  })

  it('-cpu host with KVM, -cpu max with TCG', () => {
    expect(values(buildQemuArgv(spec({ accel: 'kvm' })), '-cpu')).toEqual(['host'])
    expect(values(buildQemuArgv(spec({ accel: 'kvm' })), '-accel')).toEqual(['kvm'])
    expect(values(buildQemuArgv(spec()), '-cpu')).toEqual(['max'])
    expect(values(buildQemuArgv(spec()), '-accel')).toEqual(['tcg'])
  })

  it('wires the overlay, user networking with every hostfwd, rng, the agent port, console log and QMP', () => {
    const argv = buildQemuArgv(spec())
    expect(values(argv, '-drive')).toEqual(['id=root,file=/vms/web/overlay.qcow2,format=qcow2,if=none,discard=unmap'])
    expect(values(argv, '-netdev')).toEqual(['user,id=net0,hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=udp:127.0.0.1:5353-:53'])
    expect(values(argv, '-device')).toEqual([
      'virtio-blk-device,drive=root',
      'virtio-net-device,netdev=net0',
      'virtio-rng-device',
      // Port 0 is QEMU's console port: two agent channels need three.
      'virtio-serial-device,max_ports=3',
      'virtserialport,chardev=agent0,name=org.bale.agent',
      'virtserialport,chardev=agent1,name=org.bale.agent.1',
    ])
    expect(values(argv, '-chardev')).toEqual([
      'socket,id=agent0,path=/vms/web/agent.sock,server=on,wait=off',
      'socket,id=agent1,path=/vms/web/agent.1.sock,server=on,wait=off',
      'file,id=console,path=/vms/web/console.log',
    ])
    expect(values(argv, '-serial')).toEqual(['chardev:console'])
    expect(values(argv, '-qmp')).toEqual(['unix:/vms/web/qmp.sock,server=on,wait=off'])
  })

  it('no ports: a bare user netdev', () => {
    expect(values(buildQemuArgv(spec({ ports: [] })), '-netdev')).toEqual(['user,id=net0'])
  })

  it('is a pure function of the spec (the recorded argv is the identity)', () => {
    expect(buildQemuArgv(spec())).toEqual(buildQemuArgv(spec()))
  })

  it('refuses socket paths longer than sun_path, naming the data dir fix', () => {
    const long = `/${'d'.repeat(100)}/agent.sock`
    expect(() => buildQemuArgv(spec({ agentSockets: ['/a.sock', long] }))).toThrow(/longer than a unix socket path may be.*BALE_DATA_DIR/)
  })

  it('refuses a comma in any path (QEMU option syntax)', () => {
    expect(() => buildQemuArgv(spec({ overlay: '/a,b/overlay.qcow2' }))).toThrow(/a ',' in a path/)
    expect(() => buildQemuArgv(spec({ qmpSocket: '/a,b/q.sock' }))).toThrow(/','/)
  })
})

describe('kernel command line', () => {
  it('has the root disk, quiet console and panic=-1; tsc_early_khz only under TCG', () => {
    const tcg = kernelCmdline({ accel: 'tcg', hostname: 'web', tscKhz: 2445406 })
    expect(tcg.split(' ')).toEqual(['console=ttyS0', 'root=/dev/vda', 'rw', 'quiet', 'panic=-1', 'cryptomgr.notests', 'tsc_early_khz=2445406', 'bale.hostname=web'])
    expect(kernelCmdline({ accel: 'kvm', hostname: 'web', tscKhz: 2445406 })).not.toContain('tsc_early_khz')
  })

  it('makes the VM name a valid host name, or leaves it to the image', () => {
    expect(kernelCmdline({ accel: 'kvm', hostname: 'my_vm.1' })).toContain('bale.hostname=my-vm-1')
    expect(kernelCmdline({ accel: 'kvm', hostname: '___' })).not.toContain('bale.hostname')
  })

  it('passes -e/--entrypoint/-- CMD as one base64url token of the config overlay stage 2 reads', () => {
    const run = { entrypoint: ['/bin/sh'], cmd: ['-c', 'echo "a b" && exit 3'], env: ['K=v w'] }
    const line = kernelCmdline({ accel: 'kvm', hostname: 'web', run })
    const token = line.split(' ').find((t) => t.startsWith('bale.run='))!
    expect(JSON.parse(Buffer.from(token.slice('bale.run='.length), 'base64url').toString('utf8'))).toEqual(run)
    expect(line.split(' ').filter((t) => t.startsWith('bale.run='))).toHaveLength(1)
  })

  it('cmdline-truncation trap: refuses a command line the kernel would cut, instead of booting a broken bale.run', () => {
    const run = { cmd: ['x'.repeat(KERNEL_CMDLINE_MAX)] }
    expect(() => kernelCmdline({ accel: 'kvm', hostname: 'web', run })).toThrow(/over the kernel's 2047.*bale runtime exec/)
  })
})

describe('publish conflicts', () => {
  it('QEMU\'s hostfwd failure is reported as the --publish flag that asked for it', async () => {
    const { publishConflict } = await import('../../../src/runtime/vmm/boot.js')
    const ports = parsePublishes(['18181:8080'])
    const e = publishConflict("qemu-system-x86_64: -netdev user,id=net0,hostfwd=tcp:127.0.0.1:18181-:8080: Could not set up host forwarding rule 'tcp:127.0.0.1:18181-:8080'", ports)
    expect(e?.message).toBe('--publish 127.0.0.1:18181:8080/tcp: host port 127.0.0.1:18181/tcp cannot be bound (already in use?)')
    expect(publishConflict('qemu-system-x86_64: something else', ports)).toBeUndefined()
  })
})
