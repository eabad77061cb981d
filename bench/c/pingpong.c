// Reference for vm-bench's latency and bandwidth rows: a blocking MPI ping-pong between ranks 0 and 1
// with the same payloads and round-trip counts. Prints `name value` lines (one-way µs, MB/s).
//   mpicc -O2 -o bin/pingpong pingpong.c && scripts/mpirun.sh -n 2 bin/pingpong
#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include "common.h"

#define REPETITIONS 5

static const long sizes[] = {0, 8, 1000, 100000, 1000000, 10000000};

// The same count vm-bench uses: about 0.1 s per repetition for small payloads, at least 5 round trips.
static int round_trips(long size) {
    long n = 200000000L / (size > 10000 ? size : 10000);
    if (n > 20000) n = 20000;
    if (n < 5) n = 5;
    return (int)n;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char *buffer = malloc(10000000);
    memset(buffer, 0x5a, 10000000);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int size = (int)sizes[s], n = round_trips(size);
        double one_way[REPETITIONS];
        for (int r = -1; r < REPETITIONS; r++) {  // r == -1 warms the connection up
            MPI_Barrier(MPI_COMM_WORLD);
            double start = now_seconds();
            for (int i = 0; i < (r < 0 ? 2 : n); i++) {
                if (rank == 0) {
                    MPI_Send(buffer, size, MPI_BYTE, 1, 1, MPI_COMM_WORLD);
                    MPI_Recv(buffer, size, MPI_BYTE, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                } else {
                    MPI_Recv(buffer, size, MPI_BYTE, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                    MPI_Send(buffer, size, MPI_BYTE, 0, 1, MPI_COMM_WORLD);
                }
            }
            if (r >= 0) one_way[r] = (now_seconds() - start) / (2.0 * n);
        }
        if (rank == 0) {
            double t = median(one_way, REPETITIONS);
            printf("latency_%d %.3f\n", size, t * 1e6);
            if (size >= 1000000) printf("bandwidth_%d %.1f\n", size, size / t / 1e6);
        }
    }
    // The same small ping-pongs with the MPI calls the VM makes: MPI_Isend then MPI_Test until done, and a
    // receive of unknown size from any rank (MPI_Improbe until a message is there, MPI_Mrecv into a new
    // buffer of its size). `pattern_latency_*` is the floor under the VM's `latency_*` rows.
    static const long pattern_sizes[] = {0, 8, 1000};
    for (size_t s = 0; s < sizeof pattern_sizes / sizeof pattern_sizes[0]; s++) {
        int size = (int)pattern_sizes[s], n = round_trips(size);
        double one_way[REPETITIONS];
        for (int r = -1; r < REPETITIONS; r++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double start = now_seconds();
            for (int i = 0; i < (r < 0 ? 2 : 2 * n); i++) {
                int sending = (rank == 0) == (i % 2 == 0);
                if (sending) {
                    MPI_Request request;
                    int done = 0;
                    MPI_Isend(buffer, size, MPI_BYTE, 1 - rank, 2, MPI_COMM_WORLD, &request);
                    while (!done) MPI_Test(&request, &done, MPI_STATUS_IGNORE);
                } else {
                    MPI_Message message;
                    MPI_Status status;
                    int found = 0, count = 0;
                    while (!found) MPI_Improbe(MPI_ANY_SOURCE, 2, MPI_COMM_WORLD, &found, &message, &status);
                    MPI_Get_count(&status, MPI_BYTE, &count);
                    char *received = malloc(count > 0 ? count : 1);
                    MPI_Mrecv(received, count, MPI_BYTE, &message, MPI_STATUS_IGNORE);
                    free(received);
                }
            }
            if (r >= 0) one_way[r] = (now_seconds() - start) / (2.0 * n);
        }
        if (rank == 0) printf("pattern_latency_%d %.3f\n", size, median(one_way, REPETITIONS) * 1e6);
    }
    free(buffer);
    MPI_Finalize();
    return 0;
}
