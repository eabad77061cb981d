#ifndef PARALLELVM_THREAD_PROBE_H
#define PARALLELVM_THREAD_PROBE_H

#include <sys/types.h>

/// Tells whether a thread of this process spins on a priority-inheritance futex that it holds itself: the
/// endless loop of the Swift runtime's once-lock re-entered by the thread that runs the initializer
/// (`futex(FUTEX_LOCK_PI)` answering `EDEADLK` again and again).
///
/// The thread is sent a real-time signal, up to `attempts` times `interval_us` microseconds apart; the
/// handler, on that thread, looks at the registers it was interrupted with. The answer is yes when, for one of
/// the signals, the thread had just returned from a `futex` system call of operation `FUTEX_LOCK_PI` that
/// answered `EDEADLK` (on x86-64 the futex word must name the thread as its owner too). A thread that spins so
/// spends most of its time in that call, so a few signals are enough.
///
/// Returns 1 when the thread was seen so, 0 when it was not, and -1 when this cannot be told here: another
/// architecture than x86-64 or AArch64, or no free real-time signal to install the handler on. The handler is
/// installed on first use, on the first real-time signal from `SIGRTMIN + 7` whose handler is the default one,
/// with `SA_RESTART` (and again on another one when the program has taken that signal since); it saves and
/// restores `errno`. Thread-safe: probes are serialized.
int parallelvm_thread_spins_on_own_pi_futex(pid_t thread, int attempts, int interval_us);

#endif
