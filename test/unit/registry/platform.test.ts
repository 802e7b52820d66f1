import { describe, expect, it } from 'vitest'
import { BaleError } from '../../../src/lib/errors.js'
import type { Descriptor, ImageIndex } from '../../../src/registry/manifest.js'
import { formatPlatform, parsePlatform, samePlatform, selectPlatform } from '../../../src/registry/platform.js'

const digest = (n: number): string => `sha256:${n.toString(16).padStart(64, '0')}`
const entry = (n: number, platform?: Descriptor['platform'], annotations?: Record<string, string>): Descriptor => ({
  mediaType: 'application/vnd.oci.image.manifest.v1+json',
  digest: digest(n),
  size: 100 + n,
  ...(platform === undefined ? {} : { platform }),
  ...(annotations === undefined ? {} : { annotations }),
})
const index = (...manifests: Descriptor[]): ImageIndex => ({ schemaVersion: 2, manifests })

const attestation = entry(1, { os: 'unknown', architecture: 'unknown' }, {
  'vnd.docker.reference.type': 'attestation-manifest',
  'vnd.docker.reference.digest': digest(2),
})
const amd64 = entry(2, { os: 'linux', architecture: 'amd64' })
const arm64 = entry(3, { os: 'linux', architecture: 'arm64', variant: 'v8' })
const armv7 = entry(4, { os: 'linux', architecture: 'arm', variant: 'v7' })
const armv6 = entry(5, { os: 'linux', architecture: 'arm', variant: 'v6' })
const amd64v3 = entry(6, { os: 'linux', architecture: 'amd64', variant: 'v3' })
const windows = entry(7, { os: 'windows', architecture: 'amd64', 'os.version': '10.0.17763.1' })
const full = index(attestation, windows, amd64v3, amd64, arm64, armv6, armv7)

describe('selectPlatform', () => {
  it.each([
    ['linux/amd64', amd64],
    ['linux/x86_64', amd64],
    ['linux/amd64/v3', amd64v3],
    ['linux/arm64', arm64],
    ['linux/aarch64', arm64],
    ['linux/arm64/v8', arm64],
    ['linux/arm', armv7], // arm means v7 when no variant is given
    ['linux/arm/v7', armv7],
    ['linux/armhf', armv7],
    ['linux/arm/v6', armv6],
    ['linux/armel', armv6],
    ['windows/amd64', windows],
  ])('%s', (want, expected) => {
    expect(selectPlatform(full, parsePlatform(want), 'idx')).toBe(expected)
  })

  it('never selects an attestation manifest, even one whose platform would match', () => {
    const sneaky = entry(9, { os: 'linux', architecture: 'amd64' }, { 'vnd.docker.reference.type': 'attestation-manifest' })
    expect(selectPlatform(index(sneaky, amd64), parsePlatform('linux/amd64'), 'idx')).toBe(amd64)
    expect(() => selectPlatform(index(attestation, sneaky), parsePlatform('linux/amd64'), 'idx')).toThrow(/available: none/)
  })

  it('a missing platform names what the index has', () => {
    let err: unknown
    try {
      selectPlatform(index(attestation, amd64, arm64, entry(8)), parsePlatform('linux/riscv64'), 'host/repo:tag')
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(BaleError)
    expect((err as BaleError).code).toBe('E_NOT_FOUND')
    expect((err as BaleError).message).toBe('host/repo:tag: no linux/riscv64 image in the index (available: linux/amd64, linux/arm64/v8); choose one with --platform')
  })

  it('linux/amd64 does not silently pick an amd64/v3-only image', () => {
    expect(() => selectPlatform(index(amd64v3), parsePlatform('linux/amd64'), 'idx')).toThrow(/available: linux\/amd64\/v3/)
  })
})

describe('parsePlatform', () => {
  it.each(['linux', 'linux/', '/amd64', 'linux/amd64/v8/x', 'linux/amd 64', ''])('rejects %j as a usage error', (s) => {
    expect(() => parsePlatform(s)).toThrow(BaleError)
    try {
      parsePlatform(s)
    } catch (e) {
      expect((e as BaleError).code).toBe('E_USAGE')
      expect((e as BaleError).subject).toBe('--platform')
    }
  })

  it('keeps what the user wrote for messages, compares normalized', () => {
    expect(formatPlatform(parsePlatform('linux/arm/v7'))).toBe('linux/arm/v7')
    expect(samePlatform(parsePlatform('Linux/ARM64'), { os: 'linux', architecture: 'arm64', variant: 'v8' })).toBe(true)
    expect(samePlatform(parsePlatform('linux/arm/v6'), { os: 'linux', architecture: 'arm', variant: 'v7' })).toBe(false)
  })
})
