import Foundation
import ParallelVMExperiment
import Synchronization

extension VM {
    /// The `AsyncSequence` form of `dispatch` with an experiment: as the `Sequence` form (reuse from the
    /// journal, journaling every finished job, log and manifest), with the sequence consumed by a task of
    /// its own that takes the next job only when a slot is free.
    ///
    /// Three tasks meet here: the feeder takes jobs, hands a journaled job's result over at once and
    /// submits the others; the joiner waits for the farm's results; the calling task journals and hands
    /// out both, in the order they came, so a collector that feeds the sequence sees reused jobs too.
    nonisolated(nonsending) func dispatchJournaled<Value, Jobs: AsyncSequence & SendableMetatype>(
        asyncJobs jobs: sending Jobs,
        experiment: Experiment,
        rerunFailed: Bool,
        remote: Bool,
        chunkSize: ChunkSize,
        failFast: Bool,
        progress: Bool,
        timeout: Double?,
        retries: Int,
        collectResults: Bool,
        collector: ((JobResult<Value>) async throws -> Bool)?
    ) async throws -> [JobResult<Value>] where Jobs.Element == Job<Value> {
        let location = ExperimentLocation(experiment)
        var run = try DispatchRun(
            vm: try VM(self, experiment: location),
            remote: remote,
            chunkSize: chunkSize,
            inputOpen: true,
            failFast: failFast,
            timeout: timeout,
            retries: retries,
            collectResults: collectResults,
            collector: collector,
            progress: ProgressLine(enabled: progress, total: nil),
            journaled: true
        )
        let farm = run.farm
        var journal: RunJournal
        do {
            syncExperimentsOnInterrupt()
            try experiment.open(beginningRunOn: hosts().map(\.name))
            journal = try RunJournal(
                experiment: experiment,
                localHost: hostID()?.name ?? ProcessInfo.processInfo.hostName
            )
            try journal.log.log(
                "run started: jobs produced as it goes (an AsyncSequence), \(slots()) slots, "
                    + (rerunFailed ? "failed jobs run again" : "failed jobs reused")
            )
        } catch {
            try? experiment.close()
            await farm.close()
            throw error
        }
        let feed: JournaledFeed<Value>
        do {
            // Read once: the table does not change while the dispatch runs.
            feed = JournaledFeed<Value>(resume: try experiment.resumeTable())
        } catch {
            try? experiment.close()
            await farm.close()
            throw error
        }
        let unitSize = run.unitSize
        let handover = JobsHandover(value: jobs)
        let log = journal.log
        let (events, sink) = AsyncThrowingStream.makeStream(of: JournaledFeed<Value>.Event.self)
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    do {
                        try await feed.consume(
                            handover.value,
                            into: farm,
                            unitSize: unitSize,
                            experiment: experiment,
                            location: location,
                            rerunFailed: rerunFailed,
                            log: log,
                            events: sink
                        )
                        farm.finishInput()
                    } catch {
                        farm.finishInput()
                        // Cancelled because the dispatch stopped: not an error of the sequence.
                        if farm.isStopped { return }
                        throw error
                    }
                }
                group.addTask {
                    do {
                        while let results = try await farm.joinFarmResults() { sink.yield(.finished(results)) }
                        sink.finish()
                    } catch {
                        sink.finish(throwing: error)
                    }
                }
                do {
                    for try await event in events {
                        switch event {
                        case .reused(let result):
                            journal.counts.reused += 1
                            try await run.take(result)
                        case .finished(let farmResults):
                            // Journaled together, then handed out together.
                            var results: [JobResult<Value>] = []
                            let ended = Date()
                            var failure: JobError?
                            var value: [UInt8] = []
                            var started = ended
                            var key = JobKey.unencodable
                            for farmResult in farmResults {
                                let result = try feed.journaledResult(
                                    for: farmResult,
                                    of: farm,
                                    failure: &failure,
                                    value: &value,
                                    started: &started,
                                    key: &key
                                )
                                try journal.add(
                                    farmResult,
                                    failure: failure,
                                    value: value,
                                    typeName: farm.valueTypeName,
                                    index: result.index,
                                    key: key,
                                    started: started,
                                    ended: ended
                                )
                                results.append(result)
                            }
                            try journal.commit(writing: collector != nil)
                            try await run.take(results)
                        }
                    }
                } catch {
                    farm.stopSpawning()
                    group.cancelAll()
                    if error is CancellationError { await farm.cancel() } else { await farm.close() }
                    throw error
                }
                farm.stopSpawning()
                group.cancelAll()
                do {
                    try await group.waitForAll()
                } catch {
                    await farm.close()
                    throw error
                }
            }
        } catch {
            run.progress.finish()
            stopJournaledRun(experiment, journal: &journal, taken: feed.taken, error: error)
            throw error
        }
        try await endJournaledRun(experiment, journal: &journal, taken: feed.taken, closing: farm)
        return try run.finish()
    }
}

