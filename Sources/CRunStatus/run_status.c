// See run_status.h: how rank 0 of an mpirun job ended, for scripts/mpirun.sh.
#define _GNU_SOURCE
#include "run_status.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int status_fd = -1;

static const int fatal_signals[] = {SIGSEGV, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSYS};
#define FATAL_COUNT (int)(sizeof fatal_signals / sizeof fatal_signals[0])
/// The handler each fatal signal had before ours, run after ours has written the status.
static struct sigaction previous[FATAL_COUNT];

/// Replaces the file's contents with `word value\n`. Async-signal-safe.
static void write_status(const char *word, long value) {
    if (status_fd < 0) return;
    char line[48];
    size_t length = strlen(word);
    memcpy(line, word, length);
    line[length++] = ' ';
    char digits[24];
    int count = 0;
    int negative = value < 0;
    unsigned long magnitude = negative ? (unsigned long)(-value) : (unsigned long)value;
    do {
        digits[count++] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude > 0);
    if (negative) line[length++] = '-';
    while (count > 0) line[length++] = digits[--count];
    line[length++] = '\n';
    if (pwrite(status_fd, line, length, 0) == (ssize_t)length) (void)ftruncate(status_fd, (off_t)length);
}

static void record_exit(int status, void *unused) {
    (void)unused;
    write_status("exit", status & 0xff);
}

static void on_fatal_signal(int signal_number, siginfo_t *info, void *context) {
    write_status("signal", signal_number);
    // Hand the signal to the handler that was there before (or the default action, which ends the
    // process): put it back and raise the signal again; a fault raised by an instruction would also come
    // back when this handler returns.
    for (int index = 0; index < FATAL_COUNT; index++) {
        if (fatal_signals[index] != signal_number) continue;
        struct sigaction *earlier = &previous[index];
        if ((earlier->sa_flags & SA_SIGINFO) && earlier->sa_sigaction != NULL) {
            sigaction(signal_number, earlier, NULL);
            earlier->sa_sigaction(signal_number, info, context);
            return;
        }
        if (earlier->sa_handler != SIG_DFL && earlier->sa_handler != SIG_IGN && earlier->sa_handler != NULL) {
            sigaction(signal_number, earlier, NULL);
            earlier->sa_handler(signal_number);
            return;
        }
    }
    struct sigaction fallback;
    memset(&fallback, 0, sizeof fallback);
    fallback.sa_handler = SIG_DFL;
    sigemptyset(&fallback.sa_mask);
    sigaction(signal_number, &fallback, NULL);
    raise(signal_number);
}

static void install_handlers(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_fatal_signal;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    for (int index = 0; index < FATAL_COUNT; index++) {
        struct sigaction current;
        if (sigaction(fatal_signals[index], NULL, &current) != 0) continue;
        // Already ours: keep the handler saved when it was installed.
        if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == on_fatal_signal) continue;
        if (current.sa_handler == SIG_IGN) continue;
        previous[index] = current;
        sigaction(fatal_signals[index], &action, NULL);
    }
}

void parallelvm_run_status_exiting(int status) { write_status("exit", status & 0xff); }

void parallelvm_run_status_rearm(void) {
    if (status_fd >= 0) install_handlers();
}

__attribute__((constructor)) static void parallelvm_run_status_start(void) {
    const char *path = getenv("PARALLELVM_STATUS_FILE");
    if (path == NULL || path[0] == '\0') return;
    const char *rank = getenv("OMPI_COMM_WORLD_RANK");
    int rankZero = rank != NULL && strcmp(rank, "0") == 0;
    // A task process is started from the same executable: only the rank itself writes.
    int taskProcess = getenv("PARALLELVM_TASK_CHANNEL") != NULL;
    // The file is made by scripts/mpirun.sh: a rank 0 on another host, without it, writes nothing.
    if (rankZero && !taskProcess) {
        status_fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
    }
    unsetenv("PARALLELVM_STATUS_FILE");
    if (status_fd < 0) return;
    write_status("running", (long)getpid());
    on_exit(record_exit, NULL);
    install_handlers();
}
