import Foundation
import ParallelVMCodec

/// Runs jobs in the VM's worker slots, one job (or chunk of jobs) per slot, and hands their results back
/// one at a time as they finish: PyOPUS's `Spawn` and `Join`, for writing an asynchronous loop by hand.
/// ``VM/dispatch(_:remote:chunkSize:failFast:progress:collectResults:collector:)`` is built on it.
///
/// ```swift
/// let farm = try Farm<Int>(vm)
/// var stop = false, next = 0
/// while !(stop && farm.outstanding == 0) {
///     while !stop && farm.hasFreeSlot {
///         try await farm.spawn(Job(double, args: next))
///         next += 1
///     }
///     guard let result = try await farm.join() else { break }
///     if try result.get() >= 150 { stop = true }   // spawn no more; the loop joins the rest
/// }
/// await farm.close()
/// ```
///
/// Without workers (a program started without mpirun, or a single rank), or with `remote: false`, jobs run
/// in this process: functions with a blocking body one at a time on the farm's thread, ``AsyncRemoteFunction``
/// jobs concurrently, as many as the machine has cores.
///
/// A farm owns the VM's task messages while it runs: its thread takes the ``TaskResult`` and ``Message/taskExit``
/// of the tasks it spawned, and prints forwarded worker logs. Every other message (user messages, results of
/// tasks you spawned yourself) stays queued, in order, for ``VM/receiveMessage(timeout:)``. Do not call
/// ``VM/receiveMessage(timeout:)`` while a farm has jobs running: it could take their results. Slots held by
/// tasks you spawned yourself are only freed when you receive their exits, so start a farm with the VM idle.
///
/// One task at a time should call ``spawn(_:)`` and one ``join()``.
public final class Farm<Value: Codable & Sendable>: Sendable {
    let engine: FarmEngine<Value>

    /// Whether jobs go to workers (false: they run in this process).
    public var isRemote: Bool { engine.isRemote }

    /// How many jobs run at once: the worker slots, or, running in this process, the cores.
    public var slots: Int { engine.slots }

    /// Creates a farm over `vm` and starts its thread.
    ///
    /// - Parameter remote: false runs jobs in this process even when workers are available.
    public convenience init(_ vm: VM, remote: Bool = true) throws {
        try self.init(vm, remote: remote, lookaheadPerSlot: 0, inputOpen: false)
    }

    /// - Parameters:
    ///   - lookaheadPerSlot: units per slot that may wait in the queue, so that a slot that frees gets its
    ///     next unit without a round trip to the task feeding the farm.
    ///   - inputOpen: whether ``join()`` should wait for more jobs when none is outstanding (until ``finishInput()``).
    ///   - unjoinedLimitPerSlot: when given, room for a new unit also needs fewer unjoined jobs than this
    ///     many per slot, so that a feeder cannot run ahead of the joiner when jobs finish as fast as they start.
    init(_ vm: VM, remote: Bool, lookaheadPerSlot: Int, unjoinedLimitPerSlot: Int? = nil, inputOpen: Bool) throws {
        if vm.runtime.isFinalized {
            throw VMError(.finalized, "a farm cannot start: the VM was finalized")
        }
        engine = FarmEngine(
            vm: vm,
            remote: remote,
            lookaheadPerSlot: lookaheadPerSlot,
            unjoinedLimitPerSlot: unjoinedLimitPerSlot,
            inputOpen: inputOpen
        )
        engine.start()
    }

    deinit {
        engine.stop(closing: true)
    }

    /// Whether fewer jobs are outstanding than there are slots: a job spawned now starts at once, and no
    /// finished job waits to be joined for the slot (PyOPUS's `freeSlots() - finishedTasks() > 0`), so a
    /// loop that spawns while this is true also joins, even when jobs finish as fast as they start.
    public var hasFreeSlot: Bool { engine.hasFreeSlot }

    /// Jobs spawned and not yet joined (running, or finished and waiting for ``join()``).
    public var outstanding: Int { engine.outstandingJobs }

    /// Jobs spawned whose results have not arrived yet: never more than ``slots``.
    public var running: Int { engine.unitsRunning }

