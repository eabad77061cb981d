import CRunStatus
import Foundation
import Glibc
import Synchronization

/// What interrupted the run: SIGINT (Ctrl-C) or SIGTERM (`kill`, mpirun passing one on, Slurm's scancel or
/// walltime).
public struct Interrupt: Sendable, Hashable, CustomStringConvertible {
    /// The signal number.
    public let signal: Int32
    /// The exit status the run ends with: 128 plus the signal number (130 for SIGINT, 143 for SIGTERM).
    public var exitStatus: Int32 { 128 + signal }

    public var description: String {
        switch signal {
        case SIGINT: "SIGINT"
        case SIGTERM: "SIGTERM"
        default: "signal \(signal)"
        }
    }
}

/// Turns SIGINT and SIGTERM into a call on a thread of our own.
///
/// A signal handler may only do async-signal-safe work, so the handler writes the signal number into a
/// pipe and a thread reading the pipe runs the action. This works whichever thread the kernel picks to
/// take the signal. A second signal while the action runs ends the process at once.
enum Interrupts {
    nonisolated(unsafe) private static var writeEnd: Int32 = -1
    private static let installed = Mutex(false)

    /// Installs the handlers; `action` runs once, on the first signal, and must end the process.
    static func install(_ action: @escaping @Sendable (Interrupt) -> Never) {
        let first = installed.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        guard first else { return }
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { return }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        writeEnd = ends[1]
        let readEnd = ends[0]
        var handler = sigaction()
        handler.__sigaction_handler.sa_handler = { signal in
            if Interrupts.pending {
                parallelvm_run_status_exiting(128 + signal)
                _exit(128 + signal)
            }
            Interrupts.pending = true
            var byte = UInt8(truncatingIfNeeded: signal)
            _ = write(Interrupts.writeEnd, &byte, 1)
        }
        sigemptyset(&handler.sa_mask)
        handler.sa_flags = SA_RESTART
        sigaction(SIGINT, &handler, nil)
        sigaction(SIGTERM, &handler, nil)
        let thread = Thread {
            var byte: UInt8 = 0
            while read(readEnd, &byte, 1) != 1 {}
            action(Interrupt(signal: Int32(byte)))
        }
        thread.name = "ParallelVM.interrupts"
        thread.start()
    }

    /// Set by the handler: a signal is being handled (only ever written in the handler).
    nonisolated(unsafe) private static var pending = false
}
