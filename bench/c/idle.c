// Reference for vm-bench's idle rows: a worker blocked in MPI_Recv (Open MPI waits by polling) for the
// given seconds, then round trips after short idle spells, as vm-bench idle does. Prints the CPU the worker used while
// waiting, in percent of one core, and the round trip of the first message after idling minus a warm one.
//   mpicc -O2 -o bin/idle idle.c && scripts/mpirun.sh -n 2 bin/idle 5
#include <mpi.h>
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>
#include "common.h"

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec + 1e-6 * (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
}

#define SAMPLES 7
#define WARM 15

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    double idle = argc > 1 ? atof(argv[1]) : 5.0;
    double cpu = 0, extra[SAMPLES], warm[WARM];
    int token = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        usleep((useconds_t)(idle * 1e6));
        MPI_Send(&token, 1, MPI_INT, 1, 1, MPI_COMM_WORLD);
        MPI_Recv(&cpu, 1, MPI_DOUBLE, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        // As vm-bench does: idle 0.2 s, time the first round trip, subtract the median warm one.
        for (int s = 0; s < SAMPLES; s++) {
            usleep(200000);
            for (int i = -1; i < WARM; i++) {
                double start = now_seconds();
                MPI_Send(&token, 1, MPI_INT, 1, 1, MPI_COMM_WORLD);
                MPI_Recv(&token, 1, MPI_INT, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                double t = now_seconds() - start;
                if (i < 0) extra[s] = t; else warm[i] = t;
            }
            extra[s] -= median(warm, WARM);
        }
        token = -1;
        MPI_Send(&token, 1, MPI_INT, 1, 1, MPI_COMM_WORLD);
        printf("idle_cpu_percent %.3f\n", 100.0 * cpu / idle);
        printf("idle_first_message_extra_us %.3f\n", median(extra, SAMPLES) * 1e6);
    } else {
        double before = cpu_seconds();
        MPI_Recv(&token, 1, MPI_INT, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        cpu = cpu_seconds() - before;
        MPI_Send(&cpu, 1, MPI_DOUBLE, 0, 1, MPI_COMM_WORLD);
        while (1) {
            MPI_Recv(&token, 1, MPI_INT, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            if (token < 0) break;
            MPI_Send(&token, 1, MPI_INT, 0, 1, MPI_COMM_WORLD);
        }
    }
    MPI_Finalize();
    return 0;
}