    /// Waits until a slot is free, then starts `job` in it; returns the job's index (spawn order, from 0).
    ///
    /// Throws a ``VMError`` when the farm is closed, and `CancellationError` when the task is cancelled.
    @discardableResult
    public func spawn(_ job: Job<Value>) async throws -> Int {
        try await waitForFreeSlot()
        guard let index = engine.submit([job]) else {
            throw VMError(.invalidSpawn, "cannot spawn \(job.name): the farm is closed")
        }
        return index
    }

    /// Waits until fewer jobs are running than there are slots (returns at once when the farm is closed).
    public func waitForFreeSlot() async throws {
        try await engine.waitForFreeSlot()
    }

    /// The next finished job, in completion order; nil when no job is outstanding.
    ///
    /// A job that throws gives a failed ``JobResult``; `join` itself only throws `CancellationError`.
    public func join() async throws -> JobResult<Value>? {
        try await engine.join()
    }

    /// Starts no more jobs, waits for the running ones to end and drops their results, and stops the
    /// farm's thread. Jobs spawned but not started yet are dropped.
    public func close() async {
        engine.stop(closing: true)
        await engine.waitUntilDone()
    }

    // MARK: - For the dispatcher

    /// Queues a unit of jobs (a chunk when remote) for the next free slot; returns the first job's index,
    /// or nil when the farm is stopped.
    func submit(_ jobs: [Job<Value>]) -> Int? { engine.submit(jobs) }

    /// Tells ``join()`` that no more jobs will come: it returns nil once every job is joined.
    func finishInput() { engine.finishInput() }

    /// Starts no more jobs and drops queued ones; running jobs go on and can still be joined.
    func stopSpawning() { engine.stop(closing: false) }

    /// Whether ``stopSpawning()`` or ``close()`` was called.
    var isStopped: Bool { engine.isStopped }
}

/// The machinery of a ``Farm``: a queue of units, a thread of its own that starts them (in worker slots,
/// or in this process) and takes their results, and the continuations that hand results to async callers.
///
/// The VM's waits block (they poll MPI), so they run on this thread and never on Swift's cooperative pool.
final class FarmEngine<Value: Codable & Sendable>: @unchecked Sendable {
    // Invariant for @unchecked Sendable: the `let` properties never change after init; every `var` except
    // `running`, `resulted` and `context` is only touched while holding `condition`; those three are only
    // touched by the farm's own thread.
    typealias Unit = [(index: Int, job: Job<Value>)]

    let vm: VM
    let isRemote: Bool
    let slots: Int
    /// Units allowed in flight (queued or running): the slots plus the lookahead.
    private let capacity: Int
    /// Unjoined jobs allowed before a new unit fits (dispatch), or nil (a hand-written loop joins when it likes).
    private let unjoinedLimit: Int?
    private let condition = NSCondition()

    private var queue: [Unit] = []
    private var queueHead = 0
    private var unitsInFlight = 0
    private var outstandingJobsLocked = 0
    private var finished: [JobResult<Value>] = []
    private var finishedHead = 0
    private var nextIndex = 0
    private var inputOpen: Bool
    private var stopped = false
    private var closing = false
    private var threadDone = false
    private var localTasks = 0
    private var joinWaiter: CheckedContinuation<JobResult<Value>?, any Error>?
    private var slotWaiter: CheckedContinuation<Void, any Error>?
    private var doneWaiters: [CheckedContinuation<Void, Never>] = []

    private var running: [TaskID: Unit] = [:]
    private var resulted: Set<TaskID> = []

    init(vm: VM, remote: Bool, lookaheadPerSlot: Int, unjoinedLimitPerSlot: Int?, inputOpen: Bool) {
        self.vm = vm
        let workers = vm.slots() - 1
        self.isRemote = remote && vm.runtime.transport != nil && workers > 0
        let slots = isRemote ? workers : max(1, ProcessInfo.processInfo.activeProcessorCount)
        self.slots = slots
        self.capacity = slots * (1 + max(0, lookaheadPerSlot))
        self.unjoinedLimit = unjoinedLimitPerSlot.map { slots * max(1, $0) }
        self.inputOpen = inputOpen
    }

