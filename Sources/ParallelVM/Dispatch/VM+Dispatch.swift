extension VM {
    /// Runs jobs in the VM's worker slots, keeping every slot busy, and returns their results in job order
    /// (PyOPUS `cOS.dispatch`).
    ///
    /// ```swift
    /// let results = try await vm.dispatch((0..<100).map { Job(double, args: $0) })
    /// print(results.map { $0.value! })
    /// ```
    ///
    /// With a collector, the next job is taken from `jobs` only when a slot is free (plus one unit per slot
    /// waiting, so that a slot that frees starts its next job at once); a sequence that produces jobs
    /// lazily can therefore decide what to produce from the results the collector has seen so far.
    /// Without a collector nothing sees results before the dispatch returns, so it takes jobs further
    /// ahead (two chunks per slot, or 128 jobs per slot with a chunk size of 1) and hands results over
    /// in batches, which keeps tiny jobs near the rate of plain
    /// ``spawnFunction(_:args:count:targets:sendBack:timeout:)``.
    ///
    /// The dispatch owns the VM's task messages while it runs (see ``Farm``): do not call
    /// ``receiveMessage(timeout:)`` from another task meanwhile. Messages it does not expect (user
    /// messages, results of tasks you spawned yourself) stay queued for ``receiveMessage(timeout:)``.
    ///
    /// - Parameters:
    ///   - jobs: the jobs; their positions are the ``JobResult/index`` values.
    ///   - remote: false runs the jobs in this process even when workers are available. Without workers
    ///     (one process without local slots) they run in this process anyway.
    ///   - chunkSize: how many jobs a worker gets at once. ``ChunkSize/auto`` (the default) picks sizes from
    ///     the measured job times: large chunks for tiny jobs, one job at a time for long ones, and shrinking
    ///     chunks at the end so that no worker idles while another holds a large chunk. A fixed size
    ///     amortises the per-job messages by that factor; such a chunk is sent when it is full or `jobs`
    ///     ends. Ignored when jobs run in this process.
    ///   - failFast: on the first failed job, start no more jobs, wait for the running ones (dropping their
    ///     results) and throw its ``JobError``. When false, failed jobs are failed results and the rest go on.
    ///   - progress: show `done/total, jobs per second, time left` on standard error, rewritten in place,
    ///     when standard error is a terminal.
    ///   - timeout: seconds each job may run on a worker before it is killed and fails with
    ///     ``JobError/Code-swift.enum/timedOut`` (a job's own ``Job/timeout`` wins); nil: no limit.
    ///     Needs ``Isolation/process``.
    ///   - retries: how many more times a job whose task crashed, timed out or lost its worker starts again,
    ///     on another slot when one is free (0: never). ``JobResult/attempts`` says how many starts it took.
    ///     A job whose worker rank or host was lost starts again up to 3 times even with 0, as it is no
    ///     fault of the job's.
    ///   - collectResults: false returns an empty array, for dispatches whose collector keeps what it needs.
    ///   - experiment: keep every finished job's result in this experiment's journal, and return the
    ///     journaled result instead of running a job whose index, function and arguments match a record
    ///     of an earlier run (``JobResult/reused``). The dispatch opens the experiment (throwing its
    ///     `ExperimentError` when another run holds it), and closes it when it returns or throws;
    ///     `Experiment.lastRun` then says how many jobs ran and how many were reused. See the README's
    ///     "Experiments and resume".
    ///   - rerunFailed: with an `experiment`, run a job again whose journaled result is a failure (the
    ///     default); false returns the journaled failure as a ``JobError/Code-swift.enum/failed`` result.
    ///   - collector: called with each result as its job finishes, in completion order, on the caller's
    ///     actor. Return false to start no more jobs: the running ones are still waited for and still
    ///     passed to the collector (whose answer no longer matters), so it sees exactly the jobs returned.
    ///     An error it throws stops the dispatch as `failFast` does and is rethrown. Reused results are
    ///     passed to it too, as the dispatch reaches their jobs.
    /// - Returns: the results of the jobs that were started (or reused), in job order.
    @discardableResult
    public nonisolated(nonsending) func dispatch<Value>(
        _ jobs: some Sequence<Job<Value>>,
        remote: Bool = true,
        chunkSize: ChunkSize = .auto,
        failFast: Bool = false,
        progress: Bool = false,
        timeout: Double? = nil,
        retries: Int = 0,
        collectResults: Bool = true,
        experiment: Experiment? = nil,
        rerunFailed: Bool = true,
        collector: ((JobResult<Value>) async throws -> Bool)? = nil
    ) async throws -> [JobResult<Value>] {
        if let experiment {
            return try await dispatchJournaled(
                jobs,
                experiment: experiment,
                rerunFailed: rerunFailed,
                remote: remote,
                chunkSize: chunkSize,
                failFast: failFast,
                progress: progress,
                timeout: timeout,
                retries: retries,
                collectResults: collectResults,
                collector: collector
            )
        }
        var run = try DispatchRun(
            vm: self,
            remote: remote,
            chunkSize: chunkSize,
            inputOpen: true,
            failFast: failFast,
            timeout: timeout,
            retries: retries,
            collectResults: collectResults,
            collector: collector,
            progress: ProgressLine(enabled: progress, total: (jobs as? any Collection)?.count)
        )
        if let count = (jobs as? any Collection)?.count { run.expect(count) }
        let farm = run.farm
        let unitSize = run.unitSize
        var iterator = jobs.makeIterator()
        var exhausted = false
        do {
            while true {
                // As many units as there is room for go to the farm at once: one lock, one wake-up.
                var room = exhausted ? 0 : farm.engine.room(unitSize: unitSize)
                while room > 0 {
                    let wanted = room * unitSize
                    var batch: [FarmJob] = []
                    batch.reserveCapacity(wanted)
                    while batch.count < wanted, let job = iterator.next() { batch.append(job.storage) }
                    exhausted = batch.count < wanted
                    _ = farm.submit(batch, unitSize: unitSize)
                    if exhausted {
                        // The chunker shrinks the last chunks once it knows that no more jobs come.
                        farm.finishInput()
                        break
                    }
                    room = farm.engine.room(unitSize: unitSize)
                }
                guard let results = try await farm.joinBatch() else { break }
                try await run.take(results)
            }
        } catch is CancellationError {
            // A cancelled dispatch does not wait for its running jobs: they are killed.
            await farm.cancel()
            run.progress.finish()
            throw CancellationError()
        } catch {
            await farm.close()
            run.progress.finish()
            throw error
        }
        await farm.close()
        return try run.finish()
    }

    /// Runs jobs produced by an `AsyncSequence` in the VM's worker slots and returns their results in job
    /// order; see the `Sequence` form of `dispatch` for the rest.
    ///
    /// The sequence is consumed by a task of its own, which takes the next job only when a slot is free,
    /// while the results are handled by the calling task: a sequence fed by the collector (jobs decided
    /// from earlier results) works. With a fixed `chunkSize` above 1 it must produce a full chunk (or end)
    /// before the chunk is sent, so such a sequence should keep ``ChunkSize/auto`` or 1: with
    /// ``ChunkSize/auto`` jobs are queued one by one, and only jobs already waiting are sent together.
    /// When the dispatch stops early, the consuming task is cancelled; a sequence that ignores
    /// cancellation keeps the dispatch waiting.
    ///
    /// With an `experiment`, a job's index is its position in the sequence: a later run resumes only when
    /// the sequence produces the same jobs in the same order (a job whose function or arguments differ
    /// from its record runs again). Reused results reach the collector as the sequence produces their jobs.
    @discardableResult
    public nonisolated(nonsending) func dispatch<Value, Jobs: AsyncSequence & SendableMetatype>(
        _ jobs: sending Jobs,
        remote: Bool = true,
        chunkSize: ChunkSize = .auto,
        failFast: Bool = false,
        progress: Bool = false,
        timeout: Double? = nil,
        retries: Int = 0,
        collectResults: Bool = true,
        experiment: Experiment? = nil,
        rerunFailed: Bool = true,
        collector: ((JobResult<Value>) async throws -> Bool)? = nil
    ) async throws -> [JobResult<Value>] where Jobs.Element == Job<Value> {
        if let experiment {
            return try await dispatchJournaled(
                asyncJobs: jobs,
                experiment: experiment,
                rerunFailed: rerunFailed,
                remote: remote,
                chunkSize: chunkSize,
                failFast: failFast,
                progress: progress,
                timeout: timeout,
                retries: retries,
                collectResults: collectResults,
                collector: collector
            )
        }
        var run = try DispatchRun(
            vm: self,
            remote: remote,
            chunkSize: chunkSize,
            inputOpen: true,
            failFast: failFast,
            timeout: timeout,
            retries: retries,
            collectResults: collectResults,
            collector: collector,
            progress: ProgressLine(enabled: progress, total: nil)
        )
        let farm = run.farm
        let unitSize = run.unitSize
        let handover = Handover(value: jobs)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    var iterator = handover.value.makeAsyncIterator()
                    while true {
                        try await farm.waitForFreeSlot()
                        if farm.isStopped { break }
                        var unit: [FarmJob] = []
                        while unit.count < unitSize, let job = try await iterator.next() { unit.append(job.storage) }
                        _ = farm.submit(unit)
                        if unit.count < unitSize { break }
                    }
                    farm.finishInput()
                } catch {
                    farm.finishInput()
                    // Cancelled because the dispatch stopped: not an error of the sequence.
                    if farm.isStopped { return }
                    throw error
                }
            }
            do {
                while let results = try await farm.joinBatch() { try await run.take(results) }
            } catch {
                farm.stopSpawning()
                group.cancelAll()
                if error is CancellationError { await farm.cancel() } else { await farm.close() }
                run.progress.finish()
                throw error
            }
            farm.stopSpawning()
            group.cancelAll()
            do {
                try await group.waitForAll()
            } catch {
                await farm.close()
                run.progress.finish()
                throw error
            }
        }
        await farm.close()
        return try run.finish()
    }

    /// Runs one job, on a worker when there is one, and returns its value (PyOPUS `cOS.dispatchSingle`).
    ///
    /// Throws the job's ``JobError`` when it fails.
    public nonisolated(nonsending) func dispatchSingle<Value>(
        _ job: Job<Value>,
        remote: Bool = true,
        timeout: Double? = nil
    ) async throws -> Value {
        let results = try await dispatch(CollectionOfOne(job), remote: remote, timeout: timeout)
        return try results[0].get()
    }

    fileprivate static func checkRetries(_ retries: Int) throws(VMError) -> Int {
        guard retries >= 0 else {
            throw VMError(.invalidArgument, "dispatch: retries must be 0 or more, not \(retries)")
        }
        return retries
    }

    fileprivate static func checkChunkSize(_ chunkSize: ChunkSize) throws(VMError) {
        if let jobs = chunkSize.fixedJobs, jobs < 1 {
            throw VMError(.invalidSpawn, "dispatch: chunkSize must be at least 1, not \(jobs)")
        }
    }
}

