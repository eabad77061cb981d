#define _GNU_SOURCE
#include "thread_probe.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__aarch64__)
#define PROBE_SUPPORTED 1
#else
#define PROBE_SUPPORTED 0
#endif

// The thread asked now (0: none), and the handler's answer: -1 while none came, then 0 or 1.
static _Atomic pid_t asked_thread = 0;
static _Atomic int answer = -1;
static pthread_mutex_t probe_lock = PTHREAD_MUTEX_INITIALIZER;
static int probe_signal = 0;  // 0: not installed yet; -1: no signal was free

#if PROBE_SUPPORTED
/// Whether the interrupted registers are those right after a futex LOCK_PI call that answered EDEADLK.
static int just_left_own_pi_lock(const ucontext_t *context, pid_t self) {
#if defined(__x86_64__)
    const greg_t *registers = context->uc_mcontext.gregs;
    // The kernel keeps rdi (the futex word) and rsi (the operation) and answers in rax; it does not keep the
    // call's number, so the instruction before the one interrupted must be `syscall` (0f 05), and the word
    // must name this thread as its owner.
    if (registers[REG_RAX] != -EDEADLK) return 0;
    if ((registers[REG_RSI] & FUTEX_CMD_MASK) != FUTEX_LOCK_PI) return 0;
    uintptr_t address = (uintptr_t)registers[REG_RDI];
    if (address < 4096 || address % 4 != 0) return 0;
    const unsigned char *pc = (const unsigned char *)registers[REG_RIP];
    if ((uintptr_t)pc < 4096 || pc[-2] != 0x0f || pc[-1] != 0x05) return 0;
    const _Atomic uint32_t *word = (const _Atomic uint32_t *)address;
    return (pid_t)(atomic_load_explicit(word, memory_order_relaxed) & FUTEX_TID_MASK) == self;
#else
    const mcontext_t *registers = &context->uc_mcontext;
    // The call's number is in x8, the operation in x1 and the answer in x0; `svc #0` is d4000001.
    (void)self;
    if (registers->regs[8] != SYS_futex) return 0;
    if ((int64_t)registers->regs[0] != -EDEADLK) return 0;
    if ((registers->regs[1] & FUTEX_CMD_MASK) != FUTEX_LOCK_PI) return 0;
    const uint32_t *pc = (const uint32_t *)registers->pc;
    return (uintptr_t)pc >= 4096 && pc[-1] == 0xd4000001u;
#endif
}

static void on_probe_signal(int signal, siginfo_t *info, void *context) {
    (void)signal;
    (void)info;
    int saved = errno;
    pid_t self = (pid_t)syscall(SYS_gettid);
    if (atomic_load(&asked_thread) == self) {
        atomic_store(&answer, just_left_own_pi_lock((const ucontext_t *)context, self));
    }
    errno = saved;
}

/// Installs the handler on the first free real-time signal from SIGRTMIN + 7; -1 when there is none.
static int install(void) {
    for (int candidate = SIGRTMIN + 7; candidate <= SIGRTMAX; candidate++) {
        struct sigaction current;
        if (sigaction(candidate, NULL, &current) != 0) continue;
        if (!(current.sa_flags & SA_SIGINFO) && current.sa_handler != SIG_DFL) continue;
        if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction != NULL) continue;
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_sigaction = on_probe_signal;
        action.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&action.sa_mask);
        if (sigaction(candidate, &action, NULL) == 0) return candidate;
    }
    return -1;
}
#endif

int parallelvm_thread_spins_on_own_pi_futex(pid_t thread, int attempts, int interval_us) {
#if !PROBE_SUPPORTED
    (void)thread;
    (void)attempts;
    (void)interval_us;
    return -1;
#else
    pthread_mutex_lock(&probe_lock);
    if (probe_signal > 0) {
        // The program may have taken the signal since: then another one is looked for.
        struct sigaction current;
        if (sigaction(probe_signal, NULL, &current) != 0 || !(current.sa_flags & SA_SIGINFO)
            || current.sa_sigaction != on_probe_signal) {
            probe_signal = 0;
        }
    }
    if (probe_signal == 0) probe_signal = install();
    if (probe_signal < 0) {
        pthread_mutex_unlock(&probe_lock);
        return -1;
    }
    int seen = 0;
    pid_t process = getpid();
    atomic_store(&asked_thread, thread);
    for (int attempt = 0; attempt < attempts && !seen; attempt++) {
        atomic_store(&answer, -1);
        if (syscall(SYS_tgkill, process, thread, probe_signal) != 0) break;
        // The handler runs as soon as the thread next returns to user space; wait up to 50 ms for it.
        for (int waited = 0; waited < 500 && atomic_load(&answer) < 0; waited++) {
            struct timespec pause = {0, 100000};
            nanosleep(&pause, NULL);
        }
        seen = atomic_load(&answer) == 1;
        if (!seen && interval_us > 0) {
            struct timespec pause = {interval_us / 1000000, (long)(interval_us % 1000000) * 1000};
            nanosleep(&pause, NULL);
        }
    }
    atomic_store(&asked_thread, 0);
    pthread_mutex_unlock(&probe_lock);
    return seen;
#endif
}