    func start() {
        let thread = Thread { [self] in
            if isRemote, let transport = vm.runtime.transport {
                serveRemote(transport)
            } else {
                serveLocal()
            }
            condition.withLock {
                threadDone = true
                for waiter in doneWaiters { waiter.resume() }
                doneWaiters = []
            }
        }
        thread.name = "ParallelVM.farm"
        thread.start()
    }

    // MARK: - Callers' side

    var hasFreeSlot: Bool { condition.withLock { !stopped && outstandingJobsLocked < slots } }
    /// Whether a unit submitted now fits: free slots plus the lookahead.
    var hasRoom: Bool { condition.withLock { hasRoomLocked } }

    private var hasRoomLocked: Bool {
        !stopped && unitsInFlight < capacity && outstandingJobsLocked < (unjoinedLimit ?? Int.max)
    }

    /// Wakes the task waiting for room, if there is room now.
    private func resumeSlotWaiterIfRoomLocked() {
        if hasRoomLocked, let slotWaiter {
            self.slotWaiter = nil
            slotWaiter.resume()
        }
    }
    var outstandingJobs: Int { condition.withLock { outstandingJobsLocked } }
    var unitsRunning: Int { condition.withLock { unitsInFlight } }
    var isStopped: Bool { condition.withLock { stopped } }

    func submit(_ jobs: [Job<Value>]) -> Int? {
        guard !jobs.isEmpty else { return nil }
        return condition.withLock {
            guard !stopped else { return nil }
            let first = nextIndex
            let unit: Unit = jobs.enumerated().map { (first + $0.offset, $0.element) }
            nextIndex += jobs.count
            // Running in this process, each job is a unit of its own: chunks only save messages.
            if isRemote {
                queue.append(unit)
                unitsInFlight += 1
            } else {
                for element in unit { queue.append([element]) }
                unitsInFlight += unit.count
            }
            outstandingJobsLocked += jobs.count
            condition.signal()
            return first
        }
    }

    func finishInput() {
        condition.withLock {
            inputOpen = false
            resumeJoinerIfDrainedLocked()
        }
    }

    /// Stops starting units and drops queued ones; with `closing`, the thread also ends once nothing runs.
    func stop(closing: Bool) {
        condition.withLock {
            stopped = true
            if closing { self.closing = true }
            let dropped = queue[queueHead...]
            unitsInFlight -= dropped.count
            outstandingJobsLocked -= dropped.reduce(0) { $0 + $1.count }
            queue = []
            queueHead = 0
            slotWaiter?.resume()
            slotWaiter = nil
            if closing, let joinWaiter {
                self.joinWaiter = nil
                joinWaiter.resume(returning: nil)
            }
            resumeJoinerIfDrainedLocked()
            condition.broadcast()
        }
    }

