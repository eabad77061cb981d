#!/usr/bin/env bash
# Builds the VM's benchmark (vm-bench, release) and the C references (bench/c, mpicc -O2), runs them
# alternately under the same mpirun settings so that drift on a shared machine hits both, and prints one
# table: the Swift figure, the C figure and their ratio per row (medians over the rounds; each program
# already reports medians of its own repetitions).
#
# Isolation: every row is measured with VM(..., isolation: .inProcess) (BENCH_ISOLATION=inProcess, given to
# every rank with mpirun -x), so that it stays comparable with figures from before task processes. The rows
# tasks_spawn_isolated_w1, tasks_spawn_isolated_w2, tasks_dispatch_isolated_w2 and
# tasks_dispatch_chunked_isolated_w2 are measured with BENCH_ISOLATION=process (tasks in supervised task
# processes), in the same round right after the in-process run of the same ranks and its C task farm.
#
# How each ratio is formed (every figure is first the median over the rounds):
#   ratio: Swift figure / C figure of the row's reference (for tasks_*: the C task farm, same workers).
#   c_taskfarm_hop_*: the C task farm whose workers run each task in a child process of their own, passed
#     over a socket pair (spin) or through shared memory (shm), over the plain C task farm: what two more
#     process crossings per task cost on this machine with nothing else in the way.
#   vs base (isolated rows): isolated figure / in-process figure of the same kind and workers,
#     e.g. tasks_spawn_isolated_w2 / tasks_spawn_w2. The targets: at least 0.5 without chunks (isolation
#     costs at most half the in-process rate), at least 0.9 with chunks of 100 (at most 10%).
#   vs base (tasks_dispatch_chunked_journal_w2): the chunked dispatch with an experiment journal / the same
#     dispatch without one (tasks_dispatch_chunked_nojournal_w2), measured alternately, repetition by
#     repetition, in the same vm-bench process, 100 pairs a round. The target: at least 0.9 (journaling
#     costs at most 10%).
#
# Peers: the same trivial tasks and ping-pong with mpi4py (mpi4py.futures map, submit, map with
# chunksize=100; Send/Recv of buffers and send/recv of pickled objects) and with PyOPUS 0.9's MPI VM
# (spawnFunction, cOS.dispatch), programs in bench/peers/, run in the same rounds. The script installs both
# into a virtual environment of its own ($scratch/peers: mpi4py built from source against the system's Open
# MPI, PyOPUS 0.9 from its source package with setuptools<70, wheel, numpy<2 and greenlet, without its
# other dependencies, which the VM does not use). A peer row's ratio is the Swift figure named in its
# reference column over the peer's (for tasks/s above 1 means Swift is faster, for µs below 1).
# --no-peers skips them; when they cannot be installed the script stops and says which step failed.
#
# Usage: scripts/bench.sh [--json FILE] [--rounds N] [--no-peers]
#   BENCH_TASKS (default 5000): tasks per throughput run; the chunked and auto dispatches run 10 times as many.
#   BENCH_IDLE (default 5): seconds an idle worker waits while its CPU time is measured.
#   BENCH_LOW_IDLE (default 2000,1000): the PARALLELVM_WAIT value measured as the low-idle option.
#   BENCH_DATA (default /tmp/parallelvm-bench): where the mirroring data is made (once) and copied to.
set -euo pipefail

json=""
rounds=3
peers=1
while [ $# -gt 0 ]; do
  case $1 in
    --json) json=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --no-peers) peers=0; shift ;;
    *) echo "usage: $0 [--json FILE] [--rounds N] [--no-peers]" >&2; exit 2 ;;
  esac
done
tasks=${BENCH_TASKS:-5000}
idle=${BENCH_IDLE:-5}
low_idle=${BENCH_LOW_IDLE:-2000,1000}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scratch=${BENCH_SCRATCH:-.build-bench}
echo "building vm-bench (release) and the C references..." >&2
swift build --scratch-path "$scratch" -c release --product vm-bench >&2
swift_bin="$root/$scratch/release/vm-bench"
mkdir -p bench/c/bin
for program in pingpong taskfarm taskfarm_hop idle; do
  mpicc -O2 -Wall -o "bench/c/bin/$program" "bench/c/$program.c"
done

