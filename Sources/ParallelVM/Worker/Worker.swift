import Foundation
import Glibc
import Logging
import MPI
import ParallelVMProcess
import ParallelVMStorage
import Synchronization

/// A worker rank: it serves spawn requests from the spawner until the spawner finalizes, then exits 0.
///
/// The worker loop runs on the thread that created the first VM and never returns to the program. Task
/// code reaches the worker through its ``TaskContext`` from that thread or, for an ``AsyncRemoteFunction``,
/// from Swift's cooperative pool, so everything task code can touch is in `state`.
final class Worker: @unchecked Sendable {
    // Invariant for @unchecked Sendable: the `let` properties never change; `state` guards what task code
    // can reach; `storage` and `settingsCache` are only touched by the worker loop's thread, between tasks
    // (preparing and cleaning a task's storage, decoding its request), never by task code.
    let transport: any FrameLink
    let host: HostID
    let functions: FunctionTable
    /// This process's doorbell: an idle worker on the spawner's host waits on it.
    let doorbell: Doorbell?
    /// Whether this is a task process, serving its worker rank over a channel instead of MPI.
    let inTaskProcess: Bool
    /// Runs once in this process before its first task (``VM/init(functions:debug:mirrorMap:startupDir:translateStartupDir:persistentStorage:missingMirrorSources:isolation:setup:logger:)``).
    let setup: (@Sendable () throws -> Void)?
    private var setupDone = false
    var rank: Int { transport.rank }

    private struct State {
        var serving = false
        var finalizeRequested = false
        /// Whether the spawner said to exit without `MPI_Finalize` (a rank of the run was lost).
        var withoutMPIFinalize = false
        /// The task running now, if any.
        var currentTask: Int?
        /// The function the task running now runs, and when it started (monotonic seconds).
        var currentFunction = ""
        var currentTaskStarted = 0.0
        /// The highest task number this slot has started.
        var lastServedTask = 0
        /// Every task number below this had been handed out when this worker last heard (see ``UserFrame``).
        var knownTasks = 1
        /// The debug level of the VM object whose task runs (or ran last).
        var debug = 0
        /// Whether this idle worker waits on its doorbell (the spawner rings it, on this host or over the
        /// network).
        var doorbellArmed = false
        /// The spawner's doorbell, rung before a send that may find it asleep.
        var spawnerDoorbell: BellTarget?
        /// Beats to a spawner on another host.
        var heartbeat: Heartbeat?
    }
    private let state = Mutex(State())

    var storage = WorkerStorageState()
    private var settingsCache: (bytes: [UInt8], settings: SpawnSettings)?

    init(
        transport: any FrameLink,
        host: HostID,
        functions: FunctionTable,
        doorbell: Doorbell?,
        inTaskProcess: Bool = false,
        setup: (@Sendable () throws -> Void)? = nil
    ) {
        self.transport = transport
        self.host = host
        self.functions = functions
        self.doorbell = doorbell
        self.inTaskProcess = inTaskProcess
        self.setup = setup
    }

    /// Whether the worker loop has started (a VM created inside a task finds it so).
    var isServing: Bool { state.withLock { $0.serving } }

    // MARK: - The loop

