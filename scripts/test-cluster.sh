#!/usr/bin/env bash
# Runs the multi-host tests on the simulated cluster (scripts/sim-cluster.sh): 4 hosts x 2 slots, every
# host with its own hostname, /tmp, PIDs and path of the shared folder. Builds the programs (release) first.
# Ends with a line `N passed, M failed`; exits non-zero when a test failed. Where the hosts cannot be made
# (not root, no namespaces), it says why and skips; a skip is not a pass.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
limit=${CLUSTER_TEST_TIMEOUT:-120}   # seconds per test
hosts=4 slots=2 ranks=8
sim=$root/scripts/sim-cluster.sh
export SIM_CLUSTER_STATE=${SIM_CLUSTER_STATE:-/run/parallelvm-sim-cluster-test-$$}

if ! why=$("$sim" check 2>&1); then
  echo "cluster tests skipped: $why"
  echo "0 passed, 0 failed (skipped: the simulated cluster cannot run here)"
  exit 0
fi
scripts/setup.sh || exit 1
echo "building the demos and test programs (release)..." >&2
# Only the programs run here: the whole package would also build the web monitor's HTTP server in release.
for product in demo-01-config demo-02-spawn demo-04-mirror demo-05-storage-cleanup demo-07-dispatch vm-bench vm-scenarios; do
  swift build -c release --product "$product" >&2 || { echo "0 passed, 1 failed (building $product failed)"; exit 1; }
done
bin=$root/.build/release