/// Moves the job sequence into the task that consumes it.
///
/// Invariant for @unchecked Sendable: the dispatch receives the sequence as a `sending` parameter, so its
/// caller keeps no access, and the dispatch touches it only inside the consuming task.
private struct Handover<Jobs>: @unchecked Sendable {
    let value: Jobs
}

/// What a dispatch keeps while it runs: results by index, the collector, fail-fast and early-stop state.
struct DispatchRun<Value: Codable & Sendable> {
    let farm: Farm<Value>
    let failFast: Bool
    let collectResults: Bool
    let collector: ((JobResult<Value>) async throws -> Bool)?
    var progress: ProgressLine
    /// The results taken, in the order they came (unspecialised generic code copies a result through
    /// its value witnesses, so each is stored once and moved at most once more).
    var arrived: [JobResult<Value>] = []
    /// Where each job's result is in `arrived`, by job index; -1: not there.
    var positions: [Int] = []
    var firstFailure: JobError?
    var done = 0

    /// How many jobs the dispatch puts in one unit when it submits: a fixed chunk size, or 1 when the farm
    /// joins queued jobs into chunks itself (``ChunkSize/auto``) or runs them in this process.
    let unitSize: Int

    /// Starts the farm a dispatch runs on. With a collector: one unit queued ahead per slot, and no more
    /// than two units per slot finished but not yet taken, so a fast feeder cannot run ahead of the
    /// results. Without one, a deeper queue and results handed over in batches (see the `Sequence` form
    /// of `VM.dispatch`), at most 20 ms late; `journaled`: at most 5 ms late, so that a finished job's
    /// record is in the journal's buffer within 5 ms of its arrival (the README's flush policy).
    init(
        vm: VM,
        remote: Bool,
        chunkSize: ChunkSize,
        inputOpen: Bool,
        failFast: Bool,
        timeout: Double?,
        retries: Int,
        collectResults: Bool,
        collector: ((JobResult<Value>) async throws -> Bool)?,
        progress: ProgressLine,
        journaled: Bool = false
    ) throws {
        try VM.checkChunkSize(chunkSize)
        let batched = collector == nil
        let fixed = chunkSize.fixedJobs
        let lookahead = batched ? (fixed.map { max(2, 128 / $0) } ?? 2) : 1
        self.farm = try Farm<Value>(
            vm,
            remote: remote,
            lookaheadPerSlot: lookahead,
            unjoinedLimitPerSlot: batched ? nil : 2 * (fixed ?? 1),
            inputOpen: inputOpen,
            timeout: try VM.checkTimeout(timeout, for: "dispatch"),
            retries: try VM.checkRetries(retries),
            // A dispatch timeout sends one job at a time: a chunk may only run as long as its jobs' limits
            // together, which would let a job that hangs hold its chunk-mates that long.
            chunker: fixed == nil && timeout == nil ? AutoChunker() : nil,
            lookaheadInChunks: batched,
            deferHandover: batched,
            // A journaled result reaches the journal's buffer within 5 ms of its arrival.
            deferredHandoverLimit: journaled ? 0.005 : 0.02,
            keysJobs: journaled
        )
        self.unitSize = farm.isRemote ? (fixed ?? 1) : 1
        self.failFast = failFast
        self.collectResults = collectResults
        self.collector = collector
        self.progress = progress
    }

