import { describe, expect, it } from 'vitest'
import {
  backoffDelay,
  DEFAULT_RETRY,
  isRetryableStatus,
  isTransientNetworkError,
  parseRetryAfter,
  sleep,
} from '../../../src/registry/retry.js'

describe('retry policy', () => {
  it('doubles from 250 ms, capped at 4 s, ±20 % jitter', () => {
    const mid = (): number => 0.5 // no jitter
    expect([1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(DEFAULT_RETRY, n, mid))).toEqual([250, 500, 1000, 2000, 4000, 4000, 4000])
    expect(backoffDelay(DEFAULT_RETRY, 1, () => 0)).toBe(200)
    expect(backoffDelay(DEFAULT_RETRY, 1, () => 1)).toBe(300)
    expect(backoffDelay(DEFAULT_RETRY, 10, () => 1)).toBe(4800)
  })

  it('the default policy waits under 5 s in all before giving up', () => {
    let total = 0
    for (let retry = 1; retry < DEFAULT_RETRY.attempts; retry++) total += backoffDelay(DEFAULT_RETRY, retry, () => 1)
    expect(DEFAULT_RETRY.attempts).toBe(5)
    expect(total).toBe(4500)
  })

  it.each([
    [408, true],
    [429, true],
    [500, true],
    [502, true],
    [503, true],
    [504, true],
    [400, false],
    [401, false],
    [403, false],
    [404, false],
    [416, false],
    [501, false],
    [505, false],
  ])('status %d retryable: %s', (status, retry) => {
    expect(isRetryableStatus(status)).toBe(retry)
  })

  it('reads Retry-After as seconds or an HTTP date', () => {
    const now = Date.parse('2026-01-01T00:00:00Z')
    expect(parseRetryAfter('2', now)).toBe(2000)
    expect(parseRetryAfter(' 0 ', now)).toBe(0)
    expect(parseRetryAfter('Thu, 01 Jan 2026 00:00:05 GMT', now)).toBe(5000)
    expect(parseRetryAfter('Wed, 31 Dec 2025 23:00:00 GMT', now)).toBe(0) // in the past: now
    expect(parseRetryAfter('soon', now)).toBeUndefined()
    expect(parseRetryAfter('-1', now)).toBeUndefined()
    expect(parseRetryAfter(undefined, now)).toBeUndefined()
  })

  it('connection resets and timeouts are transient, refusals and unknown errors are not', () => {
    const err = (code: string, cause?: unknown): Error => Object.assign(new Error(code), { code, ...(cause === undefined ? {} : { cause }) })
    expect(isTransientNetworkError(err('ECONNRESET'))).toBe(true)
    expect(isTransientNetworkError(err('UND_ERR_SOCKET'))).toBe(true)
    expect(isTransientNetworkError(err('UND_ERR_BODY_TIMEOUT'))).toBe(true)
    // undici's fetch-style wrapper: the code is on the cause
    expect(isTransientNetworkError(new TypeError('terminated', { cause: err('ECONNRESET') }))).toBe(true)
    expect(isTransientNetworkError(err('ECONNREFUSED'))).toBe(false)
    expect(isTransientNetworkError(err('ENOTFOUND'))).toBe(false)
    expect(isTransientNetworkError(new Error('boom'))).toBe(false)
    expect(isTransientNetworkError('ECONNRESET')).toBe(false)
  })

  it('sleep stops early when aborted', async () => {
    const ac = new AbortController()
    const t0 = Date.now()
    const p = sleep(10_000, ac.signal)
    ac.abort(new Error('stop'))
    await expect(p).rejects.toThrow('stop')
    expect(Date.now() - t0).toBeLessThan(1000)
  })
})
