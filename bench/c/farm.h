// The master's side of the C task farms (taskfarm.c, taskfarm_hop.c): it sends an int to each worker, and
// the next int to whichever worker replied with its double, so every worker stays busy.
#ifndef BENCH_FARM_H
#define BENCH_FARM_H

#include <mpi.h>
#include <stdio.h>
#include "common.h"

#define FARM_WORK 1
#define FARM_STOP 2

// Runs `tasks` tasks over `workers` workers, checks the doubles' sum, tells the workers the round is over
// (FARM_STOP) and returns the tasks per second.
static double farm_master_round(int tasks, int workers, const char *program) {
    double start = now_seconds();
    int sent = 0, received = 0;
    long long checksum = 0;
    for (int w = 1; w <= workers && sent < tasks; w++, sent++)
        MPI_Send(&sent, 1, MPI_INT, w, FARM_WORK, MPI_COMM_WORLD);
    while (received < sent) {
        long long doubled;
        MPI_Status status;
        MPI_Recv(&doubled, 1, MPI_LONG_LONG, MPI_ANY_SOURCE, FARM_WORK, MPI_COMM_WORLD, &status);
        received++;
        checksum += doubled;
        if (sent < tasks) {
            MPI_Send(&sent, 1, MPI_INT, status.MPI_SOURCE, FARM_WORK, MPI_COMM_WORLD);
            sent++;
        }
    }
    double rate = tasks / (now_seconds() - start);
    if (checksum != (long long)tasks * (tasks - 1)) fprintf(stderr, "%s: wrong checksum\n", program);
    for (int w = 1; w <= workers; w++) MPI_Send(&sent, 1, MPI_INT, w, FARM_STOP, MPI_COMM_WORLD);
    return rate;
}

#define FARM_REPETITIONS 5

// Runs the farm `FARM_REPETITIONS` times after MPI_Init: rank 0 as the master, every other rank as a
// worker that answers each int with `work(int)`. Returns the median tasks per second on rank 0 (-1 on the
// others) and sets `workers`.
static double farm_run(int tasks, long long (*work)(int), const char *program, int *workers) {
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    *workers = size - 1;
    double rates[FARM_REPETITIONS];
    for (int r = 0; r < FARM_REPETITIONS; r++) {
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank == 0) {
            rates[r] = farm_master_round(tasks, *workers, program);
            continue;
        }
        while (1) {
            int x;
            MPI_Status status;
            MPI_Recv(&x, 1, MPI_INT, 0, MPI_ANY_TAG, MPI_COMM_WORLD, &status);
            if (status.MPI_TAG == FARM_STOP) break;
            long long doubled = work(x);
            MPI_Send(&doubled, 1, MPI_LONG_LONG, 0, FARM_WORK, MPI_COMM_WORLD);
        }
    }
    return rank == 0 ? median(rates, FARM_REPETITIONS) : -1;
}

#endif
