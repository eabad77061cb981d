#!/usr/bin/env bash
# Counts what journaling adds per job in operations instead of time: calls of malloc, swift_retain and
# swift_release on the spawner (rank 0) of `vm-bench tasks N dispatch_chunked_journal`, once with only the
# journaled side repeated (BENCH_JOURNAL_ONLY=journaled) and once with only the plain side (plain). Both
# runs do one warm-up of each side and 7 repetitions of one; the difference of their counts over
# 7 * 10 * N jobs is the count per job that journaling adds. Counts do not move with the load of a shared
# machine, as rates and CPU times do.
#
# Needs perf with uprobes (as root: apt-get install linux-perf) and the release vm-bench that
# scripts/bench.sh builds. Usage: scripts/journal-ops.sh [N] (default 5000: 50,000 jobs a repetition).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tasks=${1:-5000}
scratch=${BENCH_SCRATCH:-.build-bench}
bin="$scratch/release/vm-bench"
[ -x "$bin" ] || swift build -c release --product vm-bench --scratch-path "$scratch" >&2
command -v perf >/dev/null || {
  echo "journal-ops.sh: perf is missing (apt-get install linux-perf)" >&2
  exit 1
}

libc=$(ldd "$bin" | awk '/libc\.so/ { print $3 }')
swiftcore=$(ldd "$bin" | awk '/libswiftCore\.so/ { print $3 }')
for probe in "$libc malloc" "$swiftcore swift_retain" "$swiftcore swift_release"; do
  set -- $probe
  # An existing probe of the same name is kept.
  perf probe -q -x "$1" "$2" 2>/dev/null || true
done
events=probe_libc:malloc,probe_libswiftCore:swift_retain,probe_libswiftCore:swift_release

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/rank0.sh" <<EOF
#!/usr/bin/env bash
if [ "\$OMPI_COMM_WORLD_RANK" = 0 ]; then exec perf stat -x, -e $events -o "$work/\$BENCH_JOURNAL_ONLY.csv" "\$@"; fi
exec "\$@"
EOF
chmod +x "$work/rank0.sh"
for side in journaled plain; do
  "$root/scripts/mpirun.sh" -n 3 -x PARALLELVM_WAIT= -x BENCH_ISOLATION=inProcess -x BENCH_JOURNAL_ONLY=$side \
    "$work/rank0.sh" "$bin" tasks "$tasks" dispatch_chunked_journal >/dev/null
done
awk -F, -v jobs=$((7 * 10 * tasks)) '
  FNR == 1 { side = FILENAME ~ /journaled/ ? "j" : "p" }
  $3 ~ /^probe_/ { split($3, name, ":"); count[side, name[2]] = $1; names[name[2]] = 1 }
  END { for (n in names) printf "journal_%s_per_job %.2f\n", n, (count["j", n] - count["p", n]) / jobs }
' "$work/journaled.csv" "$work/plain.csv" | sort