# Mirroring data, made once and kept between runs: 20,000 files of 4 KiB (200 folders of 100) and one
# file of 200 MB. Both the VM and the references read it from the page cache.
data=${BENCH_DATA:-/tmp/parallelvm-bench}
if [ ! -f "$data/data/.complete" ]; then
  echo "making mirroring data in $data..." >&2
  rm -rf "$data"
  mkdir -p "$data/data/small" "$data/data/large"
  python3 - "$data/data/small" <<'EOF2'
import os, sys
block = os.urandom(4096)
for i in range(200):
    folder = os.path.join(sys.argv[1], f"{i:03d}")
    os.mkdir(folder)
    for j in range(100):
        with open(os.path.join(folder, f"{j:03d}.bin"), "wb") as f:
            f.write(block)
EOF2
  head -c 200000000 /dev/urandom >"$data/data/large/big.bin"
  touch "$data/data/.complete"
fi
local_storage="$data/local"

# The peers' virtual environment, made once and kept (marked complete only when every step worked).
venv="$root/$scratch/peers"
peer_step() {
  local what=$1
  shift
  if ! "$@" >>"$venv.log" 2>&1; then
    echo "bench.sh: could not install the peers: $what failed (see $venv.log)." >&2
    echo "bench.sh: run with --no-peers to benchmark without mpi4py and PyOPUS." >&2
    exit 1
  fi
}
if [ "$peers" = 1 ] && [ ! -f "$venv/.complete" ]; then
  echo "installing the peers (mpi4py, PyOPUS 0.9) into $venv..." >&2
  rm -rf "$venv" "$venv.log"
  peer_step "making the virtual environment (python3 -m venv; Debian: apt-get install python3-venv)" \
    python3 -m venv "$venv"
  peer_step "installing setuptools<70, wheel, numpy<2 and greenlet" \
    "$venv/bin/pip" install "setuptools<70" wheel "numpy<2" greenlet
  peer_step "building mpi4py against the system's Open MPI (needs mpicc: apt-get install libopenmpi-dev)" \
    env MPICC="$(command -v mpicc)" "$venv/bin/pip" install --no-binary mpi4py mpi4py
  peer_step "downloading PyOPUS 0.9" \
    "$venv/bin/pip" download --no-deps --no-build-isolation -d "$venv/downloads" pyopus==0.9
  # PyOPUS's C extensions include numpy's headers without asking numpy where they are.
  numpy_include=$("$venv/bin/python" -c 'import numpy; print(numpy.get_include())')
  peer_step "building PyOPUS 0.9 (needs Python's headers: apt-get install python3-dev)" \
    env CFLAGS="-I$numpy_include" "$venv/bin/pip" install --no-deps --no-build-isolation "$venv"/downloads/PyOPUS-0.9.tar.gz
  peer_step "importing mpi4py.futures and pyopus.parallel.cooperative" \
    "$venv/bin/python" -c "import mpi4py.futures, pyopus.parallel.cooperative"
  touch "$venv/.complete"
