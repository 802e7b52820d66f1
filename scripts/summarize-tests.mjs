#!/usr/bin/env node
// Sum vitest JSON reports into the one closing line CI reads: "N passed, N failed[, N skipped]".
// Exits non-zero when anything failed or when no test ran at all.
import { readFileSync } from 'node:fs'

let passed = 0, failed = 0, skipped = 0
for (const file of process.argv.slice(2)) {
  let r
  try { r = JSON.parse(readFileSync(file, 'utf8')) } catch { console.error(`missing or unreadable report: ${file}`); failed++; continue }
  passed += r.numPassedTests ?? 0
  failed += (r.numFailedTests ?? 0) + (r.numRuntimeErrorTestSuites ?? 0)
  skipped += (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0)
  if (r.success === false && (r.numFailedTests ?? 0) === 0) failed++ // e.g. a file that failed to load
}
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`)
// A skipped test is not a passing one: CI installs everything the tests need.
if (skipped > 0) console.error(`${skipped} test(s) skipped: every test must run`)
process.exit(failed > 0 || skipped > 0 || passed === 0 ? 1 : 0)
