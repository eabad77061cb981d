#!/usr/bin/env bash
# Runs mpirun with the settings this project's demos, tests and benchmarks need on one machine:
#   - allow running as root (containers and CI run as root; Open MPI refuses otherwise),
#   - allow more ranks than cores (--oversubscribe), without binding ranks to cores,
#   - no single-copy mechanism when the kernel forbids cross-process memory access (ptrace scope).
# Usage: scripts/mpirun.sh -n RANKS PROGRAM [ARGS...]   (any mpirun option may be given)
# Exits with mpirun's status, or with 130/143 when it is interrupted by SIGINT/SIGTERM.
set -euo pipefail

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Open MPI warns about missing high-speed fabrics and unused components; these are noise on one host.
export OMPI_MCA_btl_base_warn_component_unused=0
extra=()
if [ -r /proc/sys/kernel/yama/ptrace_scope ] && [ "$(cat /proc/sys/kernel/yama/ptrace_scope)" != 0 ]; then
  extra+=(--mca btl_vader_single_copy_mechanism none)
fi
# Open MPI's recovery: a worker rank that dies (kill -9, a lost host) does not end the job; the spawner
# notices, reports its task as lost and goes on without it, and workers end by themselves when the spawner
# is gone. Under recovery mpirun exits 0 whatever its ranks did, so rank 0 of a ParallelVM program writes
# how it ended (`exit N`, `signal N`, or `running PID` when it was killed with SIGKILL) into the file named
# by PARALLELVM_STATUS_FILE, and this script exits with that status. PARALLELVM_RECOVERY=0 turns recovery
# off: any rank that fails then ends the whole job, and mpirun's own status is used.
status_file=""
if [ "${PARALLELVM_RECOVERY:-1}" != 0 ]; then
  extra+=(--enable-recovery --mca orte_abort_on_non_zero_status 0)
  status_file=$(mktemp "${TMPDIR:-/tmp}/parallelvm-status.XXXXXX")
  : >"$status_file"
  export PARALLELVM_STATUS_FILE="$status_file"
  extra+=(-x PARALLELVM_STATUS_FILE)
fi

# Ranks interrupted by mpirun get 2 s after its SIGTERM (default 1) to end their task
# processes and remove their task folders before it sends SIGKILL.
extra+=(--mca odls_base_sigkill_timeout 2)
# A host whose network goes down is noticed by Open MPI in about 11 s instead of minutes.
extra+=(--mca oob_tcp_keepalive_time 5 --mca oob_tcp_keepalive_intvl 2 --mca oob_tcp_keepalive_probes 3)

# mpirun runs as a job of this script, which passes SIGINT and SIGTERM on to it and then exits with 128
# plus the signal (130, 143), as an interrupted program does; mpirun itself exits 1 when interrupted.
# Job control keeps SIGINT from being ignored in the background job.
set -m
mpirun --oversubscribe --bind-to none "${extra[@]}" "$@" &
job=$!
interrupted=""
trap 'interrupted=130; kill -INT "$job" 2>/dev/null || true' INT
trap 'interrupted=143; kill -TERM "$job" 2>/dev/null || true' TERM
status=0
while true; do
  wait "$job" && status=0 || status=$?
  kill -0 "$job" 2>/dev/null || break
done
if [ -n "$interrupted" ]; then
  [ -z "$status_file" ] || rm -f "$status_file"
  exit "$interrupted"
fi
if [ -n "$status_file" ]; then
  # Rank 0's own account of its end, when it left one (a program that is not a ParallelVM program, or whose
  # rank 0 ran on another host without this file, leaves it empty: mpirun's status stands).
  read -r how value <"$status_file" || true
  rm -f "$status_file"
  case "${how:-}" in
    exit) if [ "$value" != 0 ]; then status=$value; fi ;;
    signal)
      echo "scripts/mpirun.sh: rank 0 ended on signal $value" >&2
      status=$((128 + value))
      ;;
    running)
      echo "scripts/mpirun.sh: rank 0 (PID $value) ended without an exit status: it was killed with SIGKILL" >&2
      status=137
      ;;
  esac
fi
exit "$status"
