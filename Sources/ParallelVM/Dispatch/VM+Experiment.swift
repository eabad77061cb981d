import Foundation
import ParallelVMCodec
import ParallelVMExperiment
import Synchronization

/// Whether `VM.syncExperimentsOnInterrupt()` has registered its interrupt handler in this process.
private let interruptSyncRegistered = Mutex(false)

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
        let location = ExperimentLocation(experiment)
        var run = try DispatchRun(
            // Its spawn requests name the experiment, so that task processes keep the tasks' logs there.
            vm: try VM(self, experiment: location),
            remote: remote,
            chunkSize: chunkSize,
            inputOpen: false,
            failFast: failFast,
            timeout: timeout,
            retries: retries,
            collectResults: collectResults,
            collector: collector,
            progress: ProgressLine(enabled: progress, total: (jobs as? any Collection)?.count),
            journaled: true
        )
        let farm = run.farm
        var journal: RunJournal
        do {
            syncExperimentsOnInterrupt()
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
            // With every job known up front, the manifest names the run's inputs from the start. The jobs
            // are taken in one pass, and the arguments encoded for the keys are kept to be sent (up to a
            // limit): encoded once, not twice.
            var knownJobs: [JobStorage<Value>] = []
            var knownKeys: [JobKey]? = nil
            var knownArguments: [[UInt8]?] = []
            if jobs is any Collection {
                var keys: [JobKey] = []
                var kept = 0
                for job in jobs {
                    let (key, arguments) = try Self.keyed(job)
                    knownJobs.append(job.storage)
                    keys.append(key)
                    if let arguments, kept + arguments.count <= Self.keptArgumentsLimit {
                        kept += arguments.count
                        knownArguments.append(arguments)
                    } else {
                        knownArguments.append(nil)
                    }
                }
                knownKeys = keys
                run.expect(keys.count)
            }
            try experiment.beginRun(keys: knownKeys ?? [], hosts: hosts().map(\.name))
            try journal.log.log(
                "run started: \(knownKeys.map { "\($0.count) jobs" } ?? "jobs produced as it goes"), "
                    + "\(slots()) slots, \(rerunFailed ? "failed jobs run again" : "failed jobs reused")"
            )
            let unitSize = run.unitSize
            // Read once: the table does not change while the dispatch runs.
            let resume = try experiment.resumeTable()
            var iterator = jobs.makeIterator()
            var exhausted = false
            // The farm numbers the jobs it runs by itself: its index -> the job's index, and when it was queued.
            var jobIndexOfFarmIndex: [Int] = []
            var queuedAt: [Date] = []
            // The farm index of the first job of each job's unit, and the unit's size: a unit's successes
            // are logged together.
            var unitOfFarmIndex: [(first: Int, size: Int)] = []
            // Jobs that collect outputs run wrapped; their results name the jobs as given.
            var originals: [Int: Job<Value>] = [:]
            while true {
                while !exhausted && !farm.isStopped && farm.engine.hasRoom {
                    var unit: [FarmJob] = []
                    var unitArguments: [[UInt8]?] = []
                    var indices: [Int] = []
                    // Only a reused result's collector can stop the farm here: `isStopped` takes the farm's lock.
                    while unit.count < unitSize {
                        let index = journal.keys.count
                        let job: Job<Value>
                        let key: JobKey
                        let arguments: [UInt8]?
                        if let knownKeys {
                            guard index < knownJobs.count else {
                                exhausted = true
                                break
                            }
                            job = Job(storage: knownJobs[index])
                            key = knownKeys[index]
                            arguments = knownArguments[index]
                            knownArguments[index] = nil
                        } else {
                            guard let next = iterator.next() else {
                                exhausted = true
                                break
                            }
                            job = next
                            (key, arguments) = try Self.keyed(job)
                        }
                        journal.keys.append(key)
                        if let record = resume.reusable(index: index, key: key, includeFailed: !rerunFailed) {
                            try journal.log.jobReused(record)
                            journal.counts.reused += 1
                            try await run.take(Self.result(from: record, job: job))
                            if farm.isStopped { break }
                        } else if job.storage.collectsOutputs {
                            if let error = job.outputPatternError(in: experiment) { throw error }
                            originals[index] = job
                            unit.append(job.bound(toIndex: index, of: experiment, at: location).storage)
                            unitArguments.append(nil)
                            indices.append(index)
                        } else {
                            unit.append(job.storage)
                            unitArguments.append(arguments)
                            indices.append(index)
                        }
                    }
                    guard !unit.isEmpty else { continue }
                    guard let first = farm.submit(unit, arguments: unitArguments) else { break }
                    jobIndexOfFarmIndex += indices
                    queuedAt += repeatElement(Date(), count: indices.count)
                    unitOfFarmIndex += repeatElement((first: first, size: indices.count), count: indices.count)
                    try journal.log.jobsQueued(indices)
                }
                guard let farmResults = try await farm.joinFarmResults() else { break }
                // Journaled together, then handed out together.
                var results: [JobResult<Value>] = []
                results.reserveCapacity(farmResults.count)
                let ended = Date()
                for farmResult in farmResults {
                    let jobIndex = jobIndexOfFarmIndex[farmResult.index]
                    let original = originals.isEmpty ? nil : originals.removeValue(forKey: jobIndex)
                    let (result, failure, value) = try farm.journaledResult(
                        of: farmResult,
                        index: jobIndex,
                        job: original
                    )
                    try journal.add(
                        farmResult,
                        failure: failure,
                        value: value,
                        typeName: farm.valueTypeName,
                        index: jobIndex,
                        key: journal.keys[jobIndex],
                        started: queuedAt[farmResult.index],
                        ended: ended,
                        unit: unitOfFarmIndex[farmResult.index]
                    )
                    results.append(result)
                }
                try journal.commit(writing: collector != nil)
                try await run.take(results)
            }
        } catch {
            try? journal.logUnfinishedUnits()
            if error is CancellationError { await farm.cancel() } else { await farm.close() }
            run.progress.finish()
            try? journal.log.log(
                "run stopped after \(journal.counts.ran) jobs ran and \(journal.counts.reused) were reused: \(error)"
            )
            try? experiment.close()
            throw error
        }
        await farm.close()
        try endJournaledRun(experiment, journal: &journal, producedKeys: jobs is any Collection ? nil : journal.keys)
        return try run.finish()
    }

    /// Ends a journaled run that went to its end: records the keys of jobs produced as the run went (not
    /// known when it began) in the manifest, logs the units left unfinished and the run's end with its
    /// counts, and closes the experiment, also when one of these throws.
    func endJournaledRun(_ experiment: Experiment, journal: inout RunJournal, producedKeys keys: [JobKey]?) throws {
        do {
            if let keys {
                try experiment.updateManifest { manifest in
                    manifest.inputs = JobKey.inputsIdentity(of: keys)
                    manifest.jobs = keys.count
                }
            }
            try journal.logUnfinishedUnits()
            try experiment.endRun(counts: journal.counts, hosts: hosts().map(\.name))
            let counts = journal.counts
            try journal.log.log("run ended: ran \(counts.ran), reused \(counts.reused), failed \(counts.failed)")
        } catch {
            try? experiment.close()
            throw error
        }
        try experiment.close()
    }

    /// Has an interrupt (which ends the process without closing anything) write and sync the journals and
    /// logs of the experiments open then. Registered once per process.
    func syncExperimentsOnInterrupt() {
        guard
            interruptSyncRegistered.withLock({ registered in
                defer { registered = true }
                return !registered
            })
        else { return }
        spawner.onInterrupt { interrupt in
            Experiment.syncOpenExperiments(logging: "run interrupted by \(interrupt); the journal is synced")
        }
    }

    /// The key a job is journaled under: its function and encoded arguments (for a job that collects
    /// outputs, those of the job it wraps: the patterns are not part of it). With it, the encoded
    /// arguments to send, unless the job collects outputs (its worker gets them wrapped).
    static func keyed<Value>(_ job: Job<Value>) throws -> (key: JobKey, arguments: [UInt8]?) {
        if job.storage.collectsOutputs, let request = job.outputRequest {
            return (JobKey(function: request.function, encodedArguments: try request.encodedArguments()), nil)
        }
        let arguments = try job.encodedArguments()
        return (JobKey(function: job.function, encodedArguments: arguments), arguments)
    }

    /// How many bytes of encoded arguments a journaled dispatch keeps from making the keys to sending
    /// the jobs; past it, arguments are encoded again when sent, rather than held in memory all at once.
    static var keptArgumentsLimit: Int { 64 << 20 }

    /// A journaled record given back as the job's result.
    static func result<Value>(from record: JournalRecord, job: Job<Value>) throws -> JobResult<Value> {
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
struct RunJournal {
    let experiment: Experiment
    let log: ExperimentLog
    let writer: JournalWriter
    /// The host named in the records of jobs run in this process.
    let localHost: String
    var keys: [JobKey] = []
    var counts = Manifest.Counts()
    /// Units (a job, or a chunk run as one task) with results still to come, by their number: their
    /// successes are logged in one line once every job of the unit is in (a line per job cost a dispatch
    /// of tiny jobs more than the jobs did); failures are logged as they come.
    private var pendingUnits: [Int: PendingUnit] = [:]
    /// The unit whose results came last, out of `pendingUnits`.
    private var current: PendingUnit?

    /// A class, so that counting a result in it changes it in place (as an optional struct it was copied,
    /// with its array of indices, for every job).
    private final class PendingUnit {
        let unit: Int
        var remaining: Int
        var succeeded: [Int] = []
        var last: LastSuccess?

        init(unit: Int, remaining: Int) {
            self.unit = unit
            self.remaining = remaining
        }
    }

    /// What the log line of a unit's successes says of them, from the last one.
    private struct LastSuccess {
        let index: Int
        let attempts: Int
        let host: String
        let task: String
        let started: Date
        let ended: Date

        var record: JournalRecord {
            JournalRecord(
                index: index,
                key: JobKey(value: 0),
                outcome: .success(typeName: "", value: []),
                attempts: attempts,
                host: host,
                task: task,
                started: started,
                ended: ended
            )
        }
    }

    /// Results added and not yet committed.
    private var batch = JournalBatch()

    init(experiment: Experiment, localHost: String) throws {
        self.experiment = experiment
        self.log = try experiment.log()
        self.writer = try experiment.journal()
        self.localHost = localHost
    }

    /// The last task named in a record, and its name: the jobs of a chunk share one.
    private var lastTask: (id: TaskID, name: String)?

    /// A task as records name it (`1:5`, or `local` for this process).
    private mutating func taskName(_ task: TaskID?) -> String {
        guard let task else { return "local" }
        if let lastTask, lastTask.id == task { return lastTask.name }
        let name = task.description
        lastTask = (task, name)
        return name
    }

    /// Logs the successes of units that will not complete (the dispatch stopped, or is ending).
    mutating func logUnfinishedUnits() throws {
        if let current {
            pendingUnits[current.unit] = current
            self.current = nil
        }
        let units = pendingUnits
        pendingUnits = [:]
        for (_, unit) in units.sorted(by: { $0.key < $1.key }) { try logSuccesses(of: unit) }
    }

    private func logSuccesses(of unit: PendingUnit) throws {
        guard let last = unit.last?.record else { return }
        if unit.succeeded.count == 1 {
            try log.jobFinished(last)
        } else {
            try log.jobsFinished(unit.succeeded, like: last)
        }
    }

    /// Adds a finished job to the batch that ``commit()`` journals, and counts and logs it: `failure` is
    /// its error when it failed, else `value` its value's bytes, of the type `typeName`; `index` its index
    /// in the dispatch; `unit` its unit (a job, or a chunk run as one task: the farm index of its first
    /// job) and the unit's size. Not generic, so that it runs specialised code for any result type.
    mutating func add(
        _ result: FarmResult,
        failure: JobError?,
        value: [UInt8],
        typeName: String,
        index: Int,
        key: JobKey,
        started: Date,
        ended: Date,
        unit: (first: Int, size: Int)
    ) throws {
        let host = result.host?.name ?? localHost
        let task = taskName(result.task)
        if let failure {
            let record = JournalRecord(
                index: index,
                key: key,
                outcome: .failure(typeName: failure.typeName, message: failure.message),
                attempts: result.attempts,
                host: host,
                task: task,
                started: started,
                ended: ended
            )
            guard batch.add(record) else { throw writer.refusal(ofJob: index) }
            counts.failed += 1
            try log.jobFinished(record)
        } else {
            guard
                batch.addSuccess(
                    index: index,
                    key: key,
                    attempts: result.attempts,
                    typeName: typeName,
                    value: value,
                    host: host,
                    task: task,
                    started: started,
                    ended: ended
                )
            else { throw writer.refusal(ofJob: index) }
        }
        counts.ran += 1
        // The results of a unit come together: its entry is kept out of the table meanwhile.
        let pending: PendingUnit
        if let current, current.unit == unit.first {
            pending = current
        } else {
            if let current { pendingUnits[current.unit] = current }
            pending =
                pendingUnits.removeValue(forKey: unit.first) ?? PendingUnit(unit: unit.first, remaining: unit.size)
            current = pending
        }
        pending.remaining -= 1
        if failure == nil {
            pending.succeeded.append(index)
            pending.last = LastSuccess(
                index: index,
                attempts: result.attempts,
                host: host,
                task: task,
                started: started,
                ended: ended
            )
        }
        if pending.remaining == 0 {
            current = nil
            try logSuccesses(of: pending)
        }
    }

    /// Journals what ``add(_:failure:value:typeName:index:key:started:ended:unit:)`` gathered, under one
    /// lock of the writer: it reaches the file within the writer's flush interval, or before this returns
    /// with `writing` (before a collector sees the results, so that what it reports done survives a kill
    /// of the process).
    mutating func commit(writing: Bool) throws {
        guard !batch.isEmpty else { return }
        // Handed over whole, not shared: sealing it in the writer then copies nothing.
        let taken = batch
        batch = JournalBatch()
        try writer.append(taken)
        if writing { try writer.flush() }
    }
}
