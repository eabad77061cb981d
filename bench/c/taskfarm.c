// Reference for vm-bench's task throughput rows: the master sends an int to each worker, a worker replies
// with its double, and the master sends the next int to whichever worker replied, so every worker stays
// busy. Prints `tasks_w<workers> <tasks per second>` (median of the repetitions).
//   mpicc -O2 -o bin/taskfarm taskfarm.c && scripts/mpirun.sh -n 3 bin/taskfarm 100000
#include <mpi.h>
#include <stdio.h>
#include "farm.h"

static long long doubled(int x) { return 2LL * x; }

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int tasks = argc > 1 ? atoi(argv[1]) : 100000;
    int workers;
    double rate = farm_run(tasks, doubled, "taskfarm", &workers);
    if (rate >= 0) printf("tasks_w%d %.1f\n", workers, rate);
    MPI_Finalize();
    return 0;
}
