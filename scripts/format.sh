#!/usr/bin/env bash
# Formats the project's Swift sources with swift-format (configuration: .swift-format), or, with --lint,
# only reports what would change and exits non-zero when something would.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
paths=(Package.swift Sources Tests demo bench)
if [ "${1:-}" = "--lint" ]; then
  exec swift format lint --strict --recursive --parallel "${paths[@]}"
fi
exec swift format format --in-place --recursive --parallel "${paths[@]}"
