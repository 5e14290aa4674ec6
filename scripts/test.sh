#!/usr/bin/env bash
# The test command of README.md: installs what the tests need, then runs
# every unit, fuzz-seed and integration test (real initiators against a
# real hablock process) with the race detector and invariant checks on.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
go vet ./...
go test -race -tags invariants -count=1 -timeout 25m ./...