    /// Reports to the spawner, then serves spawn requests until the spawner finalizes; finalizes MPI and
    /// exits 0. A task process has its worker rank report for it and needs no MPI: it just exits 0.
    func serve() -> Never {
        state.withLock { $0.serving = true }
        if !inTaskProcess {
            do {
                try Hello.fromThisProcess(host: host, doorbell: doorbell).send(over: transport)
            } catch {
                fail("cannot report to the spawner: \(error)")
            }
            StartWatchdog.waiting(for: "the spawner did not answer this worker's report")
        }
        while !state.withLock({ $0.finalizeRequested }) {
            let envelope: Envelope?
            do {
                // A user message for a task this slot has not started yet may overtake its spawn request (MPI
                // orders messages per sender only), so it stays queued until that task runs; one for a task
                // number its sender did not know to exist is taken now, and dropped.
                let served = state.withLock { $0.lastServedTask }
                // An idle worker on the spawner's host blocks on its doorbell once the spin time is over. The
                // spawner rings it; the 10 ms limit only bounds the delay should a ring ever be missed.
                let idleWait: (() -> Bool)? =
                    if state.withLock({ $0.doorbellArmed }), let doorbell { { doorbell.wait(milliseconds: 10) } } else {
                        nil
                    }
                envelope = try transport.receive(
                    until: .never,
                    matching: {
                        $0.kind != .user || $0.destinationTask <= served
                            || UserFrame.knownTasks($0) <= $0.destinationTask
                    },
                    idleWait: idleWait
                )
            } catch {
                fail("\(error)")
            }
            guard let envelope else { continue }
            switch envelope.kind {
            case .spawn:
                runTask(envelope)
            case .finalize:
                state.withLock {
                    $0.finalizeRequested = true
                    $0.withoutMPIFinalize = Signal.finalizesWithoutMPI(envelope)
                }
            case .clearStorage:
                clearStorageOnWorker()
            case .welcome:
                StartWatchdog.finish()
                guard let welcome = try? Welcome(envelope) else { continue }
                if welcome.host != host, !inTaskProcess {
                    let heartbeat = Heartbeat(over: transport)
                    state.withLock { $0.heartbeat = heartbeat }
                }
                guard let doorbell else { continue }
                // On the spawner's host, or where the spawner rings over the network: wait on the doorbell.
                let bell = doorbell.spawnerBell(from: welcome, workerHost: host)
                guard welcome.host == host || bell != nil else { continue }
                state.withLock { state in
                    state.doorbellArmed = true
                    state.spawnerDoorbell = bell
                }
            case .heartbeat:
                continue
            case .mirrorOffer:
                MirrorReceiver.receive(envelope, over: transport)
            case .user:
                log(.debug, "dropped a message for task \(rank):\(envelope.destinationTask), which is not running")
            case .hello, .taskResult, .taskExit, .log, .clearStorageReport, .kill, .taskFolder, .interrupt,
                .interruptAck, .mirrorNeed, .mirrorData, .mirrorStored:
                log(.warning, "dropped an unexpected \(envelope.kind) message from rank \(envelope.sourceRank)")
            }
        }
        if inTaskProcess { exit(0) }
        state.withLock { $0.heartbeat }?.stop()
        Worker.finalizeMPIAndExit(rank: rank, skipping: state.withLock { $0.withoutMPIFinalize })
    }

    /// The longest a worker rank waits in MPI's finalize.
    static let finalizeLimit = Spawner.finalizeLimitAfterLoss + 10

    /// Finalizes MPI on a worker rank and exits, or only exits when `skipping` (the spawner said so: a rank
    /// of the run was lost). After a loss, Open MPI's finalize may wait for the lost rank for ever: the
    /// wait is bounded, later than the spawner's, for a loss the spawner did not know of yet.
    static func finalizeMPIAndExit(rank: Int, skipping: Bool) -> Never {
        if skipping {
            fflush(nil)
            exit(0)
        }
        let bound = ExitTimer(limit: finalizeLimit, name: "ParallelVM.worker-finalize-bound") {
            "ParallelVM worker rank \(rank): MPI_Finalize did not return within \(Int(finalizeLimit)) s (a rank of the run was lost?); ending the process"
        }
        do {
            try MPIEnvironment.finalize()
        } catch {
            FileHandle.standardError.write(Data("ParallelVM worker rank \(rank): \(error)\n".utf8))
            exit(1)
        }
        bound.cancel()
        exit(0)
    }

    /// Watches this thread's tasks for the endless spin of a task that touched the global whose initializer
    /// this worker runs in (see ``GlobalInitializer``), when it does run in one.
    func watchForTasksReenteringTheGlobalInitializer() {
        guard GlobalInitializer.callerIsInsideOne() else { return }
        SpinWatch.startOnThisThread(
            current: { [self] in
                state.withLock { state in state.currentTask.map { ($0, state.currentTaskStarted) } }
            },
            stuck: { [self] task in abandonSpinningTask(task) }
        )
    }

    /// Fails a task that spins re-entering the global initializer this worker runs in, and ends the
    /// process: the thread that runs tasks can never leave that spin. A task process's worker rank starts
    /// another task process; a worker rank that runs tasks in-process ends, and the run with it.
    private func abandonSpinningTask(_ number: Int) -> Never {
        let function = state.withLock { $0.currentFunction }
        let taskID = TaskID(slot: rank, number: number)
        let message =
            "task \(taskID) ('\(function)') on \(host) touched a global whose initializer is still running: "
            + "most likely the program's global VM (`let vm = try VM(...)` outside main.swift, or a static let). "
            + "On a worker, VM(...) serves tasks from inside that initializer, so a task that uses the global "
            + "waits for itself forever. Inside a task, use the TaskContext the function receives; create the VM "
            + "in main.swift's top-level code or in a function"
        log(.error, message)
        let failure = TaskFailure(
            typeName: "ParallelVM.VMError",
            message: message,
            typedError: VMError(.notSpawner, message)
        )
        try? TaskEnd.sendResult(
            task: number,
            function: function,
            .failure(failure),
            processEnds: inTaskProcess,
            over: transport
        )
        fflush(nil)
        _exit(70)
    }

