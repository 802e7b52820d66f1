/**
 * When and how long to retry. Registries shed load with 429 (+ Retry-After) and 503, CDNs in
 * front of blob storage drop connections, and a registry restart shows up as 502/504 for a few
 * seconds. Those are worth retrying; 401/403/404 are not (nothing will change by waiting).
 */
export interface RetryPolicy {
  /** Tries per request, the first included. */
  readonly attempts: number
  /** First backoff; doubled for each further retry. */
  readonly baseMs: number
  /** Cap on one backoff. */
  readonly maxMs: number
  /** Longest Retry-After we honour; a registry asking for more makes the pull fail instead. */
  readonly maxRetryAfterMs: number
  /** ± fraction of random spread, so parallel layer downloads do not retry in lockstep. */
  readonly jitter: number
}

/**
 * 5 tries with waits of 0.25, 0.5, 1 and 2 s (≈3.75 s in all, ±20 %): enough to ride out a
 * dropped connection or a registry restart behind a load balancer, short enough that a registry
 * that is really down fails the build within seconds rather than minutes (ggcr's default is 3
 * tries at 1 s × 3ⁿ; we retry sooner because most of our faults are single dropped connections).
 * The 4 s cap only matters for policies with more attempts. Retry-After is honoured up to 60 s:
 * Docker Hub's anonymous rate limit asks for hours, and waiting that long silently in CI is worse
 * than failing with the registry's answer.
 */
export const DEFAULT_RETRY: RetryPolicy = Object.freeze({ attempts: 5, baseMs: 250, maxMs: 4000, maxRetryAfterMs: 60_000, jitter: 0.2 })

/** 429 and the 5xx that mean "try again" (501 Not Implemented and 505 never get better). */
const RETRYABLE_STATUS: ReadonlySet<number> = new Set([408, 429, 500, 502, 503, 504])

export function isRetryableStatus(status: number): boolean {
  return RETRYABLE_STATUS.has(status)
}

/** Backoff before retry number `retry` (1 = the first retry). `random` is injectable for tests. */
export function backoffDelay(policy: RetryPolicy, retry: number, random: () => number = Math.random): number {
  const raw = Math.min(policy.maxMs, policy.baseMs * 2 ** Math.max(0, retry - 1))
  const spread = 1 + policy.jitter * (2 * random() - 1)
  return Math.max(0, Math.round(raw * spread))
}

/**
 * Retry-After (RFC 9110 §10.2.3): delay-seconds or an HTTP-date. Returns milliseconds, or
 * undefined when absent or unparseable (then our own backoff applies).
 */
export function parseRetryAfter(value: string | undefined, now: number = Date.now()): number | undefined {
  if (value === undefined) return undefined
  const v = value.trim()
  if (/^\d+$/.test(v)) return Number(v) * 1000
  // An HTTP-date always names its day and month; without letters Date.parse would take '-1' as a year.
  const when = /[A-Za-z]/.test(v) ? Date.parse(v) : Number.NaN
  if (Number.isNaN(when)) return undefined
  return Math.max(0, when - now)
}

/**
 * Errors from the connection rather than the registry: worth another try. undici reports a
 * peer that hung up mid-response as UND_ERR_SOCKET and stalled transfers as the *_TIMEOUT codes.
 * ECONNREFUSED is left out on purpose: it almost always means a wrong host or port, and
 * retrying it only delays the message that says so.
 */
const TRANSIENT_CODES: ReadonlySet<string> = new Set([
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_RES_CONTENT_LENGTH_MISMATCH',
  'ERR_STREAM_PREMATURE_CLOSE',
])

/** The first `code` along an error's cause chain (undici wraps socket errors). */
export function errorCode(e: unknown): string | undefined {
  for (let cur: unknown = e, depth = 0; cur !== undefined && cur !== null && depth < 5; depth++) {
    if (typeof cur === 'object' && 'code' in cur && typeof (cur as { code: unknown }).code === 'string') return (cur as { code: string }).code
    cur = typeof cur === 'object' && 'cause' in cur ? (cur as { cause: unknown }).cause : undefined
  }
  return undefined
}

const PLAIN_WORDS: Record<string, string> = {
  ECONNRESET: 'connection reset',
  UND_ERR_SOCKET: 'connection closed mid-response',
  UND_ERR_CLOSED: 'connection closed',
  EPIPE: 'connection closed',
  ECONNREFUSED: 'connection refused',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'DNS lookup failed',
  ETIMEDOUT: 'timed out',
  UND_ERR_CONNECT_TIMEOUT: 'timed out connecting',
  UND_ERR_HEADERS_TIMEOUT: 'no response headers in time',
  UND_ERR_BODY_TIMEOUT: 'transfer stalled',
  UND_ERR_RES_CONTENT_LENGTH_MISMATCH: 'response shorter than its Content-Length',
  ENETUNREACH: 'network unreachable',
  EHOSTUNREACH: 'host unreachable',
}

/** A network error in words a user can act on, with its code: `connection reset (ECONNRESET)`. */
export function describeNetworkError(e: unknown): string {
  const code = errorCode(e)
  const words = code === undefined ? undefined : PLAIN_WORDS[code]
  if (words !== undefined) return `${words} (${code})`
  const msg = e instanceof Error && e.message !== '' ? e.message : String(e)
  return code === undefined || msg.includes(code) ? msg : `${msg} (${code})`
}

export function isTransientNetworkError(e: unknown): boolean {
  for (let cur: unknown = e, depth = 0; cur !== undefined && cur !== null && depth < 5; depth++) {
    if (typeof cur === 'object' && 'code' in cur && TRANSIENT_CODES.has(String((cur as { code: unknown }).code))) return true
    // undici's fetch-style "terminated" wraps the socket error as the cause.
    cur = typeof cur === 'object' && 'cause' in cur ? (cur as { cause: unknown }).cause : undefined
  }
  return false
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason)
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    const onAbort = (): void => {
      clearTimeout(t)
      reject(signal?.reason)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}
