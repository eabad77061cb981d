import Foundation
import ParallelVMCodec
import ParallelVMExperiment

extension VM {
    /// `dispatch` with an experiment: reuses journaled results, journals every finished job, keeps the
    /// experiment's log and manifest, and closes the experiment however the dispatch ends.
    nonisolated(nonsending) func dispatchJournaled<Value>(
        _ jobs: some Sequence<Job<Value>>,
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
    ) async throws -> [JobResult<Value>] {
        var run = try DispatchRun(
            vm: self,
            remote: remote,
            chunkSize: chunkSize,
            inputOpen: false,
            failFast: failFast,
            timeout: timeout,
            retries: retries,
            collectResults: collectResults,
            collector: collector,
            progress: ProgressLine(enabled: progress, total: (jobs as? any Collection)?.count),
            interactive: true
        )
        let farm = run.farm
        var journal: RunJournal
        do {
            try experiment.open()
            journal = try RunJournal(
                experiment: experiment,
                localHost: hostID()?.name ?? ProcessInfo.processInfo.hostName
            )
        } catch {
            try? experiment.close()
            await farm.close()
            throw error
        }
        do {
            // With every job known up front, the manifest names the run's inputs from the start.
            let knownKeys: [JobKey]? = jobs is any Collection ? try jobs.map { try Self.key($0) } : nil
            try experiment.beginRun(keys: knownKeys ?? [], hosts: hosts().map(\.name))
            try journal.log.log(
                "run started: \(knownKeys.map { "\($0.count) jobs" } ?? "jobs produced as it goes"), "
                    + "\(slots()) slots, \(rerunFailed ? "failed jobs run again" : "failed jobs reused")"
            )
            let unitSize = run.unitSize
            var iterator = jobs.makeIterator()
            var exhausted = false
            // The farm numbers the jobs it runs by itself: its index -> the job's index, and when it was queued.
            var jobIndexOfFarmIndex: [Int] = []
            var queuedAt: [Date] = []
            while true {
                while !exhausted && !farm.isStopped && farm.engine.hasRoom {
                    var unit: [Job<Value>] = []
                    var indices: [Int] = []
                    while unit.count < unitSize && !farm.isStopped {
                        guard let job = iterator.next() else {
                            exhausted = true
                            break
                        }
                        let index = journal.keys.count
                        let key = try knownKeys?[index] ?? Self.key(job)
                        journal.keys.append(key)
                        if let record = try experiment.reusable(index: index, key: key, includeFailed: !rerunFailed) {
                            try journal.log.jobReused(record)
                            journal.counts.reused += 1
                            try await run.take(Self.result(from: record, job: job))
                        } else {
                            unit.append(job)
                            indices.append(index)
                        }
                    }
                    guard !unit.isEmpty else { continue }
                    guard farm.submit(unit) != nil else { break }
                    jobIndexOfFarmIndex += indices
                    queuedAt += repeatElement(Date(), count: indices.count)
                    try journal.log.log(
                        indices.count == 1
                            ? "job \(indices[0]) queued"
                            : "jobs \(indices.map(String.init).joined(separator: ", ")) queued as one chunk"
                    )
                }
                guard let farmResult = try await farm.join() else { break }
                let result = farmResult.renumbered(jobIndexOfFarmIndex[farmResult.index])
                try journal.append(result, key: journal.keys[result.index], started: queuedAt[farmResult.index])
                try await run.take(result)
            }
        } catch {
            if error is CancellationError { await farm.cancel() } else { await farm.close() }
            run.progress.finish()
            try? journal.log.log(
                "run stopped after \(journal.counts.ran) jobs ran and \(journal.counts.reused) were reused: \(error)"
            )
            try? experiment.close()
            throw error
        }
        await farm.close()
        do {
            if !(jobs is any Collection) {
                let keys = journal.keys
                try experiment.updateManifest { manifest in
                    manifest.inputs = JobKey.inputsIdentity(of: keys)
                    manifest.jobs = keys.count
                }
            }
            try experiment.endRun(counts: journal.counts, hosts: hosts().map(\.name))
            let counts = journal.counts
            try journal.log.log("run ended: ran \(counts.ran), reused \(counts.reused), failed \(counts.failed)")
        } catch {
            try? experiment.close()
            throw error
        }
        try experiment.close()
        return try run.finish()
    }

    /// The key a job is journaled under: its function and encoded arguments.
    fileprivate static func key<Value>(_ job: Job<Value>) throws -> JobKey {
        JobKey(function: job.function, encodedArguments: try job.encodedArguments())
    }

    /// A journaled record given back as the job's result.
    fileprivate static func result<Value>(from record: JournalRecord, job: Job<Value>) throws -> JobResult<Value> {
        let outcome: Result<Value, JobError>
        switch record.outcome {
        case .success:
            outcome = .success(try record.value(as: Value.self))
        case .failure(let typeName, let message):
            let failure = JournaledFailure(typeName: typeName, message: message, host: record.host, task: record.task)
            outcome = .failure(
                JobError(
                    code: .failed,
                    index: record.index,
                    job: job.name,
                    function: job.function,
                    typeName: typeName,
                    message: message,
                    underlying: failure
                )
            )
        }
        return JobResult(
            index: record.index,
            job: job,
            outcome: outcome,
            host: HostID(record.host),
            task: TaskID(record.task),
            attempts: record.attempts,
            reused: true
        )
    }
}

/// What a journaled dispatch keeps: the keys of the jobs taken so far, the counts, the experiment's log.
private struct RunJournal {
    let experiment: Experiment
    let log: ExperimentLog
    let writer: JournalWriter
    /// The host named in the records of jobs run in this process.
    let localHost: String
    var keys: [JobKey] = []
    var counts = Manifest.Counts()

    init(experiment: Experiment, localHost: String) throws {
        self.experiment = experiment
        self.log = try experiment.log()
        self.writer = try experiment.journal()
        self.localHost = localHost
    }

    /// Journals a finished job (its record reaches the file within the writer's flush interval).
    mutating func append<Value>(_ result: JobResult<Value>, key: JobKey, started: Date) throws {
        let outcome: JournalRecord.Outcome
        switch result.outcome {
        case .success(let value):
            outcome = .success(typeName: _typeName(Value.self, qualified: true), value: try BinaryEncoder.encode(value))
        case .failure(let error):
            outcome = .failure(typeName: error.typeName, message: error.message)
            counts.failed += 1
        }
        let record = JournalRecord(
            index: result.index,
            key: key,
            outcome: outcome,
            attempts: result.attempts,
            host: result.host?.name ?? localHost,
            task: result.task?.description ?? "local",
            started: started,
            ended: Date()
        )
        try writer.append(record)
        try log.jobFinished(record)
        counts.ran += 1
    }
}
