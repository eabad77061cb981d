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
#   cluster_mirror_unshared_{cold,warm,warm_persistent}_h3: 20,000 files of 4 KiB in a folder only node1 has
#     (PARALLEL_UNSHARED_STORAGE), mirrored to a task on each of the 3 other hosts, the spawner serving them one
#     after another; cold with the hosts' mirror caches emptied (reading and hashing on the spawner included),
#     against `tar c | tar x` streamed over TCP from node1 to the same 3 hosts one after another; warm (the
#     contents cached, each task folder made of hard links) and warm_persistent (persistent storage reused)
#     against cold.
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
# The unshared fixture, on node1 only (its own /tmp), and the tar reference: a receiver on each other host
# piping a TCP connection into `tar x`, then one `tar c` per host on node1 into a connection to it.
"$sim" exec node1 python3 -c '
import os
for d in range(200):
    os.makedirs(f"/tmp/unshared-bench/small/d{d:03}", exist_ok=True)
    for f in range(100):
        with open(f"/tmp/unshared-bench/small/d{d:03}/f{f:03}.bin", "wb") as out:
            out.write(os.urandom(4096))
'
tar_over_tcp() {
  local port=5601 k pids=()
  for k in 2 3 4; do
    "$sim" exec node$k sh -c "rm -rf /tmp/tar-reference && mkdir -p /tmp/tar-reference"
    "$sim" exec node$k sh -c "python3 -c 'import shutil, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"\", $port)); s.listen(1)
print(\"ready\", file=sys.stderr, flush=True)
c, _ = s.accept(); shutil.copyfileobj(c.makefile(\"rb\"), sys.stdout.buffer, 1 << 20)' | tar x -C /tmp/tar-reference" \
      2>"$work/receiver$k" &
    pids+=($!)
  done
  for k in 2 3 4; do
    for _ in $(seq 200); do grep -q ready "$work/receiver$k" 2>/dev/null && break; sleep 0.05; done
  done
  local start end
  start=$(date +%s.%N)
  "$sim" exec node1 bash -c "for k in 2 3 4; do tar c -C /tmp/unshared-bench small >/dev/tcp/10.213.0.\$k/$port; done"
  wait "${pids[@]}"
  end=$(date +%s.%N)
  for k in 2 3 4; do "$sim" exec node$k rm -rf /tmp/tar-reference; done
  echo "cluster_unshared_small_cold $(python3 -c "print($end - $start)")" >>"$work/ref"
}

for round in $(seq 1 "$rounds"); do
  echo "round $round of $rounds..." >&2
  record ref "cluster_" -n 8 "$root/bench/c/bin/taskfarm" $((tasks * 20))
  record swift "cluster_" -n 8 -x BENCH_ISOLATION=process "$root/.build/release/vm-bench" tasks "$tasks" \
    spawn dispatch dispatch_auto dispatch_chunked
  record ref "cluster_remote_" -n 2 --map-by node "$root/bench/c/bin/idle" "$idle"
  record swift "cluster_remote_" -n 2 --map-by node "$root/.build/release/vm-bench" idle "$idle"
  tar_over_tcp
  record swift "cluster_" -n 4 --map-by node sh -c 'PARALLEL_UNSHARED_STORAGE=/tmp/unshared-bench exec "$0" "$@"' \
    "$root/.build/release/vm-bench" unshared small /tmp/unshared-bench/small
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
cold = swift.get("cluster_unshared_small_cold")
rows.append(("cluster_mirror_unshared_cold_h3", "s", cold, ref.get("cluster_unshared_small_cold"),
             "tar c | tar x over TCP to the same 3 hosts, one after another"))
for kind in ("warm", "warm_persistent"):
    rows.append((f"cluster_mirror_unshared_{kind}_h3", "s", swift.get(f"cluster_unshared_small_{kind}"), cold,
                 "cold mirroring of the same files (target: under 0.05)"))
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
