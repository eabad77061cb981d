// Reference for the isolated task rows: the C task farm (taskfarm.c) where each worker rank runs every task
// in a child process of its own, as the VM's task processes do. The child is started before MPI_Init and
// never calls MPI; a worker rank forwards each int to it and the double back to the master. So each task
// crosses two more process boundaries, and this is what those crossings cost on this machine with nothing
// else in the way: the floor under the VM's isolated rows.
//
// How the worker rank and its child pass a task and wait for each other (the third argument):
//   spin:  over a socket pair, polling with non-blocking recv and yielding the core between polls;
//   block: over a socket pair, blocking in recv;
//   hint:  over a socket pair, but a counter per direction in shared memory says how many frames were sent,
//          so a waiting side polls memory (yielding the core) and calls recv only once a frame is there;
//   shm:   through one slot per direction in shared memory, polled the same way: no system call at all.
// The master has no child, as the VM's spawner has no task process. Run it with Open MPI's
// `--mca mpi_yield_when_idle 1`, so that the master's waits yield the core as the VM's do: with more
// processes than cores, a master spinning without yielding starves the one that shares its core.
// Prints `tasks_hop_<mode>_w<workers> <tasks per second>` (median of the repetitions).
//   mpicc -O2 -o bin/taskfarm_hop taskfarm_hop.c
//   scripts/mpirun.sh --mca mpi_yield_when_idle 1 -n 3 bin/taskfarm_hop 100000 shm
#include <mpi.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include "farm.h"


enum mode { SPIN, BLOCK, HINT, SHM };
static enum mode mode;

// One direction of the shared memory: a sequence number published after the value (`shm`), or the
// number of frames sent (`hint`). Direction 0 is rank to child, 1 child to rank.
struct slot {
    _Atomic long sequence;
    long value;
    char padding[48];
};
static struct slot *shared;
static long seen[2];

// Waits until direction `way` has a sequence number past the last one seen, yielding the core between polls.
static void await_slot(int way) {
    while (atomic_load_explicit(&shared[way].sequence, memory_order_acquire) == seen[way]) sched_yield();
    seen[way]++;
}

static void publish(int way, long value) {
    shared[way].value = value;
    atomic_fetch_add_explicit(&shared[way].sequence, 1, memory_order_release);
}

// Reads exactly `length` bytes; returns 0 when the peer closed the socket.
static int read_all(int fd, void *buffer, size_t length) {
    size_t done = 0;
    while (done < length) {
        ssize_t got = recv(fd, (char *)buffer + done, length - done, mode == BLOCK ? 0 : MSG_DONTWAIT);
        if (got > 0) {
            done += (size_t)got;
        } else if (got == 0) {
            return 0;
        } else if (mode != BLOCK) {
            sched_yield();
        }
    }
    return 1;
}

// Passes `value` the way `way` and returns what comes back the other way; 0 when the peer is gone.
static int exchange(int fd, int way, long long value, long long *reply) {
    if (mode == SHM) {
        publish(way, value);
        await_slot(1 - way);
        if (shared[1 - way].value < 0) return 0;
        *reply = shared[1 - way].value;
        return 1;
    }
    if (send(fd, &value, sizeof value, 0) != sizeof value) return 0;
    if (mode == HINT) {
        publish(way, 0);
        await_slot(1 - way);
    }
    return read_all(fd, reply, sizeof *reply);
}

// The child: doubles every number it gets until its worker rank says stop (-1) or closes the socket.
static void serve_child(int fd) {
    long long x;
    if (mode == SHM) {
        await_slot(0);
        x = shared[0].value;
    } else {
        if (mode == HINT) await_slot(0);
        if (!read_all(fd, &x, sizeof x)) _exit(0);
    }
    while (x >= 0 && exchange(fd, 1, 2 * x, &x)) {}
    _exit(0);
}

// The worker rank's end of the channel to its child.
static int channel_fd = -1;

// A worker's answer: the double its child sends back for `x`.
static long long through_child(int x) {
    long long doubled;
    if (!exchange(channel_fd, 0, x, &doubled)) {
        fprintf(stderr, "taskfarm_hop: a worker rank lost its child\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    return doubled;
}

int main(int argc, char **argv) {
    int tasks = argc > 1 ? atoi(argv[1]) : 100000;
    const char *name = argc > 2 ? argv[2] : "spin";
    if (strcmp(name, "spin") == 0) mode = SPIN;
    else if (strcmp(name, "block") == 0) mode = BLOCK;
    else if (strcmp(name, "hint") == 0) mode = HINT;
    else if (strcmp(name, "shm") == 0) mode = SHM;
    else {
        fprintf(stderr, "taskfarm_hop: the mode must be spin, block, hint or shm, not '%s'\n", name);
        return 2;
    }
    shared = mmap(NULL, 2 * sizeof(struct slot), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int channel[2];
    if (shared == MAP_FAILED || socketpair(AF_UNIX, SOCK_STREAM, 0, channel) != 0) {
        perror("taskfarm_hop: mmap or socketpair");
        return 1;
    }
    // The master (rank 0, as Open MPI says before MPI_Init) has no child, as the VM's spawner has no task
    // process: an idle child polling beside it would take a core's share from the farm.
    const char *world_rank = getenv("OMPI_COMM_WORLD_RANK");
    int has_child = !(world_rank && atoi(world_rank) == 0);
    pid_t child = has_child ? fork() : 1;
    if (child < 0) {
        perror("taskfarm_hop: fork");
        return 1;
    }
    if (child == 0) {
        // A child polling shared memory would not notice its rank's end otherwise.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(channel[0]);
        serve_child(channel[1]);
    }
    close(channel[1]);
    channel_fd = channel[0];

    MPI_Init(&argc, &argv);
    int workers;
    double rate = farm_run(tasks, through_child, "taskfarm_hop", &workers);
    if (rate >= 0) printf("tasks_hop_%s_w%d %.1f\n", name, workers, rate);
    MPI_Finalize();
    // Stops the child: -1 in shared memory, or the socket closed (and said so, when it polls memory).
    if (has_child && mode != SPIN && mode != BLOCK) publish(0, -1);
    close(channel_fd);
    return 0;
}