/// Moves the job sequence into the task that consumes it.
///
/// Invariant for @unchecked Sendable: the dispatch receives the sequence as a `sending` parameter, so its
/// caller keeps no access, and the dispatch touches it only inside the consuming task.
private struct JobsHandover<Jobs>: @unchecked Sendable {
    let value: Jobs
}

/// What the feeder of a journaled `AsyncSequence` dispatch shares with the task that journals: every job
/// taken with its key as far as it is made, and for every job submitted to the farm its index in the
/// sequence and when it was queued (the farm numbers only the jobs it runs).
private final class JournaledFeed<Value: Codable & Sendable>: Sendable {
    enum Event: Sendable {
        /// A job's result read back from the journal.
        case reused(JobResult<Value>)
        /// Results of the farm, numbered by the farm, as its thread handed them over.
        case finished([FarmResult])
    }

    private struct State {
        var taken = TakenJobs()
        var jobIndexOfFarmIndex: [Int: Int] = [:]
        var queuedAt: [Int: Date] = [:]
        /// Jobs that collect outputs run bound to their index; results name the jobs as given.
        var originals: [Int: Job<Value>] = [:]
    }

    private let state = Mutex(State())
    /// The journal's records when the experiment was opened.
    private let resume: ResumeTable

    init(resume: ResumeTable) { self.resume = resume }

    var taken: TakenJobs { state.withLock { $0.taken } }

    /// The farm's result as the result of its job in the sequence (decoded here, outside the lock) with
    /// what the journal keeps of it (see ``Farm/journaledResult(of:index:job:failure:value:)``), when
    /// that job was queued, and its key.
    func journaledResult(
        for farmResult: FarmResult,
        of farm: Farm<Value>,
        failure: inout JobError?,
        value: inout [UInt8],
        started: inout Date,
        key: inout JobKey
    ) throws -> JobResult<Value> {
        var original: Job<Value>?
        var known: JobKey?
        let index = state.withLock { state in
            let index = state.jobIndexOfFarmIndex.removeValue(forKey: farmResult.index)!
            started = state.queuedAt.removeValue(forKey: farmResult.index) ?? Date()
            original = state.originals.removeValue(forKey: index)
            known = state.taken.keys[index]
            return index
        }
        key = VM.journalKey(of: farmResult, known: known)
        if known == nil { state.withLock { [key] in $0.taken.keys[index] = key } }
        return try farm.journaledResult(of: farmResult, index: index, job: original, failure: &failure, value: &value)
    }

    /// Takes jobs while the farm has room: a journaled one becomes a `.reused` event, the others go to the
    /// farm `unitSize` at a time.
    func consume<Jobs: AsyncSequence>(
        _ jobs: Jobs,
        into farm: Farm<Value>,
        unitSize: Int,
        experiment: Experiment,
        location: ExperimentLocation,
        rerunFailed: Bool,
        log: ExperimentLog,
        events: AsyncThrowingStream<Event, any Error>.Continuation
    ) async throws where Jobs.Element == Job<Value> {
        var iterator = jobs.makeAsyncIterator()
        var ended = false
        while !ended {
            try await farm.waitForFreeSlot()
            if farm.isStopped { return }
            var unit: [FarmJob] = []
            var indices: [Int] = []
            while unit.count < unitSize {
                guard let job = try await iterator.next() else {
                    ended = true
                    break
                }
                if farm.isStopped { return }
                let index = state.withLock { $0.taken.count }
                let (key, record, storage) = try VM.take(
                    job,
                    index: index,
                    resume: resume,
                    includeFailed: !rerunFailed,
                    experiment: experiment,
                    location: location
                )
                state.withLock { state in
                    state.taken.append(job.storage, key: key)
                    if record == nil, job.storage.collectsOutputs { state.originals[index] = job }
                }
                if let record {
                    try log.jobReused(record)
                    events.yield(.reused(try VM.result(from: record, job: job)))
                    continue
                }
                unit.append(storage)
                indices.append(index)
            }
            guard !unit.isEmpty else { continue }
            // Recorded under the lock that the journaling task takes to look a result up, so that a result
            // can never arrive before its job's numbers.
            let submitted = state.withLock { state -> Bool in
                guard let first = farm.submit(unit) else { return false }
                let now = Date()
                for (offset, index) in indices.enumerated() {
                    state.jobIndexOfFarmIndex[first + offset] = index
                    state.queuedAt[first + offset] = now
                }
                return true
            }
            guard submitted else { return }
            try log.jobsQueued(indices, chunkSize: unitSize)
        }
    }
}
