// Reference for vm-bench's task throughput rows: the master sends an int to each worker, a worker replies
// with its double, and the master sends the next int to whichever worker replied, so every worker stays
// busy. Prints `tasks_w<workers> <tasks per second>` (median of the repetitions).
//   mpicc -O2 -o bin/taskfarm taskfarm.c && scripts/mpirun.sh -n 3 bin/taskfarm 100000
#include <mpi.h>
#include <stdio.h>
#include "common.h"

#define REPETITIONS 5
#define WORK 1
#define STOP 2

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int tasks = argc > 1 ? atoi(argv[1]) : 100000;
    int workers = size - 1;
    double rates[REPETITIONS];
    for (int r = 0; r < REPETITIONS; r++) {
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank == 0) {
            double start = now_seconds();
            int sent = 0, received = 0;
            long long checksum = 0;
            for (int w = 1; w <= workers && sent < tasks; w++, sent++)
                MPI_Send(&sent, 1, MPI_INT, w, WORK, MPI_COMM_WORLD);
            while (received < sent) {
                long long doubled;
                MPI_Status status;
                MPI_Recv(&doubled, 1, MPI_LONG_LONG, MPI_ANY_SOURCE, WORK, MPI_COMM_WORLD, &status);
                received++;
                checksum += doubled;
                if (sent < tasks) {
                    MPI_Send(&sent, 1, MPI_INT, status.MPI_SOURCE, WORK, MPI_COMM_WORLD);
                    sent++;
                }
            }
            rates[r] = tasks / (now_seconds() - start);
            if (checksum != (long long)tasks * (tasks - 1)) fprintf(stderr, "taskfarm: wrong checksum\n");
            for (int w = 1; w <= workers; w++) MPI_Send(&sent, 1, MPI_INT, w, STOP, MPI_COMM_WORLD);
        } else {
            while (1) {
                int x;
                MPI_Status status;
                MPI_Recv(&x, 1, MPI_INT, 0, MPI_ANY_TAG, MPI_COMM_WORLD, &status);
                if (status.MPI_TAG == STOP) break;
                long long doubled = 2LL * x;
                MPI_Send(&doubled, 1, MPI_LONG_LONG, 0, WORK, MPI_COMM_WORLD);
            }
        }
    }
    if (rank == 0) printf("tasks_w%d %.1f\n", workers, median(rates, REPETITIONS));
    MPI_Finalize();
    return 0;
}
