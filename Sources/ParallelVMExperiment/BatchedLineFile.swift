import Foundation
import Glibc
import ParallelVMStorage

/// A text file that lines are appended to in batches: `write` only adds to a memory buffer, which goes
/// to the file with one `write(2)` when it holds `maxBytes`, or `flushInterval` after its oldest line (on
/// the next `write`, or from a background thread when none comes), and on `flush()` and `close()`.
///
/// For `experiment.log`, which gets a line per finished job: a line each `write(2)` cost a dispatch of
/// tiny jobs more than the jobs did. A killed process loses at most the lines of its last `flushInterval`.
/// `close()` must be called: the background thread keeps the file alive until then.
final class BatchedLineFile: @unchecked Sendable {
    // @unchecked: every mutable field is read and written only while `condition` is locked; `fd` is set
    // once in init and closed only after the background thread has ended.
    let path: String
    private let experiment: String
    private let subject: String
    private let fd: Int32
    private let flushNanos: UInt64
    private let maxBytes: Int
    private let condition = NSCondition()
    private var buffer: [UInt8] = []
    private var firstPendingAt: UInt64 = 0
    private var closed = false
    private var threadRunning = false
    /// Whether the background thread waits without a time limit, for `write` to signal it. While lines
    /// keep coming it wakes by itself every `flushInterval` instead: a signal per flush, and the thread
    /// taking the lock right after it, cost a dispatch of tiny jobs more than its log lines did.
    private var threadSleeping = false
    private var failure: ExperimentError?

    /// Opens (creating it when missing) the file `name` of the open folder `directory`.
    init(
        directory: Int32,
        name: String,
        path: String,
        experiment: String,
        subject: String,
        flushInterval: Duration = .milliseconds(5),
        maxBytes: Int = 64 << 10
    ) throws(ExperimentError) {
        self.path = path
        self.experiment = experiment
        self.subject = subject
        let (seconds, attoseconds) = flushInterval.components
        flushNanos = UInt64(max(seconds, 0)) * 1_000_000_000 + UInt64(max(attoseconds, 0) / 1_000_000_000)
        self.maxBytes = maxBytes
        fd = try SystemCall.value("open") {
            openat(directory, name, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o644)
        }.get("opened", experiment: experiment, path: path, subject: subject)
        buffer.reserveCapacity(maxBytes + 4096)
        threadRunning = true
        let thread = Thread { [self] in backgroundLoop() }
        thread.name = "experiment log writer"
        thread.start()
    }

    /// Buffers `text` (whole lines, each ending in a newline); writes the buffer when it is due.
    func write(_ text: String) throws(ExperimentError) {
        condition.lock()
        defer { condition.unlock() }
        if let failure { throw failure }
        guard !closed else {
            throw ExperimentError(.notOpen, experiment: experiment, path: path, reason: "is closed", subject: subject)
        }
        let wasEmpty = buffer.isEmpty
        buffer.append(contentsOf: text.utf8)
        if wasEmpty {
            firstPendingAt = Self.now()
            if threadSleeping { condition.signal() }
        }
        if buffer.count >= maxBytes || Self.now() &- firstPendingAt >= flushNanos { try flushLocked() }
    }

    /// Writes the buffered lines now.
    func flush() throws(ExperimentError) {
        condition.lock()
        defer { condition.unlock() }
        if let failure { throw failure }
        try flushLocked()
    }

    /// Writes the buffered lines and closes the file; later writes throw `.notOpen`. Closing twice does nothing.
    func close() {
        condition.lock()
        if closed {
            condition.unlock()
            return
        }
        if failure == nil { try? flushLocked() }
        closed = true
        condition.broadcast()
        while threadRunning { condition.wait() }
        condition.unlock()
        SystemCall.close(fd)
    }

    private func flushLocked() throws(ExperimentError) {
        guard !buffer.isEmpty else { return }
        let written = buffer.withUnsafeBytes { SystemCall.writeAll(fd, $0) }
        buffer.removeAll(keepingCapacity: true)
        if let error = written.failure {
            let experimentError = error.experimentError(
                "appended to",
                experiment: experiment,
                path: path,
                subject: subject
            )
            failure = experimentError
            throw experimentError
        }
    }

    private func backgroundLoop() {
        condition.lock()
        // Turns without lines in a row; after a few, the thread sleeps until signalled.
        var idleTurns = 0
        while !closed && failure == nil {
            if buffer.isEmpty {
                idleTurns += 1
                if idleTurns > 20 {
                    threadSleeping = true
                    condition.wait()
                    threadSleeping = false
                    idleTurns = 0
                } else {
                    _ = condition.wait(until: Date(timeIntervalSinceNow: Double(flushNanos) / 1e9))
                }
                continue
            }
            idleTurns = 0
            let now = Self.now()
            let due = firstPendingAt &+ flushNanos
            if now >= due {
                try? flushLocked()
            } else {
                _ = condition.wait(until: Date(timeIntervalSinceNow: Double(due &- now) / 1e9))
            }
        }
        threadRunning = false
        condition.broadcast()
        condition.unlock()
    }

    private static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }
}