    /// Ends the job: a worker that cannot talk to the spawner any more cannot do anything useful. A task
    /// process that lost its worker rank just ends.
    private func fail(_ text: String) -> Never {
        let role = inTaskProcess ? "task process of worker rank" : "worker rank"
        FileHandle.standardError.write(Data("ParallelVM \(role) \(rank) on \(host): \(text)\n".utf8))
        if inTaskProcess { exit(70) }
        MPIEnvironment.abort(code: 1)
    }

    /// Rings the spawner's doorbell before a message to it, when it may have gone to sleep: it sleeps only
    /// after its spin time without messages, and it was awake when it last sent to us.
    func wakeSpawnerIfAsleep() {
        guard let bell = state.withLock({ $0.spawnerDoorbell }), let doorbell else { return }
        if transport.quietSinceSpawner > transport.waitPolicy.spin / 2 { doorbell.ring(bell) }
    }

    // MARK: - Running a task

    /// Runs one spawned function and reports its result and exit to the spawner.
    private func runTask(_ envelope: Envelope) {
        let request: SpawnRequest
        let settings: SpawnSettings
        do {
            request = try SpawnRequest(envelope)
            // Every spawn of one VM object carries the same settings: decode them once.
            if let cached = settingsCache, cached.bytes == request.settings {
                settings = cached.settings
            } else {
                settings = try SpawnSettings(decoding: request.settings)
                settingsCache = (request.settings, settings)
            }
        } catch {
            log(.error, "task \(rank):\(envelope.destinationTask): malformed spawn request: \(error)")
            sendExit(task: envelope.destinationTask)
            return
        }
        let number = request.task
        let taskID = TaskID(slot: rank, number: number)
        state.withLock { state in
            state.currentTask = number
            state.currentFunction = request.function
            state.currentTaskStarted = monotonicSeconds()
            state.lastServedTask = number
            state.knownTasks = max(state.knownTasks, request.knownTasks)
            state.debug = settings.debug
        }
        let channelLink = inTaskProcess ? transport as? ChannelLink : nil
        let direct =
            channelLink?.directTaskBegins(
                number,
                function: request.function,
                sendBack: request.sendBack,
                timeout: request.timeout
            ) ?? false
        // Messages queued for earlier task numbers were for tasks that ran elsewhere or have ended.
        transport.removePending { $0.kind == .user && $0.destinationTask < number }
        defer { state.withLock { $0.currentTask = nil } }
        // Each task starts in the worker's own folder, whatever folder the previous task moved to.
        storage.returnToStart()
        let context = TaskContext(
            host: self,
            taskID: taskID,
            hostID: host,
            debug: settings.debug,
            vmIndex: settings.vmIndex
        )
        log(.debug, "task \(taskID) runs '\(request.function)'")
        let started = monotonicSeconds()
        let outcome: TaskEnd.Outcome
        do {
            guard let function = functions[request.function] else {
                throw TaskFailure(
                    typeName: "ParallelVM.VMError",
                    message:
                        "function '\(request.function)' is not registered on rank \(rank) (host \(host)); registered: \(functions.names.joined(separator: ", "))",
                    typedError: VMError(.unknownFunction, "function '\(request.function)' is not registered")
                )
            }
            if let setup, !setupDone {
                do {
                    try setup()
                    setupDone = true
                } catch {
                    var failure = TaskFailure(error)
                    failure.message = "the VM's setup function failed before task \(taskID) on \(host): \(error)"
                    throw failure
                }
            }
            let prepared = try settings.storage.map { (storageRequest) throws -> PreparedStorage in
                do {
                    return try prepareStorage(storageRequest, task: taskID)
                } catch {
                    var failure = TaskFailure(error)
                    failure.message = "preparing local storage for '\(request.function)' failed: \(error)"
                    throw failure
                }
            }
            defer { if let prepared { cleanupStorage(prepared, task: taskID) } }
            let (type, bytes) = try function.call(request.arguments, context)
            outcome = .value(type: type, bytes: bytes)
        } catch {
            outcome = .failure(TaskFailure(error))
        }
        log(
            .debug,
            "task \(taskID) finished '\(request.function)' in \(String(format: "%.6f", monotonicSeconds() - started)) s"
        )
        // What the task printed reaches its worker rank (and the task's log) before its end does.
        if inTaskProcess { fflush(nil) }
        // A task process tells its worker rank whether the task left processes behind, for it to end them.
        var leftProcesses = inTaskProcess && Worker.hasChildren()
        if direct {
            // Its worker rank does not see this task's end: end what it left here (this process adopts
            // what the task detached), and end nothing once the worker rank has claimed the task.
            if leftProcesses { ChildProcess.reapOrphans() }
            leftProcesses = false
            if !channelLink!.directTaskEnds(number) {
                while true { pause() }
            }
        }
        guard request.sendBack else {
            sendExit(task: number, leftProcesses: leftProcesses)
            return
        }
        do {
            wakeSpawnerIfAsleep()
            try TaskEnd.sendResult(
                task: number,
                function: request.function,
                outcome,
                leftProcesses: leftProcesses,
                over: transport
            )
        } catch {
            log(.error, "task \(taskID) could not send its result: \(error)")
            sendExit(task: number, leftProcesses: leftProcesses)
        }
    }

