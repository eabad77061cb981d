import ParallelVMCodec
import ParallelVMExperiment

/// Runs a farm's units in worker slots, on the farm's thread: starts them as slots free up and turns the
/// spawner's task events for them into job results. It reaches the VM through the spawner's API only.
/// A class: the polling loop hands itself to the spawner's event filter, which would copy a struct (and
/// retain everything in it) on every poll.
final class RemoteExecution {
    typealias Unit = FarmEngine.Unit

    /// How many more times a job whose worker was lost starts, whatever the dispatch's `retries`.
    static var lostWorkerRetries: Int { 3 }

    let engine: FarmEngine
    private var vm: VM { engine.vm }
    /// The units running, by the task that runs them, with when each started (monotonic seconds).
    private var running: [TaskID: Started] = [:]
    /// The keys of `running`, for the event filter.
    private var runningTasks: Set<TaskID> = []
    /// Starts so far of jobs that were started more than once, by index.
    private var attempts: [Int: Int] = [:]
    /// Slots whose last task crashed, timed out or lost its worker, by the index of the job it ran: a retry
    /// goes elsewhere when it can.
    private var avoid: [Int: Int] = [:]

    /// A running unit, when it started (monotonic seconds), and whether its result has arrived (its
    /// task's exit has not).
    private struct Started {
        let unit: Unit
        let at: Double
        var resulted = false
    }

    /// The function of the last job found registered (see ``FarmEngine/rejectUnknown(_:lastKnown:)``).
    private var lastKnownFunction: String?
    /// Whether the farm joins jobs into chunks by itself, read once.
    private let chunksAutomatically: Bool
    /// Whether the jobs of a chunk get their journal keys here, read once (see ``FarmEngine/keysJobs``).
    private let keysJobs: Bool
    private var keyMaker = JobKeyMaker()

    init(engine: FarmEngine) {
        self.engine = engine
        self.chunksAutomatically = engine.chunksAutomatically
        self.keysJobs = engine.keysJobs
    }

    func serve() {
        guard let waitPolicy = vm.spawner.waitPolicy else { return }
        var backoff = Backoff(waitPolicy)
        // The queue is looked at only when it may have changed: after a task event (a slot may be free),
        // when a caller changed the farm (`attention`), and now and then while idle (a slot freed by
        // another caller). Each look takes the farm's lock, too slow for every poll.
        var lookAgain = true
        var seenAttention = -1
        var idlePolls = 0
        while true {
            var progressed = false
            let attention = engine.attention
            if lookAgain || attention != seenAttention || runningTasks.isEmpty {
                let changed = attention != seenAttention
                lookAgain = false
                seenAttention = attention
                let free = vm.freeSlots()
                // With every slot held by a running task nothing can start: the queue can wait (a task's
                // result is followed by its exit, which frees the slot).
                if free > 0 || runningTasks.isEmpty {
                    guard let starting = engine.takeUnits(limit: free, busy: !runningTasks.isEmpty) else { return }
                    var offset = 0
                    while offset < starting.count {
                        guard start(starting[offset]) else {
                            // Another caller took the slot: put the units back, in order, and try again later.
                            engine.putBack(Array(starting[offset...]))
                            break
                        }
                        offset += 1
                    }
                    progressed = !starting.isEmpty
                }
                // A kill request calls for attention.
                if changed, engine.takeKillRequest() {
                    for task in runningTasks { try? vm.kill(task) }
                }
            }
            if !runningTasks.isEmpty {
                do {
                    if let event = try nextEvent() {
                        handle(event)
                        progressed = true
                    }
                } catch {
                    failAllRunning(error)
                }
            }
            if progressed {
                lookAgain = true
                idlePolls = 0
                backoff = Backoff(waitPolicy)
            } else {
                idlePolls += 1
                if idlePolls % 64 == 0 {
                    lookAgain = true
                    engine.handOverIfStale()
                }
                backoff.pause()
            }
        }
    }

