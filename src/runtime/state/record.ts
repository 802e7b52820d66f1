import { promises as fs } from 'node:fs'
import { z } from 'zod'
import { writeFileAtomic } from '../../lib/atomic.js'
import { BaleError } from '../../lib/errors.js'

/**
 * vm.json: everything bale knows about one VM (docs/runtime-state.md). snake_case like the
 * bundle manifest and kernel.json. Written atomically (temp + rename) so a reader never sees a
 * torn record, and only by a process holding the VM's lock.
 */
export const RECORD_SCHEMA_VERSION = 1

export const VM_STATUSES = ['starting', 'running', 'stopped'] as const
export type VmStatus = (typeof VM_STATUSES)[number]

const portSchema = z.object({
  host_ip: z.string(),
  host_port: z.number().int().min(1).max(65535),
  guest_port: z.number().int().min(1).max(65535),
  protocol: z.enum(['tcp', 'udp']),
})

export const vmRecordSchema = z.object({
  schema_version: z.literal(RECORD_SCHEMA_VERSION),
  name: z.string(),
  /** Random hex; appears in QEMU's argv as `bale-<id>`. */
  id: z.string().regex(/^[0-9a-f]{12,64}$/),
  created: z.string(),
  status: z.enum(VM_STATUSES),
  bundle: z.object({
    path: z.string(),
    /** sha256 of the bundle file as booted. */
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    name: z.string(),
    version: z.string(),
    /** The rootfs digest: names the read-only base image under imagesDir(). */
    rootfs_sha256: z.string().regex(/^[0-9a-f]{64}$/),
  }),
  kernel: z.object({ ref: z.string(), vmlinux: z.string(), initramfs: z.string() }),
  accel: z.enum(['kvm', 'tcg']),
  cpus: z.number().int().positive(),
  memory_mib: z.number().int().positive(),
  ports: z.array(portSchema),
  /** The exact argv QEMU was started with; with pid and start_time, its identity. */
  argv: z.array(z.string()),
  /** null between writing the record and the spawn returning (a crash there is recovered by argv). */
  pid: z.number().int().positive().nullable(),
  /** /proc/PID/stat field 22 (clock ticks after boot), a decimal string. */
  start_time: z.string().regex(/^\d+$/).nullable(),
  /** Set once stopped: when, and the entrypoint's exit code if the guest reported one. */
  stopped_at: z.string().nullable(),
  exit_code: z.number().int().nullable(),
})

export type VmRecord = z.infer<typeof vmRecordSchema>

export async function readRecord(file: string): Promise<VmRecord> {
  let raw: unknown
  try {
    raw = JSON.parse(await fs.readFile(file, 'utf8'))
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new BaleError('E_NOT_FOUND', `${file}: no such file`, { subject: file, cause: e })
    throw new BaleError('E_STATE', `${file}: unreadable (${e instanceof Error ? e.message : String(e)})`, { subject: file, cause: e })
  }
  const r = vmRecordSchema.safeParse(raw)
  if (!r.success) {
    const issue = r.error.issues[0]
    const field = issue && issue.path.length > 0 ? issue.path.join('.') : '(top level)'
    throw new BaleError('E_STATE', `${file}: ${field}: ${issue?.message ?? 'invalid'}`, { subject: file })
  }
  return r.data
}

export async function writeRecord(file: string, rec: VmRecord): Promise<void> {
  const checked = vmRecordSchema.parse(rec)
  await writeFileAtomic(file, `${JSON.stringify(checked, null, 2)}\n`, 0o644)
}