fi
python_peer() { "$root/scripts/mpirun.sh" -x PYTHONPATH="$root/bench/peers" "$@"; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mpi() { "$root/scripts/mpirun.sh" "$@"; }
# Prints `NAME seconds-since-START` (START from $EPOCHREALTIME).
elapsed() { awk -v name="$1" -v start="$2" -v now="$EPOCHREALTIME" 'BEGIN { printf "%s %.6f\n", name, now - start }'; }
# Runs one program and appends its `name value` lines, renamed with an optional prefix, to a file.
record() {
  local file=$1 prefix=$2
  shift 2
  "$@" | awk -v p="$prefix" 'NF == 2 { print p $1, $2 }' >>"$out/$file"
}

for round in $(seq 1 "$rounds"); do
  echo "round $round of $rounds..." >&2
  record ref "" mpi -n 2 bench/c/bin/pingpong
  record swift "" mpi -n 2 -x PARALLELVM_WAIT= -x BENCH_ISOLATION=inProcess "$swift_bin" latency
  if [ "$peers" = 1 ]; then record peer "" python_peer -n 2 "$venv/bin/python" bench/peers/mpi4py_pingpong.py; fi
  for ranks in 2 3; do
    record ref "" mpi -n "$ranks" bench/c/bin/taskfarm $((tasks * 20))
    # The same C farm with each task passed to a child process: over a socket pair, and through shared memory.
    # Its MPI waits yield the core, as the VM's do: a master spinning without yielding on a core it shares
    # with a worker's child would starve it for whole time slices.
    for hop in spin shm; do
      record ref "" mpi --mca mpi_yield_when_idle 1 -n "$ranks" bench/c/bin/taskfarm_hop $((tasks * 4)) "$hop"
    done
    record swift "" mpi -n "$ranks" -x PARALLELVM_WAIT= -x BENCH_ISOLATION=inProcess "$swift_bin" tasks "$tasks"
    # With one worker spawnFunction and the dispatcher without chunks are measured isolated; with two, every kind.
    if [ "$ranks" = 2 ]; then kinds=(spawn dispatch); else kinds=(spawn dispatch dispatch_auto dispatch_chunked); fi
    record swift "" mpi -n "$ranks" -x PARALLELVM_WAIT= -x BENCH_ISOLATION=process "$swift_bin" tasks "$tasks" "${kinds[@]}"
    if [ "$peers" = 1 ]; then
      record peer "" python_peer -n "$ranks" "$venv/bin/python" -m mpi4py.futures bench/peers/mpi4py_tasks.py "$tasks"
      record peer "" python_peer -n "$ranks" "$venv/bin/python" bench/peers/pyopus_tasks.py "$tasks"
    fi
  done
  record swift "" mpi -n 3 -x PARALLELVM_WAIT= -x BENCH_ISOLATION=inProcess "$swift_bin" tasks "$tasks" dispatch_chunked_journal
  record ref "" mpi -n 2 bench/c/bin/idle "$idle"
  record swift "" mpi -n 2 -x PARALLELVM_WAIT= -x BENCH_ISOLATION=inProcess "$swift_bin" idle "$idle"
  record swift "lowidle_" mpi -n 2 -x PARALLELVM_WAIT="$low_idle" -x BENCH_ISOLATION=inProcess "$swift_bin" idle "$idle"
  record swift "busy_" mpi -n 2 -x PARALLELVM_WAIT=busy -x BENCH_ISOLATION=inProcess "$swift_bin" idle "$idle"
  # Mirroring: the VM (cold: first task; warm: a later task of a persistentStorage VM), tar c | tar x, cp -r.
  rm -rf "$local_storage" && mkdir -p "$local_storage"
  mirror_env=(-x PARALLELVM_WAIT= -x BENCH_ISOLATION=inProcess -x PARALLEL_MIRRORED_STORAGE="$data/data" -x PARALLEL_LOCAL_STORAGE="$local_storage")
  record swift "" mpi -n 2 "${mirror_env[@]}" "$swift_bin" mirror small "$data/data/small" warm
  record swift "" mpi -n 2 "${mirror_env[@]}" "$swift_bin" mirror large "$data/data/large"
  for set in small large; do
    rm -rf "$local_storage" && mkdir -p "$local_storage/tar"
    start=$EPOCHREALTIME
    tar -C "$data/data" -c "$set" | tar -C "$local_storage/tar" -x
    elapsed mirror_"$set" "$start" >>"$out/ref"
    rm -rf "$local_storage" && mkdir -p "$local_storage"
    start=$EPOCHREALTIME
    cp -r "$data/data/$set" "$local_storage/cp"
    elapsed cp_mirror_"$set" "$start" >>"$out/ref"
  done
  rm -rf "$local_storage"
done
note="mirror rows: page cache warm for the VM and the references alike; the VM figures are spawn to exit of a task"

touch "$out/swift" "$out/ref" "$out/peer"
python3 - "$out/swift" "$out/ref" "$json" "$low_idle" "$note" "$out/peer" <<'EOF'
import json, statistics, sys

swift_file, ref_file, json_file, low_idle, note, peer_file = sys.argv[1:7]

def medians(path):
    values = {}
    with open(path) as f:
        for line in f:
            name, value = line.split()
            values.setdefault(name, []).append(float(value))
    return {name: statistics.median(v) for name, v in values.items()}

swift, ref, peer = medians(swift_file), medians(ref_file), medians(peer_file)
sizes = [0, 8, 1000, 100000, 1000000, 10000000]
# name, unit, Swift figure, reference figure, what the reference is[, in-process figure, target]
rows = []
for size in sizes:
    rows.append((f"latency_{size}", "us", swift.get(f"latency_{size}"), ref.get(f"latency_{size}"), "C ping-pong"))
for size in (1000000, 10000000):
    rows.append((f"bandwidth_{size}", "MB/s", swift.get(f"bandwidth_{size}"), ref.get(f"bandwidth_{size}"), "C ping-pong"))
for size in sizes:
    rows.append((f"latency_codable_{size}", "us", swift.get(f"latency_codable_{size}"), ref.get(f"latency_{size}"), "C ping-pong"))
# The floor under the latency rows: C making the MPI calls the VM makes (a C figure over a C figure).
for size in (0, 8, 1000):
    rows.append((f"c_vm_calls_latency_{size}", "us", ref.get(f"pattern_latency_{size}"), ref.get(f"latency_{size}"), "C ping-pong; C with the VM's MPI calls (Isend+Test, Improbe+Mrecv)"))
for workers in (1, 2):
    for kind in ("spawn", "dispatch", "dispatch_auto", "dispatch_chunked"):
        rows.append((f"tasks_{kind}_w{workers}", "tasks/s", swift.get(f"tasks_{kind}_w{workers}"), ref.get(f"tasks_w{workers}"), "C task farm"))
# Process isolation, against the C task farm and against the in-process row of the same kind.
for kind, workers in (("spawn", 1), ("dispatch", 1), ("spawn", 2), ("dispatch", 2), ("dispatch_auto", 2), ("dispatch_chunked", 2)):
    target = 0.9 if kind in ("dispatch_chunked", "dispatch_auto") else 0.5
    rows.append((f"tasks_{kind}_isolated_w{workers}", "tasks/s", swift.get(f"tasks_{kind}_isolated_w{workers}"),
                 ref.get(f"tasks_w{workers}"), f"C task farm; in-process: tasks_{kind}_w{workers}, target >= {target}",
                 swift.get(f"tasks_{kind}_w{workers}"), target, "inprocess"))
# The floor under the isolated rows: C whose workers pass each task to a child process (a C figure over a C figure).
for hop, how in (("spin", "over a socket pair"), ("shm", "through shared memory")):
    for workers in (1, 2):
        rows.append((f"c_taskfarm_hop_{hop}_w{workers}", "tasks/s", ref.get(f"tasks_hop_{hop}_w{workers}"),
                     ref.get(f"tasks_w{workers}"), f"C task farm; C with a child process per worker, {how}"))
# Journaling, against the C task farm and against the same dispatch without a journal (measured alternately).
rows.append(("tasks_dispatch_chunked_journal_w2", "tasks/s", swift.get("tasks_dispatch_chunked_journal_w2"),
             ref.get("tasks_w2"), "C task farm; no journal: tasks_dispatch_chunked_nojournal_w2, target >= 0.9",
             swift.get("tasks_dispatch_chunked_nojournal_w2"), 0.9, "nojournal"))
# The dispatcher without chunks against raw spawnFunction of the same run (target: at least 0.8).
for isolated in ("", "isolated_"):
    for workers in (1, 2):
        rows.append((f"dispatch_vs_spawn_{isolated}w{workers}", "ratio", swift.get(f"tasks_dispatch_{isolated}w{workers}"),
                     swift.get(f"tasks_spawn_{isolated}w{workers}"), f"tasks_dispatch_{isolated}w{workers} / tasks_spawn_{isolated}w{workers}, target >= 0.8"))
rows += [
    ("mirror_small_cold", "s", swift.get("mirror_small_cold"), ref.get("mirror_small"), "tar c | tar x"),
    ("mirror_small_warm", "s", swift.get("mirror_small_warm"), ref.get("mirror_small"), "tar c | tar x"),
    ("mirror_large_cold", "s", swift.get("mirror_large_cold"), ref.get("mirror_large"), "tar c | tar x"),
    ("mirror_small_cold_vs_cp", "s", swift.get("mirror_small_cold"), ref.get("cp_mirror_small"), "cp -r"),
    ("mirror_large_cold_vs_cp", "s", swift.get("mirror_large_cold"), ref.get("cp_mirror_large"), "cp -r"),
]
rows += [
    ("idle_cpu_percent", "%", swift.get("idle_cpu_percent"), ref.get("idle_cpu_percent"), "C, MPI_Recv busy wait"),
    ("idle_cpu_percent_lowidle", "%", swift.get("lowidle_idle_cpu_percent"), ref.get("idle_cpu_percent"), f"C; PARALLELVM_WAIT={low_idle}"),
    ("idle_cpu_percent_busy", "%", swift.get("busy_idle_cpu_percent"), ref.get("idle_cpu_percent"), "C; PARALLELVM_WAIT=busy"),
    ("idle_first_message_extra_us", "us", swift.get("idle_first_message_extra_us"), ref.get("idle_first_message_extra_us"), "C, MPI_Recv busy wait"),
    ("idle_first_message_extra_us_lowidle", "us", swift.get("lowidle_idle_first_message_extra_us"), ref.get("idle_first_message_extra_us"), f"C; PARALLELVM_WAIT={low_idle}"),
    ("idle_first_message_extra_us_busy", "us", swift.get("busy_idle_first_message_extra_us"), ref.get("idle_first_message_extra_us"), "C; PARALLELVM_WAIT=busy"),
    ("idle_task_first_message_extra_us", "us", swift.get("idle_task_first_message_extra_us"), ref.get("idle_first_message_extra_us"), "C; a task waiting in receiveMessage"),
    ("idle_task_first_message_extra_us_busy", "us", swift.get("busy_idle_task_first_message_extra_us"), ref.get("idle_first_message_extra_us"), "C; same, PARALLELVM_WAIT=busy"),
]

# Peers: the peer's figure is the reference; the Swift figure is the row of the same kind.
peer_rows = []
for workers in (1, 2):
    peer_rows += [
        (f"peer_mpi4py_futures_map_w{workers}", "tasks/s", f"tasks_dispatch_w{workers}", "mpi4py.futures map"),
        (f"peer_mpi4py_futures_submit_w{workers}", "tasks/s", f"tasks_spawn_w{workers}", "mpi4py.futures submit"),
        (f"peer_mpi4py_futures_map_chunked_w{workers}", "tasks/s", f"tasks_dispatch_chunked_w{workers}", "mpi4py.futures map, chunksize=100"),
        (f"peer_pyopus_spawn_w{workers}", "tasks/s", f"tasks_spawn_w{workers}", "PyOPUS 0.9 spawnFunction"),
        (f"peer_pyopus_dispatch_w{workers}", "tasks/s", f"tasks_dispatch_w{workers}", "PyOPUS 0.9 cOS.dispatch"),
    ]
for size in sizes:
    peer_rows += [
        (f"peer_mpi4py_latency_{size}", "us", f"latency_{size}", "mpi4py Send/Recv, buffers"),
        (f"peer_mpi4py_pickle_latency_{size}", "us", f"latency_codable_{size}", "mpi4py send/recv, pickle"),
    ]
for name, unit, swift_name, what in peer_rows:
    if name in peer:
        rows.append((name, unit, swift.get(swift_name), peer[name], f"{what}; Swift: {swift_name}"))

def ratio(s, r):
    return None if s is None or r is None or r == 0 else s / r

table = []
for n, u, s, r, what, *based in rows:
    if s is None and r is None:
        continue
    row = {"name": n, "unit": u, "swift": s, "reference": r, "ratio": ratio(s, r), "reference_is": what}
    if based:
        base, target, kind = based
        row.update({kind: base, f"ratio_{kind}": ratio(s, base), f"target_{kind}": target})
        row["ratio_base"] = ratio(s, base)
    table.append(row)

def fmt(x, digits=3):
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"

print(f"{'row':38} {'unit':8} {'swift':>12} {'reference':>12} {'ratio':>8} {'vs base':>10}  reference")
for row in table:
    print(f"{row['name']:38} {row['unit']:8} {fmt(row['swift'], 4):>12} {fmt(row['reference'], 4):>12} "
          f"{fmt(row['ratio'], 3):>8} {fmt(row.get('ratio_base'), 3):>10}  {row['reference_is']}")
print(f"note: {note}")
if json_file:
    with open(json_file, "w") as f:
        json.dump({"rows": table, "notes": [note]}, f, indent=2)
    print(f"wrote {json_file}", file=sys.stderr)
EOF
