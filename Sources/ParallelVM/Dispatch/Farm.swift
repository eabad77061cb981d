import Foundation
import ParallelVMCodec
import Synchronization

/// Runs jobs in the VM's worker slots, one job (or chunk of jobs) per slot, and hands their results back
/// one at a time as they finish: PyOPUS's `Spawn` and `Join`, for writing an asynchronous loop by hand.
/// `VM.dispatch(_:remote:chunkSize:failFast:progress:collectResults:collector:)` is built on it.
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
/// Without workers (one process without local slots: `PARALLELVM_LOCAL_SLOTS=0`), or with `remote: false`, jobs run
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
    let engine: FarmEngine
    /// `Value`'s qualified name, which every worker's result type is checked against: made once, not per result.
    let valueTypeName = _typeName(Value.self, qualified: true)

    /// Whether jobs go to workers (false: they run in this process).
    public var isRemote: Bool { engine.isRemote }

    /// How many jobs run at once: the worker slots, or, running in this process, the cores.
    public var slots: Int { engine.slots }

    /// Creates a farm over `vm` and starts its thread.
    ///
    /// - Parameters:
    ///   - vm: the VM whose worker slots run the jobs.
    ///   - remote: false runs jobs in this process even when workers are available.
    public convenience init(_ vm: VM, remote: Bool = true) throws {
        try self.init(vm, remote: remote, lookaheadPerSlot: 0, inputOpen: false)
    }

    /// - Parameters:
    ///   - lookaheadPerSlot: units per slot that may wait in the queue, so that a slot that frees gets its
    ///     next unit without a round trip to the task feeding the farm.
    ///   - inputOpen: whether ``join()`` should wait for more jobs when none is outstanding (until ``finishInput()``).
    ///   - unjoinedLimitPerSlot: when given, room for a new unit also needs fewer unjoined jobs than this
    ///     many per slot, so that a feeder cannot run ahead of the joiner when jobs finish as fast as they start.
    ///   - chunker: joins queued jobs into chunks of the sizes it picks (``ChunkSize/auto``).
    ///   - lookaheadInChunks: count `lookaheadPerSlot` in chunks of the chunker's size rather than in units.
    ///   - deferHandover: wake a waiting joiner only once the queue runs low (or the farm drains), so that it
    ///     takes many results at once; for a joiner that only collects or journals them.
    ///   - keysJobs: the farm's thread makes the journal key of every job it sends in a chunk from the
    ///     arguments it encodes for it (``FarmResult/key``), so that a journaled dispatch need not encode
    ///     them a second time.
    ///   - deferredHandoverLimit: how long, in seconds, a deferred hand-over keeps finished jobs from a
    ///     waiting joiner at most.
    init(
        _ vm: VM,
        remote: Bool,
        lookaheadPerSlot: Int,
        unjoinedLimitPerSlot: Int? = nil,
        inputOpen: Bool,
        timeout: Double = 0,
        retries: Int = 0,
        chunker: AutoChunker? = nil,
        lookaheadInChunks: Bool = false,
        deferHandover: Bool = false,
        deferredHandoverLimit: Double = 0.02,
        keysJobs: Bool = false
    ) throws {
        if vm.spawner.isFinalized {
            throw VMError(.finalized, "a farm cannot start: the VM was finalized")
        }
        engine = FarmEngine(
            vm: vm,
            remote: remote,
            lookaheadPerSlot: lookaheadPerSlot,
            unjoinedLimitPerSlot: unjoinedLimitPerSlot,
            inputOpen: inputOpen,
            timeout: timeout,
            retries: retries,
            chunker: chunker,
            lookaheadInChunks: lookaheadInChunks,
            deferHandover: deferHandover,
            deferredHandoverLimit: deferredHandoverLimit,
            keysJobs: keysJobs
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
        guard let index = engine.submit([job.storage]) else {
            throw VMError(.farmClosed, "cannot spawn \(job.name): the farm is closed")
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
        try await engine.join(upTo: 1)?.first.map { jobResult(of: $0) }
    }

    /// Starts no more jobs, waits for the running ones to end and drops their results, and stops the
    /// farm's thread. Jobs spawned but not started yet are dropped.
    public func close() async {
        engine.stop(closing: true)
        await engine.waitUntilDone()
    }

    /// Starts closing as ``close()`` does, without waiting for the farm's thread to end (a later
    /// ``close()`` waits).
    func beginClosing() {
        engine.stop(closing: true)
    }

    /// Like ``close()``, but kills the running jobs first (with process isolation) instead of waiting for them.
    public func cancel() async {
        engine.stop(closing: true)
        engine.killRunning()
        await engine.waitUntilDone()
    }

    // MARK: - For the dispatcher

    /// Queues jobs as units of `unitSize` jobs (by default, one unit: a chunk when remote) for the next
    /// free slots; returns the first job's index, or nil when the farm is stopped. `jobs` are the
    /// ``Job/storage`` of jobs of this farm's `Value`.
    func submit(_ jobs: [FarmJob], unitSize: Int = Int.max) -> Int? {
        engine.submit(jobs, unitSize: unitSize)
    }

    /// The finished jobs waiting (at least one, waiting for one when none is), in completion order; nil
    /// when no job is outstanding. Their values are decoded here, on the caller's task, in one go.
    func joinBatch() async throws -> [JobResult<Value>]? {
        guard let finished = try await engine.join(upTo: Int.max) else { return nil }
        var results: [JobResult<Value>] = []
        results.reserveCapacity(finished.count)
        for result in finished { results.append(jobResult(of: result)) }
        return results
    }

    /// ``joinBatch()`` as the farm's thread handed the results over, for a caller that needs the
    /// encoded values too (an experiment's journal); ``jobResult(of:index:job:)`` makes job results of them.
    func joinFarmResults() async throws -> [FarmResult]? {
        try await engine.join(upTo: Int.max)
    }

    /// The job result of a farm result: the value decoded as `Value` (a failure when it is of another
    /// type or cannot be decoded). `index` and `job` replace the farm's index and the job it ran (a
    /// journaled dispatch numbers its jobs by itself, and runs wrapped copies of some).
    func jobResult(of result: FarmResult, index: Int? = nil, job: Job<Value>? = nil) -> JobResult<Value> {
        var failure: JobError?
        return jobResult(of: result, index: index, job: job, failure: &failure)
    }

    /// Always inlined, as are ``journaledResult(of:index:job:failure:value:)`` and `decode`: code generic
    /// over `Value` looks type metadata up at each call, so one function per batch of jobs looks it up
    /// once for the batch instead of once per job (a tenth of a dispatch's time, for tiny jobs).
    ///
    /// ``jobResult(of:index:job:)`` that also leaves the job's error in `failure` when it failed (and
    /// does not touch it otherwise), set where the error is made: a caller then needs no switch over the
    /// generic outcome, which unspecialised code pays for with a metadata lookup per job.
    @inline(__always)
    private func jobResult(
        of result: FarmResult,
        index: Int?,
        job: Job<Value>?,
        failure: inout JobError?
    ) -> JobResult<Value> {
        let index = index ?? result.index
        // Only this farm's callers submit its jobs, all of them a `Job<Value>`'s storage.
        let job = job ?? Job(storage: unsafeDowncast(result.job, to: JobStorage<Value>.self))
        let outcome: Result<Value, JobError>
        switch result.outcome {
        case .encoded(let typeName, let bytes):
            outcome = decode(typeName: typeName, bytes: bytes, index: index, job: job, failure: &failure)
        case .value(let value):
            outcome = .success(value as! Value)
        case .failure(let code, let error):
            let made = JobError(code, index: index, job: job, underlying: error)
            failure = made
            outcome = .failure(made)
        }
        var jobResult = JobResult(index: index, job: job, outcome: outcome, host: result.host, task: result.task)
        jobResult.attempts = result.attempts
        return jobResult
    }

    /// ``jobResult(of:index:job:)`` with what a journal keeps of it, so that journaling needs no code
    /// generic over `Value`: in `failure` the job's error when it failed, else in `value` its value's
    /// bytes (the worker's, or encoded here for a job run in this process). Not a tuple: unspecialised
    /// code looks a tuple's type up under a lock each time it makes one.
    @inline(__always)
    func journaledResult(
        of result: FarmResult,
        index: Int,
        job: Job<Value>?,
        failure: inout JobError?,
        value: inout [UInt8]
    ) throws -> JobResult<Value> {
        failure = nil
        let jobResult = jobResult(of: result, index: index, job: job, failure: &failure)
        guard failure == nil else {
            value = []
            return jobResult
        }
        switch result.outcome {
        case .encoded(_, let bytes): value = bytes
        case .value(let local): value = try BinaryEncoder.encode(local as! Value)
        case .failure: value = []
        }
        return jobResult
    }

    @inline(__always)
    private func decode(
        typeName: String,
        bytes: [UInt8],
        index: Int,
        job: Job<Value>,
        failure: inout JobError?
    ) -> Result<Value, JobError> {
        guard typeName == valueTypeName else {
            let error = VMError(
                .typeMismatch,
                "the result of '\(job.function)' is a \(typeName), not a \(valueTypeName)"
            )
            let made = JobError(.encoding, index: index, job: job, underlying: error)
            failure = made
            return .failure(made)
        }
        do {
            return .success(try BinaryDecoder.decode(Value.self, from: bytes))
        } catch {
            let reason = VMError(
                .encoding,
                "the result of '\(job.function)' could not be decoded as \(valueTypeName): \(error)",
                underlying: error
            )
            let made = JobError(.encoding, index: index, job: job, underlying: reason)
            failure = made
            return .failure(made)
        }
    }

    /// Tells ``join()`` that no more jobs will come: it returns nil once every job is joined.
    func finishInput() { engine.finishInput() }

    /// Starts no more jobs and drops queued ones; running jobs go on and can still be joined.
    func stopSpawning() { engine.stop(closing: false) }

    /// Whether ``stopSpawning()`` or ``close()`` was called.
    var isStopped: Bool { engine.isStopped }
}

/// The machinery of a ``Farm``: its ``FarmQueue`` behind a condition, a thread of its own that starts
/// units (``RemoteExecution`` in worker slots, or ``LocalExecution`` in this process) and takes their
/// results, and the continuations that hand results to async callers.
///
/// The VM's waits block (they poll MPI), so they run on this thread and never on Swift's cooperative pool.
final class FarmEngine: @unchecked Sendable {
    // Invariant for @unchecked Sendable: the `let` properties never change after init; every `var` is only
    // touched while holding `condition`.
    typealias Unit = FarmQueue<FarmJob, FarmResult>.Unit

    let vm: VM
    let isRemote: Bool
    let slots: Int
    /// Seconds a job may run on a worker unless it says otherwise; 0: no limit.
    let timeout: Double
    /// How many more times a job whose task crashed, timed out or lost its worker is started.
    let retries: Int
    /// Whether a waiting joiner is woken only once the queue runs low (see `handOverNowLocked`).
    let deferHandover: Bool
    /// How long a deferred hand-over keeps finished jobs from a waiting joiner at most, in seconds: long
    /// jobs still reach a progress line (and a journal) promptly.
    let deferredHandoverLimit: Double
    /// Whether the farm's thread makes the journal keys of the jobs it sends in chunks (see ``Farm``'s init).
    let keysJobs: Bool
    private let condition = NSCondition()
    /// Counts the changes callers make that the farm's thread must look at (jobs queued, stop, kill), so
    /// that it takes the condition's lock only when something changed.
    private let attentionCounter = Atomic<Int>(0)
    /// Whether the running jobs are to be killed (the dispatch was cancelled).
    private var killRequested = false
    private var queue: FarmQueue<FarmJob, FarmResult>
    private var threadDone = false
    /// Async jobs running in this process as tasks of their own.
    private var localTasks = 0
    /// The task waiting in ``join(upTo:)``, and how many results it takes.
    private var joinWaiter: JoinWaiter?

    /// The task waiting in ``join(upTo:)`` and how many results it takes. A struct, not a tuple: code that
    /// touches an optional tuple goes through the tuple's value witnesses, looked up at run time.
    private struct JoinWaiter {
        let continuation: CheckedContinuation<[FarmResult]?, any Error>
        let limit: Int
    }
    private var slotWaiter: CheckedContinuation<Void, any Error>?
    private var doneWaiters: [CheckedContinuation<Void, Never>] = []
    /// Since when (monotonic seconds) finished jobs have waited for the joiner; nil when none waits.
    private var unhandedSince: Double?

    init(
        vm: VM,
        remote: Bool,
        lookaheadPerSlot: Int,
        unjoinedLimitPerSlot: Int?,
        inputOpen: Bool,
        timeout: Double,
        retries: Int,
        chunker: AutoChunker?,
        lookaheadInChunks: Bool,
        deferHandover: Bool,
        deferredHandoverLimit: Double,
        keysJobs: Bool
    ) {
        self.vm = vm
        self.timeout = timeout
        self.retries = retries
        self.deferHandover = deferHandover
        self.deferredHandoverLimit = deferredHandoverLimit
        self.keysJobs = keysJobs
        let workers = vm.slots() - 1
        self.isRemote = remote && vm.spawner.hasWorkers
        let slots = isRemote ? workers : max(1, ProcessInfo.processInfo.activeProcessorCount)
        self.slots = slots
        self.queue = FarmQueue(
            slots: slots,
            lookaheadPerSlot: lookaheadPerSlot,
            unjoinedLimitPerSlot: unjoinedLimitPerSlot,
            inputOpen: inputOpen,
            splitsUnits: !isRemote,
            chunker: chunker,
            lookaheadInChunks: lookaheadInChunks
        )
    }

    func start() {
        let thread = Thread { [self] in
            if isRemote {
                RemoteExecution(engine: self).serve()
            } else {
                LocalExecution(engine: self).serve()
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

    /// The number of changes callers made so far; the farm's thread looks at the queue when it moves.
    var attention: Int { attentionCounter.load(ordering: .acquiring) }

    private func callAttention() { attentionCounter.add(1, ordering: .releasing) }

    var hasFreeSlot: Bool { condition.withLock { queue.hasFreeSlot } }
    /// Whether a unit submitted now fits: free slots plus the lookahead.
    var hasRoom: Bool { condition.withLock { queue.hasRoom } }
    var outstandingJobs: Int { condition.withLock { queue.outstanding } }
    var unitsRunning: Int { condition.withLock { queue.unitsInFlight } }
    var isStopped: Bool { condition.withLock { queue.stopped } }

    /// Wakes the task waiting for room, if there is room now.
    private func resumeSlotWaiterIfRoomLocked() {
        if queue.hasRoom, let slotWaiter {
            self.slotWaiter = nil
            slotWaiter.resume()
        }
    }

    private func resumeJoinerIfDrainedLocked() {
        if queue.isDrained, let joinWaiter {
            self.joinWaiter = nil
            joinWaiter.continuation.resume(returning: nil)
        }
    }

    /// Whether finished jobs go to a waiting joiner now. A deferred hand-over waits until no more than
    /// half the lookahead is queued: the joiner, woken once for many results, then refills the queue in
    /// one go while the slots still have work, instead of being woken (a thread hand-off) for every job.
    private var handOverNowLocked: Bool {
        !deferHandover || queue.stopped || 2 * queue.queuedUnits <= queue.capacity - queue.slots
    }

    /// Resumes the waiting joiner with finished jobs, when there are some and it is time to hand them over
    /// (`force`: whatever the queue holds).
    private func resumeJoinerIfReadyLocked(force: Bool = false) {
        guard let joinWaiter, queue.hasFinished, force || handOverNowLocked else { return }
        self.joinWaiter = nil
        let ready = queue.popFinished(upTo: joinWaiter.limit)
        if !queue.hasFinished { unhandedSince = nil }
        resumeSlotWaiterIfRoomLocked()
        joinWaiter.continuation.resume(returning: ready)
    }

    /// How many units of `unitSize` jobs can be submitted now, one after another (see ``hasRoom``).
    func room(unitSize: Int) -> Int { condition.withLock { queue.room(unitSize: unitSize) } }

    /// Queues `jobs` as units of `unitSize` jobs (by default, one unit); returns the first job's index.
    func submit(_ jobs: [FarmJob], unitSize: Int = Int.max) -> Int? {
        condition.withLock {
            guard let first = queue.submit(jobs, unitSize: unitSize) else { return nil }
            callAttention()
            condition.signal()
            return first
        }
    }

    func finishInput() {
        condition.withLock {
            queue.finishInput()
            resumeJoinerIfDrainedLocked()
        }
    }

    /// Stops starting units and drops queued ones; with `closing`, the thread also ends once nothing runs.
    func stop(closing: Bool) {
        condition.withLock {
            queue.stop(closing: closing)
            slotWaiter?.resume()
            slotWaiter = nil
            if closing, let joinWaiter {
                self.joinWaiter = nil
                joinWaiter.continuation.resume(returning: nil)
            }
            resumeJoinerIfReadyLocked()
            resumeJoinerIfDrainedLocked()
            callAttention()
            condition.broadcast()
        }
    }

    func waitForFreeSlot() async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                condition.withLock {
                    if Task.isCancelled {
                        continuation.resume(throwing: CancellationError())
                    } else if queue.stopped || queue.hasRoom {
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

    /// Up to `limit` finished jobs (at least one, waiting for one when none is ready), oldest first; nil
    /// when nothing is outstanding and no more jobs can come.
    func join(upTo limit: Int) async throws -> [FarmResult]? {
        // Fast path: results are waiting, no suspension needed.
        if let ready = condition.withLock({ popFinishedLocked(limit) }) { return ready }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation {
                (continuation: CheckedContinuation<[FarmResult]?, any Error>) in
                condition.withLock {
                    if Task.isCancelled {
                        continuation.resume(throwing: CancellationError())
                    } else if let ready = popFinishedLocked(limit) {
                        continuation.resume(returning: ready)
                    } else if queue.isDrained {
                        continuation.resume(returning: nil)
                    } else if joinWaiter != nil {
                        continuation.resume(throwing: VMError(.invalidSpawn, "two tasks join the same farm at once"))
                    } else {
                        joinWaiter = JoinWaiter(continuation: continuation, limit: limit)
                    }
                }
            }
        } onCancel: {
            condition.withLock {
                joinWaiter?.continuation.resume(throwing: CancellationError())
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

    private func popFinishedLocked(_ limit: Int) -> [FarmResult]? {
        let results = queue.popFinished(upTo: limit)
        guard !results.isEmpty else { return nil }
        if !queue.hasFinished { unhandedSince = nil }
        resumeSlotWaiterIfRoomLocked()
        return results
    }

    /// Kills the running jobs instead of waiting for them (a cancelled dispatch); their results are failures.
    func killRunning() {
        condition.withLock {
            killRequested = true
            callAttention()
            condition.broadcast()
        }
    }

    /// Whether ``killRunning()`` was asked for since the last look; the executor then kills what runs.
    func takeKillRequest() -> Bool {
        condition.withLock {
            defer { killRequested = false }
            return killRequested
        }
    }

    // MARK: - Executors' side (the farm's thread, and local async jobs)

    /// Hands finished jobs to the joiner; `unitFinished` frees the unit's place in the farm. `measured`
    /// is how long the unit took from its start to its result, for the chunker.
    func complete(
        _ results: [FarmResult],
        unitFinished: Bool,
        measured: Double? = nil,
        localTaskEnded: Bool = false
    ) {
        condition.withLock {
            if let measured { queue.recordUnit(jobs: results.count, seconds: measured) }
            queue.complete(results, unitFinished: unitFinished)
            resumeJoinerIfReadyLocked()
            if queue.hasFinished, unhandedSince == nil { unhandedSince = monotonicSeconds() }
            resumeSlotWaiterIfRoomLocked()
            if localTaskEnded {
                localTasks -= 1
                condition.broadcast()
            }
        }
    }

    /// Hands finished jobs over to a waiting joiner that a deferred hand-over has kept them from for too long.
    func handOverIfStale() {
        condition.withLock {
            if let unhandedSince, monotonicSeconds() - unhandedSince > deferredHandoverLimit {
                resumeJoinerIfReadyLocked(force: true)
            }
        }
    }

    /// Up to `limit` units to start; waits while there is none and `busy` is false (nothing running).
    /// nil when the farm closes with nothing running.
    func takeUnits(limit: Int, busy: Bool) -> [Unit]? {
        condition.withLock {
            while !queue.hasQueuedUnits && !busy && !queue.closing { condition.wait() }
            if queue.closing && !busy { return nil }
            var units: [Unit] = []
            while units.count < limit, let unit = queue.nextUnit() { units.append(unit) }
            return units
        }
    }

    /// Whether the farm joins queued jobs into chunks by itself (``ChunkSize/auto``).
    var chunksAutomatically: Bool { condition.withLock { queue.chunker != nil } }

    /// The jobs of a joined chunk whose task ended without outcomes: back to the front, to start one by one.
    func putBackAlone(_ unit: Unit) {
        condition.withLock {
            queue.putBackAlone(unit)
            resumeJoinerIfDrainedLocked()
            callAttention()
        }
    }

    /// Units that found no free slot after all: back to the front of the queue.
    func putBack(_ units: [Unit]) {
        condition.withLock {
            queue.putBack(units)
            resumeJoinerIfDrainedLocked()
        }
    }

    /// The next unit to run in this process, once fewer than `slots` async jobs run; nil when the farm
    /// closes (after the running async jobs have ended).
    func takeLocalUnit() -> Unit? {
        condition.withLock {
            while (!queue.hasQueuedUnits || localTasks >= slots) && !queue.closing { condition.wait() }
            if queue.closing {
                while localTasks > 0 { condition.wait() }
                return nil
            }
            return queue.nextUnit()
        }
    }

    /// Counts an async job started in this process (``complete(_:unitFinished:localTaskEnded:)`` ends it).
    func localTaskStarted() { condition.withLock { localTasks += 1 } }

    /// A failed result for one job of a unit.
    func failure(
        _ code: JobError.Code,
        _ element: FarmQueue<FarmJob, FarmResult>.Element,
        _ error: any Error,
        task: TaskID? = nil
    ) -> FarmResult {
        FarmResult(
            index: element.index,
            job: element.item,
            outcome: .failure(code, error),
            host: task.flatMap { vm.hostID($0) },
            task: task
        )
    }

    /// The jobs of `unit` whose function this process does not know fail at once, as they would on any worker.
    /// `lastKnown` is the function of the last job found known, the caller's to keep: most jobs share one,
    /// which a comparison finds faster than a lookup.
    func rejectUnknown(_ unit: Unit, lastKnown: inout String?) -> (known: Unit, rejected: [FarmResult]) {
        let functions = vm.spawner.functions
        // Every job's function is known, almost always: no new arrays then.
        let allKnown = unit.allSatisfy { element in
            if element.item.function == lastKnown { return true }
            guard functions[element.item.function] != nil else { return false }
            lastKnown = element.item.function
            return true
        }
        if allKnown { return (unit, []) }
        var known: Unit = []
        var rejected: [FarmResult] = []
        for element in unit {
            if functions[element.item.function] == nil {
                let error = VMError(
                    .unknownFunction,
                    "function '\(element.item.function)' is not registered; pass it to the first VM the program creates (registered: \(functions.names.filter { $0 != ChunkRunner.name }.joined(separator: ", ")))"
                )
                rejected.append(failure(.unknownFunction, element, error))
            } else {
                known.append(element)
            }
        }
        return (known, rejected)
    }
}
