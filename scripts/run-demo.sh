#!/usr/bin/env bash
# Builds a demo (release) and runs it under mpirun.
# Usage: scripts/run-demo.sh NAME RANKS [ARGS...]    e.g. scripts/run-demo.sh 02-spawn 3
# RANKS 1 runs the demo without mpirun: one process, its tasks in local slots (task processes).
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 NAME RANKS [ARGS...]   (NAME is a folder under demo/, e.g. 02-spawn)" >&2
  exit 2
fi
name=$1 ranks=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d "$root/demo/$name" ]; then
  echo "no demo named '$name'; demos: $(ls "$root/demo" | tr '\n' ' ')" >&2
  exit 2
fi
case $ranks in
  ''|*[!0-9]*|0) echo "RANKS must be a positive number, not '$ranks'" >&2; exit 2 ;;
esac

cd "$root"
scripts/setup.sh
swift build -c release --product "demo-$name" >&2
binary="$root/.build/release/demo-$name"
if [ "$ranks" = 1 ]; then
  exec "$binary" "$@"
fi
exec "$root/scripts/mpirun.sh" -n "$ranks" "$binary" "$@"
