import { BaleError } from '../../lib/errors.js'

/**
 * `--publish [IP:]HOST:GUEST[/tcp|/udp]`: a host port forwarded into the guest by QEMU's
 * user-mode network (slirp `hostfwd`). The host side binds to 127.0.0.1 unless an address is
 * given: a VM's ports should not appear on every interface of the machine by accident (the
 * opposite of `docker run -p`, on purpose).
 */
export type Protocol = 'tcp' | 'udp'

export interface PortMapping {
  readonly hostIp: string
  readonly hostPort: number
  readonly guestPort: number
  readonly protocol: Protocol
}

export const DEFAULT_HOST_IP = '127.0.0.1'

const PORT_MAX = 65535
const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/

function port(text: string, what: string, spec: string): number {
  if (!/^\d{1,5}$/.test(text)) {
    throw new BaleError('E_USAGE', `--publish ${spec}: ${what} port ${JSON.stringify(text)} is not a number`, { subject: spec })
  }
  const n = Number(text)
  if (n < 1 || n > PORT_MAX) {
    throw new BaleError('E_USAGE', `--publish ${spec}: ${what} port ${n} is outside 1-${PORT_MAX}`, { subject: spec })
  }
  return n
}

export function parsePublish(spec: string): PortMapping {
  let rest = spec.trim()
  let protocol: Protocol = 'tcp'
  const slash = rest.lastIndexOf('/')
  if (slash >= 0) {
    const p = rest.slice(slash + 1).toLowerCase()
    if (p !== 'tcp' && p !== 'udp') {
      throw new BaleError('E_USAGE', `--publish ${spec}: protocol ${JSON.stringify(p)} is not tcp or udp`, { subject: spec })
    }
    protocol = p
    rest = rest.slice(0, slash)
  }
  const parts = rest.split(':')
  let hostIp = DEFAULT_HOST_IP
  let hostText: string
  let guestText: string
  if (parts.length === 2) {
    ;[hostText, guestText] = parts as [string, string]
  } else if (parts.length === 3) {
    const [ip, h, g] = parts as [string, string, string]
    if (!IPV4_RE.test(ip)) {
      throw new BaleError('E_USAGE', `--publish ${spec}: host address ${JSON.stringify(ip)} is not an IPv4 address`, { subject: spec })
    }
    hostIp = ip
    hostText = h
    guestText = g
  } else {
    throw new BaleError('E_USAGE', `--publish ${spec}: expected [IP:]HOST:GUEST[/tcp|/udp], e.g. 8080:80`, { subject: spec })
  }
  return Object.freeze({ hostIp, hostPort: port(hostText, 'host', spec), guestPort: port(guestText, 'guest', spec), protocol })
}

/** Parse every `--publish`, refusing two mappings of the same host address, port and protocol. */
export function parsePublishes(specs: readonly string[]): readonly PortMapping[] {
  const seen = new Map<string, string>()
  const out: PortMapping[] = []
  for (const spec of specs) {
    const m = parsePublish(spec)
    const key = `${m.protocol}:${m.hostIp}:${m.hostPort}`
    const prev = seen.get(key)
    if (prev !== undefined) {
      throw new BaleError('E_USAGE', `--publish ${spec}: host port ${m.hostIp}:${m.hostPort}/${m.protocol} is already published by ${prev}`, { subject: spec })
    }
    seen.set(key, spec)
    out.push(m)
  }
  return Object.freeze(out)
}

/** The `hostfwd=` value of QEMU's `-netdev user` for one mapping. */
export function hostfwd(m: PortMapping): string {
  // Guest address left empty: slirp forwards to the guest's DHCP/static address (10.0.2.15).
  return `${m.protocol}:${m.hostIp}:${m.hostPort}-:${m.guestPort}`
}

export function formatMapping(m: PortMapping): string {
  return `${m.hostIp}:${m.hostPort}->${m.guestPort}/${m.protocol}`
}
