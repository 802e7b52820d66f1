/**
 * The guest's JSON parser parses every request and the injected image config as PID 1: it is
 * checked in C, under AddressSanitizer and UBSan, by `make -C guest check` (guest/test/json_fuzz.c:
 * fixed valid/invalid documents, decoding of escapes and surrogates, depth limits, then mutation
 * fuzzing with every accessor run on every token).
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { expect, it } from 'vitest'
import { GUEST_DIR } from './guest-harness.js'

const execFileP = promisify(execFile)

it('passes its sanitizer-instrumented checks and survives mutation fuzzing', async () => {
  const { stdout } = await execFileP('make', ['-C', GUEST_DIR, '--no-print-directory', '-s', 'check'], { timeout: 120_000 })
  expect(stdout).toMatch(/json fuzz: 200000 inputs, \d+ accepted as valid JSON/)
  expect(stdout).toContain('json: all checks passed')
}, 120_000)