    /// The next event of a task this farm runs, if one is there now. The filter reads `runningTasks` in
    /// place: a copy would be copied again by the first change, an allocation per event.
    private func nextEvent() throws(VMError) -> TaskEvent? {
        try vm.spawner.nextEvent(until: .now) { kind, task in
            kind != .user && runningTasks.contains(task)
        }
    }

    /// Starts one unit in a free slot: a single job as itself, several as one chunk task.
    /// Returns false when no slot was free after all (nothing was started).
    private func start(_ unit: Unit) -> Bool {
        let (known, rejected) = engine.rejectUnknown(unit, lastKnown: &lastKnownFunction)
        var failed = rejected
        var sending = known
        defer { if !failed.isEmpty { engine.complete(failed, unitFinished: sending.isEmpty) } }
        guard !sending.isEmpty else { return true }
        do {
            let task: TaskID?
            let avoiding = avoid.isEmpty ? [] : avoid[unit[0].index].map { Set([$0]) } ?? []
            if unit.count == 1 {
                task = try sending[0].item.spawn(vm, timeout(of: sending[0].item), avoiding)
            } else {
                var jobs = ChunkWriter(capacity: 24 * sending.count)
                var encodable: Unit = []
                encodable.reserveCapacity(sending.count)
                for var element in sending {
                    do {
                        let arguments = try element.item.encode()
                        try jobs.appendJob(function: element.item.spawnedFunction, arguments: arguments)
                        // The key is of the job's own function and arguments: a job that collects
                        // outputs runs wrapped, and its dispatch keys it.
                        if keysJobs, element.item.spawnedFunction == element.item.function {
                            element.key = keyMaker.key(function: element.item.function, encodedArguments: arguments)
                        }
                        encodable.append(element)
                    } catch {
                        let reason = VMError(
                            .encoding,
                            "cannot encode the arguments of \(element.item.name): \(error)",
                            underlying: error
                        )
                        failed.append(engine.failure(.encoding, element, reason))
                    }
                }
                sending = encodable
                guard jobs.count > 0 else { return true }
                // A chunk may run as long as its jobs together, when each of them has a limit.
                let limits = sending.map { timeout(of: $0.item) }
                let limit: Double? = limits.contains(nil) ? nil : limits.reduce(0) { $0 + $1! }
                task = try vm.spawn(
                    named: ChunkRunner.name,
                    args: jobs.finished(),
                    count: 1,
                    targets: nil,
                    sendBack: true,
                    timeout: limit,
                    avoiding: avoiding
                ).first
            }
            guard let task else {
                failed = []
                return false
            }
            running[task] = Started(unit: sending, at: monotonicSeconds())
            runningTasks.insert(task)
        } catch let error as VMError where error.code == .encoding {
            failed += sending.map { engine.failure(.encoding, $0, error) }
            sending = []
        } catch {
            failed += sending.map { engine.failure(.vm, $0, error) }
            sending = []
        }
        return true
    }

    /// The job's time limit: its own, or the dispatch's; nil for none.
    private func timeout(of job: FarmJob) -> Double? {
        if let own = job.timeout { return own }
        return engine.timeout > 0 ? engine.timeout : nil
    }

