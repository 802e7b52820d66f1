/**
 * Typed errors with a stable `code`. Every failure a user can cause or meet is a BaleError;
 * BaseCommand maps the code to an exit status and to the `--json` error envelope in one place.
 * Anything that is not a BaleError is a bug and is reported with its stack.
 */
export const ERROR_CODES = {
  /** Bad flags or arguments. */
  E_USAGE: 2,
  /** Input that is malformed: a bad tar, manifest, config, reference. */
  E_INPUT: 3,
  /** Bytes that do not match the digest or size that described them. */
  E_DIGEST: 4,
  /** An archive path that would escape the image or that debugfs cannot encode. */
  E_UNSAFE_PATH: 5,
  /** Something asked for does not exist (file, image, tag, VM, kernel). */
  E_NOT_FOUND: 6,
  /** An external tool (mkfs.ext4, debugfs, e2fsck, qemu) failed or reported an error. */
  E_TOOL: 7,
  /** Network trouble: connection refused/reset, 5xx after retries. */
  E_NETWORK: 8,
  /** Registry refused the credentials (401/403). */
  E_AUTH: 9,
  /** Runtime state is inconsistent or an operation is not valid in this state. */
  E_STATE: 10,
  /** The VM or guest agent failed (boot timeout, agent gone, protocol error). */
  E_VM: 11,
  /** Interrupted by a signal; partial output was removed. */
  E_INTERRUPTED: 130,
} as const

export type ErrorCode = keyof typeof ERROR_CODES

export interface BaleErrorOptions {
  /** The offending path, digest, flag or reference, shown to the user. */
  subject?: string
  cause?: unknown
  /** Transient errors may be retried (network resets, 429, 5xx). */
  temporary?: boolean
}

export class BaleError extends Error {
  readonly code: ErrorCode
  readonly subject?: string
  readonly temporary: boolean

  constructor(code: ErrorCode, message: string, opts: BaleErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = 'BaleError'
    this.code = code
    this.subject = opts.subject
    this.temporary = opts.temporary ?? false
  }

  get exitCode(): number {
    return ERROR_CODES[this.code]
  }
}

export function isBaleError(e: unknown): e is BaleError {
  return e instanceof BaleError
}

/** Node's system errors (ENOENT, EACCES, …) carry a code and a path; turn the common ones into BaleErrors. */
export function fromSystemError(e: unknown, what: string): BaleError | undefined {
  if (!(e instanceof Error) || !('code' in e)) return undefined
  const sys = e as NodeJS.ErrnoException
  const where = sys.path ?? what
  switch (sys.code) {
    case 'ENOENT':
      return new BaleError('E_NOT_FOUND', `${where}: no such file or directory`, { subject: where, cause: e })
    case 'EACCES':
    case 'EPERM':
      return new BaleError('E_INPUT', `${where}: permission denied`, { subject: where, cause: e })
    case 'EISDIR':
      return new BaleError('E_INPUT', `${where}: is a directory`, { subject: where, cause: e })
    case 'ENOTDIR':
      return new BaleError('E_INPUT', `${where}: not a directory`, { subject: where, cause: e })
    case 'ENOSPC':
      return new BaleError('E_TOOL', `${where}: no space left on device`, { subject: where, cause: e })
    default:
      return undefined
  }
}