    /// Makes room for the results of `count` jobs at once, when the dispatch knows how many it has: the
    /// arrays would otherwise be copied each time they grow.
    mutating func expect(_ count: Int) {
        guard collectResults, count > 0, positions.isEmpty else { return }
        arrived.reserveCapacity(count)
        positions = Array(repeating: -1, count: count)
    }

    /// Handles finished jobs, in the order given; without a collector, with no suspension.
    nonisolated(nonsending) mutating func take(_ results: [JobResult<Value>]) async throws {
        guard collector != nil else {
            for result in results { _ = record(result) }
            return
        }
        for result in results { try await take(result) }
    }

    /// Handles one finished job.
    nonisolated(nonsending) mutating func take(_ result: JobResult<Value>) async throws {
        guard record(result), let collector else { return }
        // What the collector prints goes above the progress line, drawn again after it.
        progress.clearForOutput()
        let goOn: Bool
        do {
            goOn = try await collector(result)
        } catch {
            farm.stopSpawning()
            throw error
        }
        progress.redraw()
        if !goOn { farm.stopSpawning() }
    }

    /// Counts and keeps one finished job; false when it is only waited for (after a fail-fast failure,
    /// or the failure itself), so the collector does not see it.
    private mutating func record(_ result: JobResult<Value>) -> Bool {
        guard firstFailure == nil else { return false }
        if failFast, let error = result.error {
            firstFailure = error
            farm.stopSpawning()
            return false
        }
        done += 1
        progress.update(done: done)
        if collectResults {
            if result.index >= positions.count {
                let grow = Swift.max(result.index + 1 - positions.count, positions.count, 64)
                positions += Array(repeating: -1, count: grow)
            }
            if positions[result.index] >= 0 {
                arrived[positions[result.index]] = result
            } else {
                positions[result.index] = arrived.count
                arrived.append(result)
            }
        }
        return true
    }

    /// The ordered results, or the fail-fast error.
    mutating func finish() throws(JobError) -> [JobResult<Value>] {
        progress.finish()
        if let firstFailure { throw firstFailure }
        // Results that came in job order (often most of them) are returned as they are.
        var next = 0
        var inOrder = true
        for position in positions where position >= 0 {
            if position != next {
                inOrder = false
                break
            }
            next += 1
        }
        if inOrder { return arrived }
        var ordered: [JobResult<Value>] = []
        ordered.reserveCapacity(arrived.count)
        for position in positions where position >= 0 { ordered.append(arrived[position]) }
        return ordered
    }
}
