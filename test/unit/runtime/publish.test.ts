import { describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import { formatMapping, hostfwd, parsePublish, parsePublishes } from '../../../src/runtime/net/publish.js'

describe('--publish parsing', () => {
  it('HOST:GUEST binds the host side to 127.0.0.1, tcp', () => {
    expect(parsePublish('8080:80')).toEqual({ hostIp: '127.0.0.1', hostPort: 8080, guestPort: 80, protocol: 'tcp' })
  })

  it('takes /tcp and /udp, and an explicit IPv4 host address', () => {
    expect(parsePublish('5353:53/udp')).toMatchObject({ hostPort: 5353, guestPort: 53, protocol: 'udp' })
    expect(parsePublish('0.0.0.0:9000:9000/tcp')).toMatchObject({ hostIp: '0.0.0.0', hostPort: 9000, protocol: 'tcp' })
  })

  it.each([
    ['8080', /expected \[IP:\]HOST:GUEST/],
    ['a:80', /host port "a" is not a number/],
    ['80:b', /guest port "b" is not a number/],
    ['0:80', /host port 0 is outside 1-65535/],
    ['80:65536', /guest port 65536 is outside/],
    ['80:80/sctp', /protocol "sctp" is not tcp or udp/],
    ['localhost:80:80', /host address "localhost" is not an IPv4 address/],
    ['1.2.3.4:5:6:7', /expected/],
    ['-1:80', /not a number/],
  ])('refuses %s with a one-line usage error naming it', (spec, msg) => {
    const err = (() => {
      try {
        parsePublish(spec)
      } catch (e) {
        return e
      }
      return undefined
    })()
    expect(err).toBeInstanceOf(BaleError)
    expect((err as BaleError).code).toBe('E_USAGE')
    expect((err as BaleError).message).toMatch(msg)
    expect((err as BaleError).message).toContain(spec)
    expect((err as BaleError).message).not.toContain('\n')
  })

  it('refuses the same host port twice, naming both specs', () => {
    expect(() => parsePublishes(['8080:80', '127.0.0.1:8080:81'])).toThrow(/8080:81.*already published by 8080:80/)
    // Same port number, other protocol or other address: fine.
    expect(parsePublishes(['8080:80', '8080:80/udp', '127.0.0.2:8080:80'])).toHaveLength(3)
  })

  it('renders the hostfwd rule QEMU user networking takes, and the ls form', () => {
    const m = parsePublish('18080:8080')
    expect(hostfwd(m)).toBe('tcp:127.0.0.1:18080-:8080')
    expect(formatMapping(m)).toBe('127.0.0.1:18080->8080/tcp')
    expect(hostfwd(parsePublish('0.0.0.0:53:53/udp'))).toBe('udp:0.0.0.0:53-:53')
  })

  it('returns frozen mappings (options are resolved once, immutable)', () => {
    const all = parsePublishes(['1:2'])
    expect(Object.isFrozen(all)).toBe(true)
    expect(Object.isFrozen(all[0])).toBe(true)
  })
})
