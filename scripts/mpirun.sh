#!/usr/bin/env bash
# Runs mpirun with the settings this project's demos, tests and benchmarks need on one machine:
#   - allow running as root (containers and CI run as root; Open MPI refuses otherwise),
#   - allow more ranks than cores (--oversubscribe), without binding ranks to cores,
#   - no single-copy mechanism when the kernel forbids cross-process memory access (ptrace scope).
# Usage: scripts/mpirun.sh -n RANKS PROGRAM [ARGS...]   (any mpirun option may be given)
set -euo pipefail

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Open MPI warns about missing high-speed fabrics and unused components; these are noise on one host.
export OMPI_MCA_btl_base_warn_component_unused=0
extra=()
if [ -r /proc/sys/kernel/yama/ptrace_scope ] && [ "$(cat /proc/sys/kernel/yama/ptrace_scope)" != 0 ]; then
  extra+=(--mca btl_vader_single_copy_mechanism none)
fi
exec mpirun --oversubscribe --bind-to none "${extra[@]}" "$@"
