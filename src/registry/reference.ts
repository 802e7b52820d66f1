import { BaleError } from '../lib/errors.js'

/**
 * Image references as users write them (`debian:bookworm`, `docker.io/library/debian`,
 * `host:5000/a/b:tag`, `name@sha256:…`), parsed with the grammar of distribution's
 * `reference` package, resolved once into where to connect and what to ask for.
 */
export interface ImageReference {
  /** Registry as it appears in canonical names: `docker.io` for Docker Hub, else host[:port]. */
  readonly domain: string
  /** Host[:port] to connect to: `registry-1.docker.io` for Docker Hub, else the domain. */
  readonly registry: string
  /** Repository path, e.g. `library/debian`. */
  readonly repository: string
  /** Tag, when given or implied (`latest` when neither tag nor digest is given). */
  readonly tag?: string
  /** `sha256:<64 hex>` when the reference pins a digest. */
  readonly digest?: string
  /** Fully qualified form, e.g. `docker.io/library/debian:bookworm`: the key in the store's index.json. */
  readonly canonical: string
}

const DOCKER_HUB_DOMAIN = 'docker.io'
/** Docker Hub's API host: `docker.io` itself only serves a redirect to the website. */
const DOCKER_HUB_REGISTRY = 'registry-1.docker.io'

// distribution/reference/regexp.go: lowercase path components with ., _, __ or runs of - inside.
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/
// A DNS label sequence, an IPv4 address, or a bracketed IPv6 literal, with an optional port.
const DOMAIN = /^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$/
const TAG = /^[\w][\w.-]{0,127}$/
export const SHA256_DIGEST = /^sha256:[a-f0-9]{64}$/
/** distribution caps the whole name (domain + path) at 255 characters. */
const MAX_NAME_LENGTH = 255

function invalid(input: string, why: string): BaleError {
  return new BaleError('E_INPUT', `invalid image reference '${input}': ${why}`, { subject: input })
}

export function parseReference(input: string): ImageReference {
  const s = input.trim()
  if (s === '') throw invalid(input, 'empty')
  if (/\s/.test(s)) throw invalid(input, 'contains whitespace')
  if (s.includes('://')) throw invalid(input, 'give host/repository[:tag], not a URL')

  let rest = s
  let digest: string | undefined
  const at = rest.indexOf('@')
  if (at >= 0) {
    digest = rest.slice(at + 1)
    rest = rest.slice(0, at)
    if (!digest.startsWith('sha256:')) throw invalid(input, `unsupported digest algorithm in '${digest}' (only sha256)`)
    if (!SHA256_DIGEST.test(digest)) throw invalid(input, `malformed digest '${digest}' (want sha256: and 64 lowercase hex digits)`)
  }

  // A tag follows the last ':' only if no '/' comes after it (otherwise that ':' is a port).
  let tag: string | undefined
  const colon = rest.lastIndexOf(':')
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
    if (!TAG.test(tag)) throw invalid(input, `malformed tag '${tag}'`)
  }

  if (rest === '') throw invalid(input, 'missing repository name')
  const slash = rest.indexOf('/')
  let domain = DOCKER_HUB_DOMAIN
  let path = rest
  if (slash >= 0) {
    const first = rest.slice(0, slash)
    // Docker's rule: the first component is a registry if it looks like a host (has '.' or ':') or is localhost.
    if (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('[')) {
      if (!DOMAIN.test(first)) throw invalid(input, `malformed registry host '${first}'`)
      domain = first
      path = rest.slice(slash + 1)
    }
  }
  if (domain === 'index.docker.io' || domain === DOCKER_HUB_REGISTRY) domain = DOCKER_HUB_DOMAIN
  if (domain === DOCKER_HUB_DOMAIN && !path.includes('/')) path = `library/${path}`

  for (const comp of path.split('/')) {
    if (comp === '') throw invalid(input, 'empty path component')
    if (!PATH_COMPONENT.test(comp)) {
      throw invalid(input, /[A-Z]/.test(comp) ? `repository name must be lowercase ('${comp}')` : `malformed path component '${comp}'`)
    }
  }
  const name = `${domain}/${path}`
  if (name.length > MAX_NAME_LENGTH) throw invalid(input, `name longer than ${MAX_NAME_LENGTH} characters`)

  if (tag === undefined && digest === undefined) tag = 'latest'
  const canonical = `${name}${tag === undefined ? '' : `:${tag}`}${digest === undefined ? '' : `@${digest}`}`
  return Object.freeze({
    domain,
    registry: domain === DOCKER_HUB_DOMAIN ? DOCKER_HUB_REGISTRY : domain,
    repository: path,
    ...(tag === undefined ? {} : { tag }),
    ...(digest === undefined ? {} : { digest }),
    canonical,
  })
}

/** Host part of `host[:port]` / `[v6]:port`, without brackets. */
export function hostOf(registry: string): string {
  if (registry.startsWith('[')) return registry.slice(1, registry.indexOf(']'))
  const colon = registry.lastIndexOf(':')
  return colon >= 0 ? registry.slice(0, colon) : registry
}

/**
 * Plain HTTP is allowed to loopback hosts (as Docker allows for localhost) or anywhere with
 * --insecure. `host` may be bare or a URL's hostname, which keeps IPv6 brackets ("[::1]").
 */
export function plainHttpAllowed(host: string, insecure: boolean | undefined): boolean {
  return insecure === true || isLoopbackHost(host.replace(/^\[|\]$/g, ''))
}

/** `http://` or `https://` + the registry, by the plain-HTTP rule above. */
export function registryOrigin(ref: ImageReference, insecure: boolean | undefined): string {
  return `${plainHttpAllowed(hostOf(ref.registry), insecure) ? 'http' : 'https'}://${ref.registry}`
}

export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase()
  return h === 'localhost' || h.endsWith('.localhost') || /^127(?:\.\d{1,3}){3}$/.test(h) || h === '::1'
}