work=$(mktemp -d "${TMPDIR:-/tmp}/parallelvm-test-cluster.XXXXXX")
share=$work/share            # the shared folder; host nodeK sees it at /media/shareK
cleanup() {
  "$sim" down
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Fixture in the shared folder: what demo 04 and the storage scenarios mirror.
mkdir -p "$share/fixtures/mirror/sub" "$share/local"
echo alpha >"$share/fixtures/mirror/a.txt"
echo beta >"$share/fixtures/mirror/b.txt"
echo gamma >"$share/fixtures/mirror/sub/c.txt"
ln -s a.txt "$share/fixtures/mirror/link"
mirror=/media/share1/fixtures/mirror   # the fixture as the spawner (node1) sees it

start_cluster() { "$sim" up "$hosts" "$share" "$slots" 2>&1 | sed 's/^/  /' >&2; }
start_cluster

passed=0 failed=0
out=$work/out
# Runs a command on the cluster with the time limit into $out; after a timeout the cluster is remade so
# that nothing of the hung run reaches the next test.
on_cluster() {
  timeout -k 5 "$limit" "$@" >"$out" 2>&1
  local status=$?
  if [ $status = 124 ] || [ $status = 137 ]; then
    echo "  (timed out after ${limit}s; remaking the cluster)" >>"$out"
    "$sim" down
    start_cluster
  fi
  return $status
}
# `expect TEXT` and `expect_re REGEX`: the last run's output has it.
expect() { grep -qF -- "$1" "$out" || { echo "  missing: $1"; return 1; }; }
expect_re() { grep -qE -- "$1" "$out" || { echo "  missing (regex): $1"; return 1; }; }
value() { sed -n "s/^$1=//p" "$out" | tail -1; }
expect_value() {
  local got
  got=$(value "$1")
  [ "$got" = "$2" ] || { echo "  $1: expected '$2', got '$got'"; return 1; }
}
distinct_hosts() { grep -oE -- "$1" "$out" | grep -oE 'node[0-9]+' | sort -u | wc -l; }

test_case() {
  local name=$1 began=$SECONDS report
  shift
  if report=$("$@" 2>&1); then
    passed=$((passed + 1))
    echo "PASS $name ($((SECONDS - began)) s)"
  else
    failed=$((failed + 1))
    echo "FAIL $name ($((SECONDS - began)) s)"
    [ -n "$report" ] && echo "$report"
    echo "  --- output (last 30 lines)"
    tail -30 "$out" | sed 's/^/  | /'
  fi
}

# --- the tests ---

demo_01_config() {
  on_cluster "$sim" run -n $ranks "$bin/demo-01-config" || { echo "  exit status $?"; return 1; }
  expect "Hosts: 4, slots: 8, free: 7" && expect "Spawner host     : node1" &&
    for k in 1 2 3 4; do expect_re "^  node$k: 2 slot\(s\)" || return 1; done
}

demo_02_spawn() {
  on_cluster "$sim" run -n $ranks --map-by node "$bin/demo-02-spawn" || { echo "  exit status $?"; return 1; }
  [ "$(grep -c '^TaskResult from .*: Hello from task' "$out")" = 2 ] || { echo "  not two results"; return 1; }
  [ "$(distinct_hosts '^TaskResult from .* on node[0-9]+')" = 2 ] || { echo "  the tasks did not run on 2 hosts"; return 1; }
  expect "Free slots at the end: 7 of 7 worker slots"
}

# Demo 04's listing, from a task on node2 (ranks mapped by node: rank 1 is node2's), whose login
# environment gives it its own path of the shared folder.
check_listing() {
  expect_re "^Task 1:1 ran in /tmp/parallelvm-[^/]+/node1-[0-9]+-[0-9]+@node2-" &&
    expect 'Dirs      : ["sub"]' && expect 'Files     : ["a.txt", "b.txt"]' &&
    expect 'Links     : ["link -> a.txt"]' && expect "Task 1:1 exited; its local storage is gone."
}
demo_04_mirror_per_host_paths() {
  # The spawner's path does not exist on node2: only translation through node2's own path can work.
  "$sim" exec node2 sh -c '[ ! -e /media/share1 ] && [ -d /media/share2/fixtures/mirror ]' ||
    { echo "  node2 sees the shared folder at node1's path"; return 1; }
  on_cluster "$sim" run -n $ranks --map-by node "$bin/demo-04-mirror" "$mirror" || { echo "  exit status $?"; return 1; }
  check_listing
}

# The README's recipe: one app context per host, each with -x giving that host's path. The paths given
# here (the fixtures folder below each host's path) differ from the hosts' login environment, so the
# listing is right only if every host got its own -x value.
demo_04_mirror_app_contexts() {
  local contexts=() k
  for k in 1 2 3 4; do
    [ $k = 1 ] || contexts+=(:)
    # node1 runs the spawner alone, so that the task (rank 1) runs on node2.
    contexts+=(-H "node$k:$slots" -n $([ $k = 1 ] && echo 1 || echo $slots) -x "PARALLEL_MIRRORED_STORAGE=/media/share$k/fixtures"
      "$bin/demo-04-mirror" "$mirror")
  done
  on_cluster "$sim" run --map-by node "${contexts[@]}" || { echo "  exit status $?"; return 1; }
  check_listing
}

demo_05_clear_every_host() {
  on_cluster "$sim" run -n $ranks "$bin/demo-05-storage-cleanup" "$mirror" || { echo "  exit status $?"; return 1; }
  [ "$(grep -c '^Task .* left persistent storage in /tmp/' "$out")" = 7 ] || { echo "  not 7 persistent folders"; return 1; }
  [ "$(grep -c '^Host node' "$out")" = 4 ] || { echo "  not one report per host"; return 1; }
  for k in 1 2 3 4; do expect_re "^Host node$k: removed [1-9][0-9]* item" || return 1; done
  # A process clearing a host finds the persistent folders of the host's other live workers in use and
  # says so; those workers remove their own. So every folder left must be one in use by a worker of this
  # run, and removed in that host's report all the same; in the end no host has anything left.
  local path
  while read -r path; do
    grep -qF "  removed $path" "$out" || { echo "  $path was reported and not removed"; return 1; }
  done < <(sed -n 's/^  FAILED  \([^:]*\): is in use by persistent storage of worker process .*/\1/p' "$out")
  [ "$(grep -c '^  FAILED' "$out")" = "$(grep -c '^  FAILED  .*: is in use by persistent storage of worker process' "$out")" ] ||
    { echo "  clearing failed for another reason"; return 1; }
  for k in 1 2 3 4; do
    "$sim" exec "node$k" sh -c '[ -z "$(ls -A /tmp | grep parallelvm-)" ]' ||
      { echo "  node$k still has local storage in /tmp"; return 1; }
  done
}

demo_07_dispatch() {
  on_cluster "$sim" run -n $ranks "$bin/demo-07-dispatch" || { echo "  exit status $?"; return 1; }
  local results
  results="Results: [$(seq 0 2 198 | paste -sd, | sed 's/,/, /g')]"
  expect "$results" && [ "$(distinct_hosts '-> [0-9]+ on node[0-9]+')" = 4 ] ||
    { echo "  jobs did not run on all 4 hosts"; return 1; }
}

targets_by_host() {
  on_cluster "$sim" run -n $ranks "$bin/vm-scenarios" cluster-targets || { echo "  exit status $?"; return 1; }
  expect_value hosts node1,node2,node3,node4 && expect_value tasksPerHost node1:1,node2:2,node3:2,node4:2 &&
    expect_value wrongHost 0
}

check_persistent() {
  expect_value workers 7 && expect_value firstHadMarker 0 && expect_value distinctFolders 7 &&
    expect_value folderReused 7 && expect_value ownMarker 7 && expect_value hosts node1,node2,node3,node4 &&
    { [ -n "$(value pidsOnSeveralHosts)" ] || { echo "  no worker PID repeated across hosts: nothing was tested"; return 1; }; }
}
# Worker PIDs repeat across hosts when every host's next PID is the same before the launch: the hosts
# other than node1 then start the same processes in the same order.
persistent_repeated_pids() {
  "$sim" next-pid 20000
  on_cluster "$sim" run -n $ranks "$bin/vm-scenarios" cluster-persistent "$mirror" || { echo "  exit status $?"; return 1; }
  check_persistent
}

# Every host's PARALLEL_LOCAL_STORAGE is the same shared folder, each at its own path.
shared_local=(sh -c 'PARALLEL_LOCAL_STORAGE=$SIM_CLUSTER_SHARE/local exec "$0" "$@"')

persistent_repeated_pids_shared_local() {
  rm -rf "${share:?}/local/"* "$share"/local/.[!.]*
  "$sim" next-pid 20000
  on_cluster "$sim" run -n $ranks "${shared_local[@]}" "$bin/vm-scenarios" cluster-persistent "$mirror" ||
    { echo "  exit status $?"; return 1; }
  check_persistent || return 1
  # Seven persistent folders side by side in the one shared folder, one per worker, named by host.
  [ "$(find "$share/local" -mindepth 2 -maxdepth 2 -type d -name 'node1-*@node*-w*' | wc -l)" = 7 ] ||
    { echo "  not 7 persistent folders in the shared local storage"; ls -la "$share"/local/*; return 1; }
}

shared_local_storage() {
  rm -rf "${share:?}/local/"* "$share"/local/.[!.]*
  on_cluster "$sim" run -n $ranks "${shared_local[@]}" "$bin/vm-scenarios" cluster-shared-local "$mirror" \
    /media/share1/local || { echo "  exit status $?"; return 1; }
  expect_value tasks 7 && expect_value hosts node1,node2,node3,node4 && expect_value distinctFolders 7 &&
    expect_value foldersNamedByHost 7 && expect_value foreignEntries 0 && expect_value leftAfterTasks ""
}

# A folder on node1 only (its own /tmp), declared not shared: the spawner sends its 4 files (3 contents,
# `a.txt` and `same.txt` are alike) to each host's mirror cache once, the 7 workers link their task folders
# from it twice, and the second rank of a host receives only the tree.
unshared_mirror() {
  "$sim" exec node1 sh -c 'rm -rf /tmp/private && mkdir -p /tmp/private/data/sub && echo alpha >/tmp/private/data/a.txt &&
    echo alpha >/tmp/private/data/same.txt && echo beta >/tmp/private/data/b.txt && echo gamma >/tmp/private/data/sub/c.txt' ||
    { echo "  could not make the fixture on node1"; return 1; }
  "$sim" exec node2 sh -c '[ ! -e /tmp/private ]' || { echo "  node2 sees node1's /tmp"; return 1; }
  on_cluster "$sim" run -n $ranks sh -c 'PARALLEL_UNSHARED_STORAGE=/tmp/private exec "$0" "$@"' \
    "$bin/vm-scenarios" cluster-unshared /tmp/private/data || { echo "  exit status $?"; return 1; }
  expect_value round1Tasks 7 && expect_value round2Tasks 7 && expect_value hosts node1,node2,node3,node4 &&
    expect_value entries "d:data,f:data/a.txt,f:data/b.txt,f:data/same.txt,d:data/sub,f:data/sub/c.txt" && expect_value mirrorSentEvents 7 && expect_value treeFiles 4 &&
    expect_value contentsSent 12 || return 1
  # Each host keeps the three contents in its cache, read-only; node1's source is untouched.
  local k
  for k in 2 3 4; do
    [ "$("$sim" exec node$k sh -c 'find /tmp/parallelvm-*/mirror-cache/blobs -type f | wc -l')" = 3 ] ||
      { echo "  node$k's mirror cache does not hold the 3 contents"; return 1; }
  done
}

bench_idle_remote_worker() {
  on_cluster "$sim" run -n 2 --map-by node "$bin/vm-bench" idle 1 || { echo "  exit status $?"; return 1; }
  expect_re '^idle_cpu_percent [0-9.e+-]+$' && expect_re '^idle_first_message_extra_us -?[0-9.e+-]+$'
}

# node3's network goes down during a dispatch of 80 jobs of 0.5 s (after job 8 has finished). The spawner
# must report node3 lost within its 10 s silence limit, the jobs of node3's two workers must run again
# elsewhere, every job must end with its value, finalize must not wait for node3, and the run must end (the
# spawner ends mpirun, which would wait for node3's ranks forever, so its status is non-zero).
lost_host_during_dispatch() {
  local began=$SECONDS status
  rm -f "$out"
  timeout -k 5 "$limit" "$sim" run -n $ranks "$bin/vm-scenarios" cluster-lost-host 80 0.5 \
    >"$out" 2>&1 &
  local run=$!
  for _ in $(seq 1 300); do grep -q '^done=8 ' "$out" 2>/dev/null && break; sleep 0.1; done
  grep -q '^done=8 ' "$out" || { echo "  job 8 did not finish"; wait $run; return 1; }
  "$sim" cut node3
  local cut=$SECONDS
  wait $run
  status=$?
  "$sim" mend node3
  [ $status != 124 ] && [ $status != 137 ] || { echo "  the run hung (timed out after ${limit}s)"; return 1; }
  echo "  run ended $((SECONDS - cut)) s after the cut, $((SECONDS - began)) s in all, status $status"
  expect_re 'host node3 was lost: no word from its worker rank\(s\) [0-9]+, [0-9]+ for 10 s' &&
    expect_value values 80 && expect_value failed "[]" && expect_value lostSlots 2 &&
    expect_value finalizeSeconds 0 && expect "host(s) node3 were lost: ending mpirun" || return 1
  [ "$(value retried)" -ge 1 ] || { echo "  no job ran again after node3 was lost"; return 1; }
  # No job ends on node3 after the loss was reported.
  ! sed -n '/host node3 was lost/,$p' "$out" | grep -q '^done=.* node3 ' ||
    { echo "  a job result came from node3 after it was reported lost"; return 1; }
  # Bounded: lost after 10 s of silence, the run over well within the time limit.
  [ $((SECONDS - cut)) -le 40 ] || { echo "  the run took $((SECONDS - cut)) s after the cut"; return 1; }
  # The other hosts still serve the next run (node3 is back, its ranks are new).
  on_cluster "$sim" run -n $ranks "$bin/demo-07-dispatch" || { echo "  the next run failed: $?"; return 1; }
}

began=$SECONDS
test_case "demo 01-config: 4 hosts x 2 slots" demo_01_config
test_case "demo 02-spawn: tasks on two hosts" demo_02_spawn
test_case "demo 04-mirror: each host its own path (login environment)" demo_04_mirror_per_host_paths
test_case "demo 04-mirror: each host its own path (mpirun -x per app context)" demo_04_mirror_app_contexts
test_case "demo 05-storage-cleanup: clearing reports every host" demo_05_clear_every_host
test_case "demo 07-dispatch: 100 jobs over 4 hosts" demo_07_dispatch
test_case "targets: spawns land on the host asked for" targets_by_host
test_case "persistent storage, PIDs repeated across hosts" persistent_repeated_pids
test_case "persistent storage in a shared local folder, PIDs repeated" persistent_repeated_pids_shared_local
test_case "local storage in a folder all hosts share" shared_local_storage
test_case "mirroring from a folder only the spawner's host has" unshared_mirror
test_case "vm-bench idle with its worker on another host" bench_idle_remote_worker
test_case "a host's network cut during a dispatch: the run goes on without it" lost_host_during_dispatch
echo "cluster tests took $((SECONDS - began)) s"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
