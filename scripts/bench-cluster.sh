#!/usr/bin/env bash
# The multi-host benchmark rows, on the project's simulated cluster (scripts/sim-cluster.sh: 4 hosts x 2
# slots on this machine, each host with its own network namespace on one bridge). Builds vm-bench (release)
# and the C references (bench/c), runs them alternately over the same hosts and mpirun settings, and prints
# the Swift figure, the C figure and their ratio per row (medians over the rounds).
#
#   cluster_tasks_{spawn,dispatch,dispatch_auto,dispatch_chunked}_w7: trivial tasks/s with 8 ranks over the
#     4 hosts (7 workers, tasks in task processes), against the C task farm over the same 8 ranks.
#   cluster_idle_cpu_percent_remote, cluster_idle_first_message_extra_us_remote: an idle worker on another
#     host than the spawner's (2 ranks mapped by node), against the C idle waiter placed the same way.
#
# Usage (as root): scripts/bench-cluster.sh [--rounds N] [--json FILE]
#   BENCH_TASKS (default 2000): tasks per throughput run; BENCH_IDLE (default 3): seconds of idling.
# Mirroring without a shared folder has no rows yet: the VM mirrors through a shared folder only.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=3 json=""
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--json FILE]" >&2; exit 2 ;;
  esac
done
tasks=${BENCH_TASKS:-2000}
idle=${BENCH_IDLE:-3}
sim=$root/scripts/sim-cluster.sh
export SIM_CLUSTER_STATE=${SIM_CLUSTER_STATE:-/run/parallelvm-sim-cluster-bench-$$}
"$sim" check >/dev/null || { echo "the simulated cluster cannot run here: $("$sim" check 2>&1)" >&2; exit 1; }
scripts/setup.sh
swift build -c release --product vm-bench >&2
mkdir -p bench/c/bin
for program in taskfarm idle; do mpicc -O2 -Wall -o "bench/c/bin/$program" "bench/c/$program.c"; done

work=$(mktemp -d)
trap '"$sim" down; rm -rf "$work"' EXIT
mkdir -p "$work/share"
"$sim" up 4 "$work/share" 2 >&2
record() {
  local file=$1 prefix=$2
  shift 2
  timeout -k 5 300 "$sim" run "$@" | awk -v p="$prefix" 'NF == 2 && $2 ~ /^-?[0-9.e+]+$/ { print p $1, $2 }' >>"$work/$file"
}
for round in $(seq 1 "$rounds"); do
  echo "round $round of $rounds..." >&2
  record ref "cluster_" -n 8 "$root/bench/c/bin/taskfarm" $((tasks * 20))
  record swift "cluster_" -n 8 -x BENCH_ISOLATION=process "$root/.build/release/vm-bench" tasks "$tasks" \
    spawn dispatch dispatch_auto dispatch_chunked
  record ref "cluster_remote_" -n 2 --map-by node "$root/bench/c/bin/idle" "$idle"
  record swift "cluster_remote_" -n 2 --map-by node "$root/.build/release/vm-bench" idle "$idle"
done

python3 - "$work/swift" "$work/ref" "$json" <<'PY'
import json, statistics, sys
def medians(path):
    values = {}
    with open(path) as f:
        for line in f:
            name, value = line.split()
            values.setdefault(name, []).append(float(value))
    return {name: statistics.median(v) for name, v in values.items()}
swift, ref, json_file = medians(sys.argv[1]), medians(sys.argv[2]), sys.argv[3]
rows = []
for kind in ("spawn", "dispatch", "dispatch_auto", "dispatch_chunked"):
    rows.append((f"cluster_tasks_{kind}_w7", "tasks/s", swift.get(f"cluster_tasks_{kind}_isolated_w7"),
                 ref.get("cluster_tasks_w7"), "C task farm, 8 ranks over 4 hosts"))
rows.append(("cluster_idle_cpu_percent_remote", "%", swift.get("cluster_remote_idle_cpu_percent"),
             ref.get("cluster_remote_idle_cpu_percent"), "C idle waiter on another host (MPI_Recv busy wait)"))
rows.append(("cluster_idle_first_message_extra_us_remote", "us", swift.get("cluster_remote_idle_first_message_extra_us"),
             ref.get("cluster_remote_idle_first_message_extra_us"), "C idle waiter on another host"))
table = []
print(f"{'row':44} {'unit':8} {'swift':>10} {'C':>10} {'ratio':>8}  reference")
for name, unit, s, r, what in rows:
    ratio = None if s is None or not r else s / r
    table.append({"name": name, "unit": unit, "swift": s, "reference": r, "ratio": ratio, "reference_is": what})
    fmt = lambda x: "-" if x is None else (f"{x:.4g}" if abs(x) < 1000 else f"{x:.0f}")
    print(f"{name:44} {unit:8} {fmt(s):>10} {fmt(r):>10} {fmt(ratio):>8}  {what}")
if json_file:
    with open(json_file, "w") as f:
        json.dump({"rows": table}, f, indent=2)
PY
