import CRunStatus
import Foundation

/// Ends the process when a wait that could last for ever does not end in time.
///
/// Some of Open MPI's waits have no limit of their own: `MPI_Init` when another rank ended before it
/// started MPI, and `MPI_Finalize` after a rank was lost. A timer bounds such a wait: unless it is
/// cancelled within its limit, it prints its message, records status 1 for the launcher and exits 1.
final class ExitTimer: Sendable {
    private let cancelled = DispatchSemaphore(value: 0)

    /// Starts a timer of `limit` seconds. When it runs out, `message` says what did not end in time, or
    /// returns nil when the wait is over after all, and the process goes on.
    init(limit: Double, name: String, message: @escaping @Sendable () -> String?) {
        let cancelled = cancelled
        let thread = Thread {
            guard cancelled.wait(timeout: .now() + limit) == .timedOut, let text = message() else { return }
            FileHandle.standardError.write(Data((text + "\n").utf8))
            fflush(nil)
            parallelvm_run_status_exiting(1)
            _exit(1)
        }
        thread.name = name
        thread.start()
    }

    /// The wait ended in time: the timer stops.
    func cancel() { cancelled.signal() }
}
