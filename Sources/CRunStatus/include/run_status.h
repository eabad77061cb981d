#ifndef PARALLELVM_RUN_STATUS_H
#define PARALLELVM_RUN_STATUS_H

/// How rank 0 of an mpirun job ended, written for `scripts/mpirun.sh`.
///
/// Under Open MPI's recovery (`--enable-recovery --mca orte_abort_on_non_zero_status 0`, which lets a run go
/// on when a worker rank dies) mpirun exits 0 whatever its ranks did. So when `PARALLELVM_STATUS_FILE` names
/// a file in the environment of rank 0 (`OMPI_COMM_WORLD_RANK=0`), a constructor that runs before `main`
/// writes `running PID` into it, and then how the process ends: `exit STATUS` from `exit()` or a return from
/// `main`, `signal NUMBER` from a fatal signal (SIGSEGV, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSYS),
/// whose earlier handler (the Swift runtime's, Open MPI's) then runs as before. A file still reading
/// `running` means the process was killed with SIGKILL. The variable is removed from the environment, so
/// child processes never write the file.

/// Records `status` as the exit status, for a process about to `_exit` (which runs no exit handlers).
/// Async-signal-safe; does nothing when no status file is open.
void parallelvm_run_status_exiting(int status);

/// Puts the fatal-signal handlers back in front of any installed since the constructor ran (MPI_Init may
/// install its own), keeping those as the handlers that run next. Does nothing when no status file is open.
void parallelvm_run_status_rearm(void);

#endif
