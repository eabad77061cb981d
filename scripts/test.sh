#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the whole test suite (unit tests and real
# multi-rank runs under mpirun). Exits non-zero when anything fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
swift build --build-tests
swift test --skip-build
