import Foundation
import Synchronization

/// Ends a rank whose start does not complete in time.
///
/// Under Open MPI's recovery (on by default in `scripts/mpirun.sh`) a rank that ends early does not end the
/// job. One that ends before it starts MPI leaves every other rank waiting in `MPI_Init` for ever, and one
/// that ends before it reports to the spawner leaves the spawner waiting for its report. So from the
/// moment a rank starts MPI until its part of the handshake is done (the spawner: every worker has
/// reported; a worker: the spawner has answered), this watchdog gives it `PARALLELVM_START_TIMEOUT`
/// seconds (60 by default), then says what it was waiting for and exits 1.
enum StartWatchdog {
    static let variable = "PARALLELVM_START_TIMEOUT"
    static let defaultLimit = 60.0

    private struct State {
        var timer: ExitTimer?
        var finished = false
        var waitingFor = ""
    }
    private static let state = Mutex(State())

    /// The limit in seconds from `PARALLELVM_START_TIMEOUT`, or the default.
    static func limit(from environment: [String: String]) throws(VMError) -> Double {
        guard let text = environment[variable], !text.isEmpty else { return defaultLimit }
        guard let seconds = Double(text), seconds.isFinite, seconds > 0 else {
            throw VMError(.configuration, "\(variable)=\(text) is not a positive number of seconds")
        }
        return seconds
    }

    /// Starts watching this rank's start, once per process.
    static func start(limit: Double, waitingFor text: String) {
        state.withLock { state in
            state.waitingFor = text
            guard state.timer == nil else { return }
            state.timer = ExitTimer(limit: limit, name: "ParallelVM.start-watchdog") {
                let (done, waitingFor) = Self.state.withLock { ($0.finished, $0.waitingFor) }
                if done { return nil }
                let rank = ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_RANK"] ?? "?"
                let host = ProcessInfo.processInfo.hostName
                return
                    "ParallelVM rank \(rank) on \(host): \(waitingFor) within \(limit) s of the start; ending (\(variable) sets this limit)"
            }
        }
    }

    /// What the rank waits for now, for the message should the time run out.
    static func waiting(for text: String) {
        state.withLock { $0.waitingFor = text }
    }

    /// The start is complete: the watchdog stops.
    static func finish() {
        let timer = state.withLock { state -> ExitTimer? in
            defer { state.finished = true }
            return state.finished ? nil : state.timer
        }
        timer?.cancel()
    }
}
