import Foundation
import Glibc
import ParallelVMStorage

/// Appends records to a results journal, batching the writes so that journaling costs a dispatch little.
///
/// Flushing and syncing (the defaults of `Policy`):
/// - `append` only encodes the record into a memory buffer. The buffer is written with one `write(2)`
///   when it holds the records of `maxRecords` (1024) jobs or `maxBytes` (1 MiB), or when `flushInterval` (5 ms) has
///   passed since its oldest record: on the next append, or from the writer's background thread when no
///   append comes. So a record is in the file (and survives the process being killed) at most about 5 ms
///   after `append` returns.
/// - The file is `fdatasync`ed from the background thread at most every `syncInterval` (200 ms) while
///   there are written but unsynced records, and at once after `startSync()`; always by `sync()`, and by
///   `close()` when something was written since the last sync. So a record survives
///   a host crash or power loss at most about 205 ms after `append` returns.
/// - `flush()` and `sync()` force the two steps now, for a caller that must know a record is kept.
///
/// After a crash at most the last record is torn; opening the journal again truncates that tail before
/// anything is appended, so the file never holds a torn record in its middle. For the same reason a failed
/// write makes the writer refuse every later append: a later write must not land after a partial record.
/// One process writes a journal at a time; `Experiment.open()` takes the experiment's lock for that.
/// `close()` must be called: the background thread keeps the writer alive until then.
package final class JournalWriter: @unchecked Sendable {
    // @unchecked: every mutable field below is read and written only while `condition` is locked, except
    // `fd`, which is set once in init and closed only after the background thread has ended.

    /// When the buffer is written and the file synced; see the type's documentation.
    package struct Policy: Sendable, Hashable {
        /// Jobs whose records are buffered before a write.
        package var maxRecords = 1024
        /// Bytes buffered before a write.
        package var maxBytes = 1 << 20
        /// Longest time a record stays in the buffer.
        package var flushInterval: Duration = .milliseconds(5)
        /// Longest time a written record stays unsynced.
        package var syncInterval: Duration = .milliseconds(200)

        package init() {}
    }

    /// The journal file.
    package let path: String
    /// What was in the journal when it was opened (its torn tail, if any, has been cut off since).
    package let recovered: JournalContents

    private let experiment: String
    private let policy: Policy
    private let fd: Int32
    private let flushNanos: UInt64
    private let syncNanos: UInt64
    private let condition = NSCondition()

    private var buffer: [UInt8] = []
    private var pending = 0
    private var firstPendingAt: UInt64 = 0
    private var unsynced = false
    /// Whether `startSync()` asked the background thread to sync now.
    private var syncRequested = false
    private var lastSyncAt: UInt64 = 0
    private var closed = false
    private var threadRunning = false
    /// Whether the background thread waits without a time limit, for an append to signal it; while
    /// records keep coming it wakes by itself (see `BatchedLineFile`: a signal per flush cost more than
    /// the records).
    private var threadSleeping = false
    /// When the background thread wakes by itself next (monotonic nanoseconds; meaningless while it sleeps).
    private var threadWakesAt: UInt64 = 0
    private var failure: ExperimentError?
    private var appended = 0
    private var writes = 0
    private var syncs = 0

    /// Opens (creating it when missing) the journal at `path` for appending.
    ///
    /// A torn last record left by a crash is cut off; damage before the last record throws
    /// `.corruptJournal`, since appending after it would hide it.
    package convenience init(path: String, experiment: String, policy: Policy = Policy()) throws(ExperimentError) {
        try self.init(directory: AT_FDCWD, name: path, path: path, experiment: experiment, policy: policy)
    }

    /// Opens the journal `name` of the open folder `directory`; `path` is its full path for messages.
    init(directory: Int32, name: String, path: String, experiment: String, policy: Policy) throws(ExperimentError) {
        self.path = path
        self.experiment = experiment
        self.policy = policy
        flushNanos = Self.nanoseconds(policy.flushInterval)
        syncNanos = Self.nanoseconds(policy.syncInterval)
        fd = try SystemCall.value("open") {
            openat(directory, name, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0o644)
        }
        .get("opened", experiment: experiment, path: path, subject: "journal")
        do throws(ExperimentError) {
            let bytes = try SystemCall.readAll(fd).get("read", experiment: experiment, path: path, subject: "journal")
            let contents = bytes.withUnsafeBytes { JournalReader.parse($0) }
            if case .corruption(let offset, let reason)? = contents.problem {
                throw ExperimentError(
                    .corruptJournal,
                    experiment: experiment,
                    path: path,
                    reason: "is damaged at byte \(offset) (\(reason)); \(contents.records.count) records before it "
                        + "are readable, the \(contents.ignoredBytes) bytes from there on are not. Move the journal "
                        + "away to start afresh, or truncate it to \(contents.validLength) bytes to keep those records",
                    subject: "journal"
                )
            }
            recovered = contents
            if contents.problem != nil || bytes.isEmpty {
                try SystemCall.value("ftruncate") { ftruncate(fd, off_t(contents.validLength)) }
                    .get("truncated after its torn tail", experiment: experiment, path: path, subject: "journal")
                if contents.validLength == 0 {
                    try JournalFormat.fileHeader.withUnsafeBytes { SystemCall.writeAll(fd, $0) }
                        .get("written", experiment: experiment, path: path, subject: "journal")
                    unsynced = true
                }
                // A cut tail is synced before anything is appended after it; a new journal's header goes
                // to the disk with the first records (see `Policy.syncInterval`).
                if !bytes.isEmpty {
                    try SystemCall.value("fsync") { fsync(fd) }
                        .get("synced", experiment: experiment, path: path, subject: "journal")
                }
            }
        } catch {
            SystemCall.close(fd)
            throw error
        }
        buffer.reserveCapacity(min(policy.maxBytes, 1 << 20) + 4096)
        lastSyncAt = Self.now()
        threadRunning = true
        let thread = Thread { [self] in backgroundLoop() }
        thread.name = "journal writer"
        thread.start()
    }

    /// Buffers `record`; writes the buffer when the policy says so. Throws when an earlier write failed,
    /// when the writer is closed, or when the record does not fit the format.
    package func append(_ record: JournalRecord) throws(ExperimentError) {
        condition.lock()
        defer { condition.unlock() }
        try appendLocked(record)
        try flushIfDueLocked()
    }

    /// Buffers several records under one lock (the results of one chunk).
    package func append<Records: Sequence<JournalRecord>>(contentsOf records: Records) throws(ExperimentError) {
        condition.lock()
        defer { condition.unlock() }
        for record in records {
            try appendLocked(record)
            if pending >= policy.maxRecords || buffer.count >= policy.maxBytes { try flushLocked() }
        }
        try flushIfDueLocked()
    }

    /// Buffers an array of records under one lock: the generic form, compiled for a caller in another
    /// module, would reach each record through the sequence's witnesses.
    package func append(contentsOf records: [JournalRecord]) throws(ExperimentError) {
        condition.lock()
        defer { condition.unlock() }
        for record in records {
            try appendLocked(record)
            if pending >= policy.maxRecords || buffer.count >= policy.maxBytes { try flushLocked() }
        }
        try flushIfDueLocked()
    }

    /// Buffers a batch of records and groups (the results that came in together) under one lock.
    package func append(_ batch: consuming JournalBatch) throws(ExperimentError) {
        var batch = batch
        try append(emptying: &batch)
    }

    /// ``append(_:)`` that empties `batch` and leaves it its storage, so that a caller that journals batch
    /// after batch allocates none (also when this throws).
    package func append(emptying batch: inout JournalBatch) throws(ExperimentError) {
        guard !batch.isEmpty else { return }
        defer { batch.removeAll() }
        let jobs = batch.jobs
        let bytes = batch.sealedSlice()
        condition.lock()
        defer { condition.unlock() }
        try requireWritableLocked()
        buffer.append(contentsOf: bytes)
        notePendingLocked(jobs: jobs)
        if pending >= policy.maxRecords || buffer.count >= policy.maxBytes { try flushLocked() }
        try flushIfDueLocked()
    }

    /// The error for a job whose record the format cannot hold (a field exceeds its limits).
    package func refusal(ofJob index: Int) -> ExperimentError {
        ExperimentError(
            .invalidRecord,
            experiment: experiment,
            path: path,
            reason: "cannot hold the record of job #\(index): a field exceeds the format's limits",
            subject: "journal"
        )
    }

    /// Writes the buffered records now.
    package func flush() throws(ExperimentError) {
        condition.lock()
        defer { condition.unlock() }
        if let failure { throw failure }
        try flushLocked()
    }

    /// Writes the buffered records and syncs the file now: every record appended so far is on disk.
    package func sync() throws(ExperimentError) {
        try flush()
        try syncFile()
    }

    /// Writes the buffered records now and has the background thread sync the file, without waiting for
    /// it: a caller that has other files to sync overlaps the syncs. ``close()`` waits for this sync and
    /// syncs again only what was written after it began.
    package func startSync() throws(ExperimentError) {
        condition.lock()
        defer { condition.unlock() }
        if let failure { throw failure }
        try flushLocked()
        guard unsynced, !closed else { return }
        syncRequested = true
        condition.signal()
    }

    /// Writes, syncs and closes the journal; later appends throw `.notOpen`.
    package func close() throws(ExperimentError) {
        condition.lock()
        if closed {
            condition.unlock()
            return
        }
        var firstError: ExperimentError? = failure
        if firstError == nil {
            do throws(ExperimentError) { try flushLocked() } catch { firstError = error }
        }
        closed = true
        condition.broadcast()
        // The background thread ends after any sync it is running.
        while threadRunning { condition.wait() }
        // A sync the background thread ran (`startSync()`) after the last write leaves nothing to sync.
        let needsSync = unsynced
        if firstError == nil { firstError = failure }
        condition.unlock()
        if firstError == nil && needsSync {
            do throws(ExperimentError) { try syncFile() } catch { firstError = error }
        }
        SystemCall.close(fd)
        if let firstError { throw firstError }
    }

    /// Records appended, `write(2)` calls and syncs so far (for tests and the report of a run).
    package var statistics: (records: Int, writes: Int, syncs: Int) {
        condition.lock()
        defer { condition.unlock() }
        return (appended, writes, syncs)
    }

    // MARK: - Under the lock

    private func appendLocked(_ record: JournalRecord) throws(ExperimentError) {
        try requireWritableLocked()
        guard JournalFormat.append(record, to: &buffer) else { throw refusal(ofJob: record.index) }
        notePendingLocked(jobs: 1)
    }

    /// Throws when an earlier write failed or the writer is closed.
    private func requireWritableLocked() throws(ExperimentError) {
        if let failure { throw failure }
        guard !closed else {
            throw ExperimentError(.notOpen, experiment: experiment, path: path, reason: "is closed", subject: "journal")
        }
    }

    /// Counts `jobs` more records in the buffer; the first after a write starts the flush interval.
    private func notePendingLocked(jobs: Int) {
        let wasEmpty = pending == 0
        pending += jobs
        appended += jobs
        if wasEmpty {
            firstPendingAt = Self.now()
            wakeThreadIfLateLocked()
        }
    }

    /// Signals the background thread when it would wake too late to write the oldest pending record in
    /// time: when it sleeps, or waits for a sync that is due later.
    private func wakeThreadIfLateLocked() {
        if threadSleeping || threadWakesAt > firstPendingAt &+ flushNanos { condition.signal() }
    }

    private func flushIfDueLocked() throws(ExperimentError) {
        guard pending > 0 else { return }
        if pending >= policy.maxRecords || buffer.count >= policy.maxBytes || Self.now() &- firstPendingAt >= flushNanos
        {
            try flushLocked()
        }
    }

    /// One `write(2)` of the whole buffer. A failure is kept and makes every later call fail.
    private func flushLocked() throws(ExperimentError) {
        guard pending > 0 else { return }
        let written = buffer.withUnsafeBytes { SystemCall.writeAll(fd, $0) }
        buffer.removeAll(keepingCapacity: true)
        pending = 0
        writes += 1
        if let error = written.failure {
            let experimentError = error.experimentError(
                "appended to",
                experiment: experiment,
                path: path,
                subject: "journal"
            )
            failure = experimentError
            throw experimentError
        }
        unsynced = true
        if threadSleeping { condition.signal() }
    }

    // MARK: - Syncing and the background thread

    /// `fdatasync` outside the lock (it can take long on shared storage, and appends must not wait for it).
    private func syncFile() throws(ExperimentError) {
        condition.lock()
        unsynced = false
        condition.unlock()
        let synced = SystemCall.value("fdatasync") { fdatasync(fd) }
        condition.lock()
        defer { condition.unlock() }
        lastSyncAt = Self.now()
        syncs += 1
        if let error = synced.failure {
            let experimentError = error.experimentError(
                "synced",
                experiment: experiment,
                path: path,
                subject: "journal"
            )
            if failure == nil { failure = experimentError }
            throw experimentError
        }
    }

    /// Writes records that waited `flushInterval` and syncs written records every `syncInterval`.
    private func backgroundLoop() {
        condition.lock()
        while !closed && failure == nil {
            let now = Self.now()
            var wake: UInt64? = nil
            if pending > 0 {
                let due = firstPendingAt &+ flushNanos
                if now >= due {
                    try? flushLocked()
                    continue
                }
                wake = due
            }
            if unsynced {
                let due = syncRequested ? now : lastSyncAt &+ syncNanos
                if now >= due {
                    syncRequested = false
                    condition.unlock()
                    try? syncFile()
                    condition.lock()
                    continue
                }
                wake = min(wake ?? due, due)
            }
            if let wake {
                threadWakesAt = wake
                _ = condition.wait(until: Date(timeIntervalSinceNow: Double(wake &- now) / 1e9))
            } else {
                threadSleeping = true
                condition.wait()
                threadSleeping = false
            }
        }
        threadRunning = false
        condition.broadcast()
        condition.unlock()
    }

    /// Monotonic nanoseconds.
    @inline(__always)
    private static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    private static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(seconds, 0)) * 1_000_000_000 + UInt64(max(attoseconds, 0) / 1_000_000_000)
    }
}
