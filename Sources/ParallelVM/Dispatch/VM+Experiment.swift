import Foundation
import ParallelVMCodec
import ParallelVMExperiment
import Synchronization

/// Whether `VM.syncExperimentsOnInterrupt()` has registered its interrupt handler in this process.
private let interruptSyncRegistered = Mutex(false)

extension VM {
    /// `dispatch` with an experiment: reuses journaled results, journals every finished job, keeps the
    /// experiment's log and manifest, and closes the experiment however the dispatch ends.
    ///
    /// Jobs go to the farm as in a plain dispatch, many units at once. A job's key is made once, where its
    /// arguments are encoded anyway: by the farm's thread for the jobs it sends in chunks (``FarmResult/key``),
    /// when the job is taken for one that has a journal record (to compare) or collects outputs (it runs
    /// wrapped), and else when its result comes (``journalKey(of:known:)``) or the run ends.
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
        let count = (jobs as? any Collection)?.count
        var run = try DispatchRun(
            // Its spawn requests name the experiment, so that task processes keep the tasks' logs there.
            vm: try VM(self, experiment: location),
            remote: remote,
            chunkSize: chunkSize,
            inputOpen: true,
            failFast: failFast,
            timeout: timeout,
            retries: retries,
            collectResults: collectResults,
            collector: collector,
            progress: ProgressLine(enabled: progress, total: count),
            journaled: true
        )
        if let count { run.expect(count) }
        let farm = run.farm
        var journal: RunJournal
        do {
            syncExperimentsOnInterrupt()
            try experiment.open(beginningRunOn: hosts().map(\.name))
            journal = try RunJournal(
                experiment: experiment,
                localHost: hostID()?.name ?? ProcessInfo.processInfo.hostName
            )
        } catch {
            try? experiment.close()
            await farm.close()
            throw error
        }
        // An array's jobs are read again from it for the keys of the jobs that did not run, not kept.
        var taken = (jobs as? [Job<Value>]).map { TakenJobs(rereading: $0) } ?? TakenJobs()
        do {
            try journal.log.log(
                "run started: \(count.map { "\($0) jobs" } ?? "jobs produced as it goes"), "
                    + "\(slots()) slots, \(rerunFailed ? "failed jobs run again" : "failed jobs reused")"
            )
            let unitSize = run.unitSize
            // Read once: the table does not change while the dispatch runs.
            let resume = try experiment.resumeTable()
            // A new experiment: no job has a record to compare with.
            let plainJobs = resume.count == 0
            var iterator = jobs.makeIterator()
            var taking = true
            // The farm numbers the jobs it runs by itself: its index -> the job's index (kept only when some
            // jobs are reused, else the two are the same), and when it was queued.
            var jobIndexOfFarmIndex: [Int] = []
            var queuedAt: [Date] = []
            if let count {
                taken.reserveCapacity(count)
                queuedAt.reserveCapacity(count)
                if !plainJobs { jobIndexOfFarmIndex.reserveCapacity(count) }
            }
            // Jobs that collect outputs run wrapped; their results name the jobs as given.
            var originals: [Int: Job<Value>] = [:]
            while true {
                // As many units as there is room for go to the farm at once: one lock, one wake-up.
                var room = taking ? farm.engine.room(unitSize: unitSize) : 0
                while room > 0 {
                    let wanted = room * unitSize
                    var batch: [FarmJob] = []
                    batch.reserveCapacity(wanted)
                    var indices: [Int] = []
                    indices.reserveCapacity(wanted)
                    while batch.count < wanted {
                        guard let job = iterator.next() else {
                            taking = false
                            break
                        }
                        let index = taken.count
                        // Most jobs have no record and run as themselves: nothing to decide.
                        if plainJobs, !job.storage.collectsOutputs {
                            taken.append(job.storage, key: nil)
                            batch.append(job.storage)
                            indices.append(index)
                            continue
                        }
                        let (key, record, storage) = try Self.take(
                            job,
                            index: index,
                            resume: resume,
                            includeFailed: !rerunFailed,
                            experiment: experiment,
                            location: location
                        )
                        taken.append(job.storage, key: key)
                        if let record {
                            try journal.log.jobReused(record)
                            journal.counts.reused += 1
                            try await run.take(Self.result(from: record, job: job))
                            // Only a reused result's collector can stop the farm here.
                            if collector != nil, farm.isStopped {
                                taking = false
                                break
                            }
                            continue
                        }
                        if job.storage.collectsOutputs { originals[index] = job }
                        batch.append(storage)
                        indices.append(index)
                    }
                    if !batch.isEmpty {
                        guard let first = farm.submit(batch, unitSize: unitSize) else {
                            taking = false
                            break
                        }
                        precondition(first == queuedAt.count, "a journaled dispatch is its farm's only feeder")
                        if !plainJobs { jobIndexOfFarmIndex += indices }
                        queuedAt += repeatElement(Date(), count: indices.count)
                        try journal.log.jobsQueued(indices, chunkSize: unitSize)
                    }
                    guard taking else { break }
                    room = farm.engine.room(unitSize: unitSize)
                }
                // The chunker shrinks the last chunks once it knows that no more jobs come.
                if !taking { farm.finishInput() }
                guard let farmResults = try await farm.joinFarmResults() else { break }
                // Journaled together, then handed out together.
                var results: [JobResult<Value>] = []
                results.reserveCapacity(farmResults.count)
                let ended = Date()
                var failure: JobError?
                var value: [UInt8] = []
                // Each farm result is copied out of the array once (a copy retains its every reference) and
                // lent from there; each job result is made in its place in `results`: a copy of each farm
                // result and job result cost a tiny job more than journaling it.
                for farmResult in farmResults {
                    let farmIndex = farmResult.index
                    let jobIndex = plainJobs ? farmIndex : jobIndexOfFarmIndex[farmIndex]
                    let original = originals.isEmpty ? nil : originals.removeValue(forKey: jobIndex)
                    results.append(
                        try farm.journaledResult(
                            of: farmResult,
                            index: jobIndex,
                            job: original,
                            failure: &failure,
                            value: &value
                        )
                    )
                    let key = Self.journalKey(of: farmResult, known: taken.keys[jobIndex])
                    taken.keys[jobIndex] = key
                    try journal.add(
                        farmResult,
                        failure: failure,
                        value: value,
                        typeName: farm.valueTypeName,
                        index: jobIndex,
                        key: key,
                        started: queuedAt[farmIndex],
                        ended: ended
                    )
                }
                try journal.commit(writing: collector != nil)
                try await run.take(results)
            }
        } catch {
            if error is CancellationError { await farm.cancel() } else { await farm.close() }
            run.progress.finish()
            stopJournaledRun(experiment, journal: &journal, taken: taken, error: error)
            throw error
        }
        try await endJournaledRun(experiment, journal: &journal, taken: taken, closing: farm)
        return try run.finish()
    }

    /// What becomes of a job a journaled dispatch takes: its key when it had to be made now (the job has
    /// a record to compare with, or collects outputs), the record to reuse instead of running it, and
    /// the farm job to run (wrapped to collect outputs when it does).
    static func take<Value>(
        _ job: Job<Value>,
        index: Int,
        resume: ResumeTable,
        includeFailed: Bool,
        experiment: Experiment,
        location: ExperimentLocation
    ) throws -> (key: JobKey?, record: JournalRecord?, storage: FarmJob) {
        var key: JobKey?
        if job.storage.collectsOutputs { key = try keyed(job) }
        if resume.latestRecord(index: index) != nil {
            // Arguments that cannot be encoded make the job fail when it runs, as in any dispatch.
            if key == nil { key = try? keyed(job) }
            if let key, let record = resume.reusable(index: index, key: key, includeFailed: includeFailed) {
                return (key, record, job.storage)
            }
        }
        guard job.storage.collectsOutputs else { return (key, nil, job.storage) }
        if let error = job.outputPatternError(in: experiment) { throw error }
        return (key, nil, job.bound(toIndex: index, of: experiment, at: location).storage)
    }

    /// A finished job's journal key: the one the farm's thread made, else `known`, else made here from
    /// the job (which runs as itself: a job that collects outputs was keyed when taken).
    static func journalKey(of result: FarmResult, known: JobKey?) -> JobKey {
        result.key ?? known ?? journalKey(of: result.job)
    }

    /// The key of a job that runs as itself; ``JobKey/unencodable`` when its arguments cannot be encoded
    /// (the job fails for it when it runs).
    static func journalKey(of job: FarmJob) -> JobKey {
        guard let arguments = try? job.encode() else { return .unencodable }
        return JobKey(function: job.function, encodedArguments: arguments)
    }

    /// Logs how a journaled run stopped early, records the identity of its inputs, and closes the experiment.
    func stopJournaledRun(_ experiment: Experiment, journal: inout RunJournal, taken: TakenJobs, error: any Error) {
        try? journal.logPendingSuccesses()
        try? journal.log.log(
            "run stopped after \(journal.counts.ran) jobs ran and \(journal.counts.reused) were reused: \(error)"
        )
        let keys = taken.allKeys()
        try? experiment.updateManifest { manifest in
            manifest.inputs = JobKey.inputsIdentity(of: keys)
            manifest.jobs = keys.count
        }
        try? experiment.close()
    }

    /// Ends a journaled run that went to its end: logs it with its counts, records the identity of its
    /// inputs (every job's key, in job order), its counts and end in the manifest, and closes the
    /// experiment, also when one of these throws.
    func endJournaledRun(_ experiment: Experiment, journal: inout RunJournal, taken: TakenJobs) throws {
        do {
            try journal.logPendingSuccesses()
            try experiment.endRun(counts: journal.counts, hosts: hosts().map(\.name), keys: taken.allKeys())
            let counts = journal.counts
            try journal.log.log("run ended: ran \(counts.ran), reused \(counts.reused), failed \(counts.failed)")
        } catch {
            try? experiment.close()
            throw error
        }
        try experiment.close()
    }

    /// ``endJournaledRun(_:journal:taken:)`` of a run all of whose jobs have ended, and the farm closed:
    /// its thread ends while the experiment's end is written and synced.
    nonisolated(nonsending) func endJournaledRun<Value>(
        _ experiment: Experiment,
        journal: inout RunJournal,
        taken: TakenJobs,
        closing farm: Farm<Value>
    ) async throws {
        farm.beginClosing()
        do {
            try endJournaledRun(experiment, journal: &journal, taken: taken)
        } catch {
            await farm.close()
            throw error
        }
        await farm.close()
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
    /// outputs, those of the job it wraps: the patterns are not part of it).
    static func keyed<Value>(_ job: Job<Value>) throws -> JobKey {
        if job.storage.collectsOutputs, let request = job.outputRequest {
            return JobKey(function: request.function, encodedArguments: try request.encodedArguments())
        }
        return JobKey(function: job.function, encodedArguments: try job.encodedArguments())
    }

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

/// The jobs a journaled dispatch took, by index, with their keys as far as they are made (see
/// ``VM/journalKey(of:known:)``): the jobs are kept to make the others when the run ends, unless they can
/// be read again from the dispatch's input (an array), which spares keeping every job.
struct TakenJobs: Sendable {
    private var jobs: [FarmJob] = []
    /// The job at an index of the input, read again from it; nil when the jobs are kept in `jobs`.
    private let reread: (@Sendable (Int) -> FarmJob)?
    var keys: [JobKey?] = []

    /// Keeps the jobs taken, for an input that cannot be read again.
    init() { reread = nil }

    /// Keeps no jobs: the jobs of `input` (the dispatch's, read in order) are read again from it.
    init<Value>(rereading input: [Job<Value>]) {
        reread = { input[$0].storage }
    }

    var count: Int { keys.count }

    mutating func reserveCapacity(_ count: Int) {
        if reread == nil { jobs.reserveCapacity(count) }
        keys.reserveCapacity(count)
    }

    mutating func append(_ job: FarmJob, key: JobKey?) {
        if reread == nil { jobs.append(job) }
        keys.append(key)
    }

    /// Every job's key, in job order, made now for the jobs that did not run (the run stopped first).
    func allKeys() -> [JobKey] {
        keys.indices.map { keys[$0] ?? VM.journalKey(of: reread?($0) ?? jobs[$0]) }
    }
}

extension JobKey {
    /// The key of a job whose arguments cannot be encoded (it fails when it runs): no job that can run has it.
    static var unencodable: JobKey { JobKey(value: 0) }
}

/// What a journaled dispatch keeps: the counts, the experiment's log and journal, the records added and
/// not yet committed, and the successes not yet logged.
struct RunJournal {
    let experiment: Experiment
    let log: ExperimentLog
    let writer: JournalWriter
    /// The host named in the records of jobs run in this process.
    let localHost: String
    var counts = Manifest.Counts()
    /// Successes of one task that came one after another (the jobs of a chunk come together), logged in
    /// one line when another task's result comes or the batch is committed: a line per job cost a
    /// dispatch of tiny jobs more than the jobs did.
    private var successes: Successes?

    /// The successes of ``successes``: the jobs, and what the line says of them, from the first one (the
    /// jobs of a chunk share their host, times and attempt).
    private struct Successes {
        let task: TaskID
        var indices: [Int]
        var last: JournalRecord
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

    /// Logs the successes gathered and not yet logged.
    mutating func logPendingSuccesses() throws {
        guard let pending = successes else { return }
        successes = nil
        if pending.indices.count == 1 {
            try log.jobFinished(pending.last)
        } else {
            try log.jobsFinished(pending.indices, like: pending.last)
        }
    }

    /// Adds a finished job to the batch that ``commit(writing:)`` journals, and counts and logs it:
    /// `failure` is its error when it failed, else `value` its value's bytes, of the type `typeName`;
    /// `index` its index in the dispatch. Not generic, so that it runs specialised code for any result type.
    mutating func add(
        _ result: FarmResult,
        failure: JobError?,
        value: [UInt8],
        typeName: String,
        index: Int,
        key: JobKey,
        started: Date,
        ended: Date
    ) throws {
        let host = result.host?.name ?? localHost
        let task = taskName(result.task)
        counts.ran += 1
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
            try logPendingSuccesses()
            try log.jobFinished(record)
            return
        }
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
        if let running = result.task, successes?.task == running {
            successes!.indices.append(index)
            return
        }
        try logPendingSuccesses()
        let last = JournalRecord(
            index: index,
            key: key,
            outcome: .success(typeName: "", value: []),
            attempts: result.attempts,
            host: host,
            task: task,
            started: started,
            ended: ended
        )
        guard let running = result.task else {
            try log.jobFinished(last)
            return
        }
        successes = Successes(task: running, indices: [index], last: last)
    }

    /// Journals what ``add(_:failure:value:typeName:index:key:started:ended:)`` gathered, under one lock
    /// of the writer, and logs the successes not yet logged: it reaches the file within the writer's
    /// flush interval, or before this returns with `writing` (before a collector sees the results, so
    /// that what it reports done survives a kill of the process).
    mutating func commit(writing: Bool) throws {
        try logPendingSuccesses()
        guard !batch.isEmpty else { return }
        // Emptied, its storage kept for the next batch: framing the results then allocates nothing.
        try writer.append(emptying: &batch)
        if writing { try writer.flush() }
    }
}