    /// Whether this process has a child, running or not yet reaped (one system call).
    static func hasChildren() -> Bool {
        var info = siginfo_t()
        return waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0
    }

    private func sendExit(task number: Int, leftProcesses: Bool = false) {
        do {
            wakeSpawnerIfAsleep()
            try TaskEnd.sendExit(task: number, leftProcesses: leftProcesses, over: transport)
        } catch {
            fail("cannot report the exit of task \(number): \(error)")
        }
    }

    // MARK: - Logging

    /// Sends a worker diagnostic to the spawner's log when the current debug level lets it through.
    /// `text` is only built when it is sent: every task logs at debug level, and formatting those lines
    /// cost more than the rest of a trivial task.
    func log(_ level: Logger.Level, _ text: @autoclosure () -> String) {
        let (task, debug) = state.withLock { ($0.currentTask ?? 0, $0.debug) }
        guard level >= Logger.Level(debug: debug) else { return }
        forward(LogRecord(level: level, text: text()), task: task)
    }

    private func forward(_ record: LogRecord, task: Int) {
        wakeSpawnerIfAsleep()
        try? record.send(from: task, over: transport)
    }
}

// MARK: - What tasks reach

extension Worker: TaskHost {
    func log(_ record: LogRecord, from task: TaskID) { forward(record, task: task.number) }

    func send<T: Encodable>(_ value: T, from task: TaskID, to destination: TaskID) throws(VMError) {
        let knownTasks = state.withLock { $0.knownTasks }
        if destination.slot == 0 {
            guard destination.number == 0 else {
                throw VMError(
                    .invalidDestination,
                    "task \(destination) does not exist: slot 0 only runs the spawner, 0:0"
                )
            }
            wakeSpawnerIfAsleep()
        } else if destination.number >= knownTasks {
            throw VMError(
                .invalidDestination,
                "task \(destination) does not exist: no task number \(destination.number) had been spawned when task \(task) last heard from the spawner"
            )
        }
        try UserFrame.send(value, from: task.number, to: destination, knownTasks: knownTasks, over: transport)
    }

    func receive(for task: TaskID, until deadline: Deadline) throws(VMError) -> (source: TaskID, message: Message)? {
        let number = task.number
        while true {
            let matched = try transport.receive(until: deadline) { envelope in
                (envelope.kind == .user && envelope.destinationTask <= number) || envelope.kind == .finalize
            }
            guard let envelope = matched else { return nil }
            switch envelope.kind {
            case .finalize:
                state.withLock {
                    $0.finalizeRequested = true
                    $0.withoutMPIFinalize = Signal.finalizesWithoutMPI(envelope)
                }
                throw VMError(
                    .finalized,
                    "the spawner finalized the VM while task \(task) was waiting for a message"
                )
            case .user where envelope.destinationTask == number:
                let mark = UserFrame.knownTasks(envelope)
                state.withLock { $0.knownTasks = max($0.knownTasks, mark) }
                return (envelope.sourceID, .user(try UserFrame.message(from: envelope)))
            default:
                log(.debug, "dropped a message for task \(rank):\(envelope.destinationTask), which is not running")
            }
        }
    }

    func hasIncoming(for task: TaskID) throws(VMError) -> Bool {
        let number = task.number
        return try transport.hasIncoming { $0.kind == .user && $0.destinationTask == number }
    }
}

extension Logger.Level {
    /// The least severe level a given VM debug setting lets through.
    init(debug: Int) {
        switch debug {
        case ...0: self = .warning
        case 1: self = .info
        case 2: self = .debug
        default: self = .trace
        }
    }
}
