#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the whole test suite (unit tests and real
# multi-rank runs under mpirun). Exits non-zero when anything fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
# Warnings are errors here, so that they are fixed when they appear.
swift build --build-tests -Xswiftc -warnings-as-errors
# One test at a time: the multi-rank runs oversubscribe the cores already.
swift test --skip-build --no-parallel