    private func handle(_ event: TaskEvent) {
        switch event {
        case .result(let task, let result):
            guard let runningUnit = running[task] else { return }
            let unit = runningUnit.unit
            running[task]?.resulted = true
            var finished = results(of: unit, task: task, result: result)
            // A job whose task did not return may start again elsewhere, `retries` times.
            let retryable = finished.allSatisfy { result in
                switch result.failureCode {
                case .crashed, .timedOut, .workerLost: true
                default: false
                }
            }
            if retryable, unit.count > 1, chunksAutomatically {
                // A chunk the farm joined by itself: its jobs start again one by one, so that each gets an
                // outcome of its own (a job that crashes crashes alone); that start is not a retry.
                engine.putBackAlone(unit)
                return
            }
            let first = unit[0].index
            let started = attempts.isEmpty ? 1 : attempts[first] ?? 1
            // A lost worker is no fault of the job's: it starts again elsewhere even without retries.
            let lostWorker = finished.allSatisfy { $0.failureCode == .workerLost }
            let allowed = lostWorker ? Swift.max(engine.retries, RemoteExecution.lostWorkerRetries) : engine.retries
            if retryable, started <= allowed {
                for element in unit { attempts[element.index] = started + 1 }
                avoid[first] = task.slot
                engine.putBack([unit])
                return
            }
            // Jobs that were started again are rare: the tables are empty for most.
            if !attempts.isEmpty {
                for position in finished.indices {
                    finished[position].attempts = attempts[finished[position].index] ?? 1
                }
                for element in unit { attempts[element.index] = nil }
            }
            if !avoid.isEmpty {
                for element in unit { avoid[element.index] = nil }
            }
            engine.complete(finished, unitFinished: true, measured: monotonicSeconds() - runningUnit.at)
        case .exit(let task):
            guard let started = running.removeValue(forKey: task) else { return }
            let unit = started.unit
            runningTasks.remove(task)
            if !started.resulted {
                let error = VMError(.taskLost, "task \(task) ended without sending a result")
                engine.complete(unit.map { engine.failure(.vm, $0, error, task: task) }, unitFinished: true)
            }
        case .user:
            break
        }
    }

    /// The results of a unit from its task's result.
    private func results(of unit: Unit, task: TaskID, result: TaskResult) -> [FarmResult] {
        let host = vm.hostID(task) ?? HostID("rank \(task.slot)")
        if let error = result.error {
            return unit.map { engine.failure(.failed, $0, error, task: task) }
        }
        guard result.function == ChunkRunner.name else {
            return [valueResult(unit[0], typeName: result.valueType, bytes: result.valueBytes, task: task, host: host)]
        }
        var outcomes: ChunkReader
        do {
            outcomes = try ChunkReader(try BinaryDecoder.decode([UInt8].self, from: result.valueBytes), of: "outcomes")
            guard outcomes.count == unit.count else {
                throw VMError(.encoding, "a chunk of \(unit.count) jobs returned \(outcomes.count) outcomes")
            }
        } catch {
            return unit.map { engine.failure(.encoding, $0, error, task: task) }
        }
        var results: [FarmResult] = []
        results.reserveCapacity(unit.count)
        // The outcomes before a malformed one stand; it and those after it cannot be read.
        var malformed: VMError?
        for element in unit {
            let outcome: ChunkRunner.Outcome
            do throws(VMError) {
                if let malformed { throw malformed }
                outcome = try outcomes.nextOutcome()
            } catch {
                malformed = error
                results.append(engine.failure(.encoding, element, error, task: task))
                continue
            }
            guard outcome.success else {
                let error = RemoteError(
                    function: element.item.function,
                    typeName: outcome.typeName,
                    message: outcome.message,
                    task: task,
                    host: host
                )
                results.append(engine.failure(.failed, element, error, task: task))
                continue
            }
            results.append(
                valueResult(element, typeName: outcome.typeName, bytes: outcome.value, task: task, host: host)
            )
        }
        return results
    }

    /// A worker's value, handed over encoded: the farm's caller checks its type and decodes it.
    private func valueResult(
        _ element: FarmQueue<FarmJob, FarmResult>.Element,
        typeName: String,
        bytes: [UInt8],
        task: TaskID,
        host: HostID
    ) -> FarmResult {
        var result = FarmResult(
            index: element.index,
            job: element.item,
            outcome: .encoded(typeName: typeName, bytes: bytes),
            host: host,
            task: task
        )
        result.key = element.key
        return result
    }

    /// The spawner failed: every running job fails, since its messages may never come.
    private func failAllRunning(_ error: any Error) {
        let units = running
        running = [:]
        runningTasks = []
        for (task, started) in units where !started.resulted {
            let unit = started.unit
            engine.complete(unit.map { engine.failure(.vm, $0, error, task: task) }, unitFinished: true)
        }
    }
}