    func waitForFreeSlot() async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                condition.withLock {
                    if Task.isCancelled {
                        continuation.resume(throwing: CancellationError())
                    } else if stopped || hasRoomLocked {
                        continuation.resume()
                    } else if slotWaiter != nil {
                        continuation.resume(
                            throwing: VMError(.invalidSpawn, "two tasks wait for a free slot of the same farm")
                        )
                    } else {
                        slotWaiter = continuation
                    }
                }
            }
        } onCancel: {
            condition.withLock {
                slotWaiter?.resume(throwing: CancellationError())
                slotWaiter = nil
            }
        }
    }

    func join() async throws -> JobResult<Value>? {
        // Fast path: a result is waiting, no suspension needed.
        if let ready = condition.withLock({ finishedHead < finished.count ? popFinishedLocked() : nil }) {
            return ready
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation {
                (continuation: CheckedContinuation<JobResult<Value>?, any Error>) in
                condition.withLock {
                    if Task.isCancelled {
                        continuation.resume(throwing: CancellationError())
                    } else if finishedHead < finished.count {
                        continuation.resume(returning: popFinishedLocked())
                    } else if outstandingJobsLocked == 0 && (!inputOpen || stopped) {
                        continuation.resume(returning: nil)
                    } else if joinWaiter != nil {
                        continuation.resume(throwing: VMError(.invalidSpawn, "two tasks join the same farm at once"))
                    } else {
                        joinWaiter = continuation
                    }
                }
            }
        } onCancel: {
            condition.withLock {
                joinWaiter?.resume(throwing: CancellationError())
                joinWaiter = nil
            }
        }
    }

    func waitUntilDone() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            condition.withLock {
                if threadDone { continuation.resume() } else { doneWaiters.append(continuation) }
            }
        }
    }

    private func popFinishedLocked() -> JobResult<Value> {
        let result = finished[finishedHead]
        finishedHead += 1
        if finishedHead > 1024, finishedHead * 2 > finished.count {
            finished.removeFirst(finishedHead)
            finishedHead = 0
        }
        outstandingJobsLocked -= 1
        resumeSlotWaiterIfRoomLocked()
        return result
    }

    private func resumeJoinerIfDrainedLocked() {
        if outstandingJobsLocked == 0, !inputOpen || stopped, let joinWaiter {
            self.joinWaiter = nil
            joinWaiter.resume(returning: nil)
        }
    }

    // MARK: - Results (any thread)

    /// Hands finished jobs to the joiner; `unitFinished` frees the unit's place in the farm.
    private func complete(_ results: [JobResult<Value>], unitFinished: Bool, localTaskEnded: Bool = false) {
        condition.withLock {
            for result in results {
                if let joinWaiter {
                    self.joinWaiter = nil
                    outstandingJobsLocked -= 1
                    resumeSlotWaiterIfRoomLocked()
                    joinWaiter.resume(returning: result)
                } else {
                    finished.append(result)
                }
            }
            if unitFinished {
                unitsInFlight -= 1
                resumeSlotWaiterIfRoomLocked()
            }
            if localTaskEnded {
                localTasks -= 1
                condition.broadcast()
            }
        }
    }

    private func failure(
        _ code: JobError.Code,
        _ element: (index: Int, job: Job<Value>),
        _ error: any Error,
        task: TaskID? = nil
    ) -> JobResult<Value> {
        JobResult(
            index: element.index,
            job: element.job,
            outcome: .failure(JobError(code, index: element.index, job: element.job, underlying: error)),
            host: task.flatMap { vm.hostID($0) },
            task: task
        )
    }

    /// Takes the next unit to start, waiting while there is none; nil when the thread should end.
    private func nextUnitLocked() -> Unit? {
        guard queueHead < queue.count else { return nil }
        let unit = queue[queueHead]
        queueHead += 1
        if queueHead > 1024, queueHead * 2 > queue.count {
            queue.removeFirst(queueHead)
            queueHead = 0
        }
        return unit
    }

    /// The jobs of `unit` whose function this process does not know fail at once, as they would on any worker.
    private func rejectUnknown(_ unit: Unit) -> (known: Unit, rejected: [JobResult<Value>]) {
        var known: Unit = []
        var rejected: [JobResult<Value>] = []
        for element in unit {
            if vm.runtime.functions[element.job.function] == nil {
                let error = VMError(
                    .unknownFunction,
                    "function '\(element.job.function)' is not registered; pass it to the first VM the program creates (registered: \(vm.runtime.functions.names.filter { $0 != ChunkRunner.name }.joined(separator: ", ")))"
                )
                rejected.append(failure(.unknownFunction, element, error))
            } else {
                known.append(element)
            }
        }
        return (known, rejected)
    }

    // MARK: - The farm thread, running jobs in this process

    private func serveLocal() {
        let context = TaskContext(runtime: vm.runtime, taskID: .spawner, debug: vm.debug, vmIndex: vm.vmIndex)
        while true {
            condition.lock()
            // Async jobs run as tasks of their own; at most `slots` of them at once.
            while (queueHead == queue.count || localTasks >= slots) && !closing { condition.wait() }
            if closing {
                while localTasks > 0 { condition.wait() }
                condition.unlock()
                return
            }
            let unit = nextUnitLocked()!
            condition.unlock()
            run(unit, in: context)
        }
    }

    /// Runs a one-job unit in this process: a blocking body here, an async body as a task of its own.
    private func run(_ unit: Unit, in context: TaskContext) {
        let (known, rejected) = rejectUnknown(unit)
        guard let element = known.first else {
            complete(rejected, unitFinished: true)
            return
        }
        switch element.job.local {
        case .blocking(let body):
            let outcome: Result<Value, JobError>
            do {
                outcome = .success(try body(context))
            } catch {
                outcome = .failure(JobError(.failed, index: element.index, job: element.job, underlying: error))
            }
            complete(
                [JobResult(index: element.index, job: element.job, outcome: outcome, host: nil, task: nil)],
                unitFinished: true
            )
        case .async(let body):
            condition.withLock { localTasks += 1 }
            Task {
                let outcome: Result<Value, JobError>
                do {
                    outcome = .success(try await body(context))
                } catch {
                    outcome = .failure(JobError(.failed, index: element.index, job: element.job, underlying: error))
                }
                self.complete(
                    [JobResult(index: element.index, job: element.job, outcome: outcome, host: nil, task: nil)],
                    unitFinished: true,
                    localTaskEnded: true
                )
            }
        }
    }

    // MARK: - The farm thread, running jobs on workers

    private func serveRemote(_ transport: Transport) {
        var backoff = Backoff(transport.waitPolicy)
        while true {
            let free = vm.freeSlots()
            condition.lock()
            while queueHead == queue.count && running.isEmpty && !closing { condition.wait() }
            if closing && running.isEmpty {
                condition.unlock()
                return
            }
            var starting: [Unit] = []
            while starting.count < free, let unit = nextUnitLocked() { starting.append(unit) }
            condition.unlock()

            var progressed = false
            for (offset, unit) in starting.enumerated() where !startRemote(unit) {
                // Another caller took the slot: put the units back, in order, and try again later.
                condition.withLock {
                    let back = Array(starting[offset...])
                    if !stopped {
                        queue.replaceSubrange(queueHead..<queueHead, with: back)
                    } else {
                        unitsInFlight -= back.count
                        outstandingJobsLocked -= back.reduce(0) { $0 + $1.count }
                        resumeJoinerIfDrainedLocked()
                    }
                }
                break
            }
            progressed = !starting.isEmpty
            if !running.isEmpty {
                do {
                    if let envelope = try transport.receive(timeout: 0, matching: isForThisFarm) {
                        handle(envelope)
                        progressed = true
                    }
                } catch {
                    failAllRunning(error)
                }
            }
            if progressed {
                backoff = Backoff(transport.waitPolicy)
            } else {
                backoff.pause()
            }
        }
    }

    /// Frames this farm takes: its tasks' results and exits, and worker logs (printed as the VM prints them).
    private func isForThisFarm(_ envelope: Envelope) -> Bool {
        switch envelope.kind {
        case .log: true
        case .taskResult, .taskExit: running[envelope.sourceID] != nil
        default: false
        }
    }

    /// Starts one unit in a free slot: a single job as itself, several as one chunk task.
    /// Returns false when no slot was free after all (nothing was started).
    private func startRemote(_ unit: Unit) -> Bool {
        let (known, rejected) = rejectUnknown(unit)
        var failed = rejected
        var sending = known
        defer { if !failed.isEmpty { complete(failed, unitFinished: sending.isEmpty) } }
        guard !sending.isEmpty else { return true }
        do {
            let task: TaskID?
            if unit.count == 1 {
                task = try sending[0].job.spawn(vm)
            } else {
                var items: [ChunkRunner.Item] = []
                var encodable: Unit = []
                for element in sending {
                    do {
                        items.append(
                            ChunkRunner.Item(
                                function: element.job.function,
                                arguments: try element.job.encodedArguments()
                            )
                        )
                        encodable.append(element)
                    } catch {
                        let reason = VMError(.encoding, "cannot encode the arguments of \(element.job.name): \(error)")
                        failed.append(failure(.encoding, element, reason))
                    }
                }
                sending = encodable
                guard !items.isEmpty else { return true }
                task = try vm.spawnFunction(named: ChunkRunner.name, args: items, count: 1).first
            }
            guard let task else {
                failed = []
                return false
            }
            running[task] = sending
        } catch let error as VMError where error.code == .encoding {
            failed += sending.map { failure(.encoding, $0, error) }
            sending = []
        } catch {
            failed += sending.map { failure(.vm, $0, error) }
            sending = []
        }
        return true
    }

    private func handle(_ envelope: Envelope) {
        let task = envelope.sourceID
        switch envelope.kind {
        case .log:
            vm.runtime.printForwardedLog(envelope)
        case .taskResult:
            guard let unit = running[task] else { return }
            resulted.insert(task)
            complete(results(of: unit, task: task, envelope: envelope), unitFinished: true)
        case .taskExit:
            // As VM.receiveMessage does: the exit frees the slot in the book.
            vm.runtime.taskExited(envelope)
            guard let unit = running.removeValue(forKey: task) else { return }
            if resulted.remove(task) == nil {
                let error = VMError(.mpi, "task \(task) ended without sending a result")
                complete(unit.map { failure(.vm, $0, error, task: task) }, unitFinished: true)
            }
        default:
            break
        }
    }

    /// The results of a unit from its task's result frame (laid out as `VM.receiveMessage` reads it).
    private func results(of unit: Unit, task: TaskID, envelope: Envelope) -> [JobResult<Value>] {
        let host = vm.hostID(task) ?? HostID("rank \(task.slot)")
        let result: TaskResult
        do {
            result = try TaskResult(envelope, host: host)
        } catch {
            return unit.map { failure(.vm, $0, error, task: task) }
        }
        if let error = result.error {
            return unit.map { failure(.failed, $0, error, task: task) }
        }
        let function = result.function
        let valueType = result.valueType
        let bytes = result.valueBytes
        guard function == ChunkRunner.name else {
            return [decode(unit[0], typeName: valueType, bytes: bytes, task: task, host: host)]
        }
        let outcomes: [ChunkRunner.Outcome]
        do {
            outcomes = try BinaryDecoder.decode([ChunkRunner.Outcome].self, from: bytes)
            guard outcomes.count == unit.count else {
                throw VMError(.encoding, "a chunk of \(unit.count) jobs returned \(outcomes.count) outcomes")
            }
        } catch {
            return unit.map { failure(.encoding, $0, error, task: task) }
        }
        return zip(unit, outcomes).map { element, outcome in
            guard outcome.success else {
                let error = RemoteError(
                    function: element.job.function,
                    typeName: outcome.typeName,
                    message: outcome.message,
                    task: task,
                    host: host
                )
                return failure(.failed, element, error, task: task)
            }
            return decode(element, typeName: outcome.typeName, bytes: outcome.value, task: task, host: host)
        }
    }

    private func decode(
        _ element: (index: Int, job: Job<Value>),
        typeName: String,
        bytes: [UInt8],
        task: TaskID,
        host: HostID
    ) -> JobResult<Value> {
        let expected = _typeName(Value.self, qualified: true)
        guard typeName == expected else {
            let error = VMError(
                .typeMismatch,
                "the result of '\(element.job.function)' is a \(typeName), not a \(expected)"
            )
            return failure(.encoding, element, error, task: task)
        }
        do {
            let value = try BinaryDecoder.decode(Value.self, from: bytes)
            return JobResult(index: element.index, job: element.job, outcome: .success(value), host: host, task: task)
        } catch {
            let reason = VMError(
                .encoding,
                "the result of '\(element.job.function)' could not be decoded as \(expected): \(error)"
            )
            return failure(.encoding, element, reason, task: task)
        }
    }

    /// The transport failed: every running job fails, since its messages may never come.
    private func failAllRunning(_ error: any Error) {
        let units = running
        let done = resulted
        running = [:]
        resulted = []
        for (task, unit) in units where !done.contains(task) {
            complete(unit.map { failure(.vm, $0, error, task: task) }, unitFinished: true)
        }
    }
}
