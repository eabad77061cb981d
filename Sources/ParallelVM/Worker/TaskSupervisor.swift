import Foundation
import Glibc
import Logging
import MPI
import ParallelVMExperiment
import ParallelVMProcess
import ParallelVMStorage
import Synchronization

/// A worker rank under process isolation: it runs no user code itself. Its task process, a child started
/// from the same program, runs the tasks (a ``Worker`` over a ``ChannelLink``), and this rank relays frames
/// between MPI and that child, unchanged.
///
/// What the task process cannot do for itself it does here: when the task process dies, runs over its
/// timeout or is killed, the rank reports the task as failed with a ``TaskTermination`` (then its exit),
/// removes the task's folder, and starts a fresh task process; the slot serves again. After every task it
/// ends the processes the task left behind.
///
/// In a VM that runs as one process, each local slot is a supervisor on a thread of the spawner's process
/// (``serveLocally()``), over a ``LocalLink``. It then leaves the process to the program: it does not
/// exit, finalize MPI or adopt orphans, and it ends only the processes of its own task process's group.
final class TaskSupervisor: @unchecked Sendable {
    // Invariant for @unchecked Sendable: after init, every `var` is only touched by the thread that runs
    // `serve()` (the thread that created the first VM) or `serveLocally()`; nothing else holds the supervisor.
    private let transport: any FrameLink
    /// The link of a local slot; nil on a worker rank.
    private let localLink: LocalLink?
    private let host: HostID
    private let doorbell: Doorbell?
    private let memoryLimit: Int?

    /// The environment variable that makes a copy of the program a task process, naming its channel.
    static let channelVariable = "PARALLELVM_TASK_CHANNEL"
    static let rankVariable = "PARALLELVM_TASK_RANK"
    static let sizeVariable = "PARALLELVM_TASK_SIZE"
    static let hostVariable = "PARALLELVM_TASK_HOST"
    /// The path of the task process's ``DirectSegment`` to the spawner, when it has one.
    static let directVariable = "PARALLELVM_TASK_DIRECT"

    /// The shared memory through which the spawner on this host talks to the task process directly.
    private var direct: DirectSegment?
    /// Why this rank is ending the task that came directly, once it claimed it.
    private var directEnding: TaskTermination.Reason?
    /// The folder of the last task that came directly, from its task process's note.
    private var directFolder: (task: Int, path: String, persistent: Bool)?

    /// The task the task process runs now.
    private struct Running {
        var number: Int
        var function: String
        var sendBack: Bool
        var deadline: Double?
        var timeout: Double
        var folder: (path: String, persistent: Bool)?
        /// Why the rank is ending the task, when it is.
        var ending: TaskTermination.Reason?
        /// `tasks/<task>.log` of the task's experiment, when it has one.
        var log: TaskLog?
    }

    private var child: ChildProcess?
    /// Sends to the task process on a thread of its own, so that this rank never blocks on a task process
    /// that is itself blocked sending (two large messages crossing).
    private var writer: ChannelWriter?
    private var running: Running?
    private var finalizeRequested = false
    /// Whether the spawner said to exit without `MPI_Finalize` (a rank of the run was lost).
    private var withoutMPIFinalize = false
    private var doorbellArmed = false
    private var spawnerDoorbell: BellTarget?
    /// The spawner's process, when it runs on this host (from its welcome); nil when it is remote.
    private var localSpawner: Int32?
    private var welcomed = false
    /// Beats to a spawner on another host.
    private var heartbeat: Heartbeat?
    private var lastSpawnerCheck = 0.0
    /// Task processes that would not start in a row; past a few, spawn requests fail at once.
    private var failedStarts = 0
    /// A signal this rank received, for the loop to act on (set by the interrupt thread).
    private let signalled = Mutex<Interrupt?>(nil)
    /// The experiment named by the last spawn settings seen, decoded once per settings.
    private var experimentCache: (settings: [UInt8], experiment: ExperimentLocation?)?
    /// Whether a local slot has stopped for an interrupt (a rank exits instead).
    private var stopped = false

    init(transport: any FrameLink, host: HostID, doorbell: Doorbell?, memoryLimit: Int?) {
        self.transport = transport
        self.localLink = transport as? LocalLink
        self.host = host
        self.doorbell = doorbell
        self.memoryLimit = memoryLimit
    }

    private var rank: Int { transport.rank }

    // MARK: - The loop

    func serve() -> Never {
        // Grandchildren that a task detaches (setsid, double fork) are re-parented here, so they can be ended.
        try? ChildProcess.enableSubreaper()
        if let doorbell {
            direct = try? DirectSegment.create(path: DirectSegment.path(forWorker: getpid(), token: doorbell.token))
        }
        run()
        direct?.unlinkName()
        heartbeat?.stop()
        Worker.finalizeMPIAndExit(rank: rank, skipping: withoutMPIFinalize)
    }

    /// Serves as a local slot on the caller's thread; returns once the spawner has finalized (the task
    /// process is gone then) or the run was interrupted (its task process ended and its folder removed).
    func serveLocally() {
        run()
    }

    /// Relays until the spawner finalizes and the running task has ended, then lets the task process go.
    private func run() {
        do {
            try Hello.fromThisProcess(host: host, doorbell: doorbell).send(over: transport)
        } catch {
            fail("cannot report to the spawner: \(error)")
        }
        StartWatchdog.waiting(for: "the spawner did not answer this worker's report")
        startChild()
        var backoff = Backoff(transport.waitPolicy, idleWait: idleWait)
        // When the running task started to have nothing to relay (monotonic seconds).
        var quietSince: Double? = nil
        while true {
            var progressed = false
            progressed = relayFromChild() || progressed
            do {
                if let envelope = try transport.receive(until: .now, matching: { _ in true }, idleWait: nil) {
                    relayToChild(envelope)
                    progressed = true
                }
            } catch {
                fail("\(error)")
            }
            if let deadline = running?.deadline, monotonicSeconds() >= deadline, running?.ending == nil {
                end(running!, because: .timedOut(seconds: running!.timeout))
                progressed = true
            }
            let directTask = running == nil ? direct?.runningTaskTimes() : nil
            if let directTask, !directTask.claimed, let deadline = directTask.deadline, monotonicSeconds() >= deadline,
                let task = direct?.runningTask(), task.number == directTask.number
            {
                endDirect(task.number, because: .timedOut(seconds: task.timeout))
                progressed = true
            }
            if finalizeRequested, running == nil, directTask == nil {
                releaseChild()
                return
            }
            if let interrupt = signalled.withLock({ $0 }) { stop(interrupt, acknowledge: false) }
            checkSpawnerAlive()
            if stopped { return }
            if progressed {
                backoff = Backoff(transport.waitPolicy, idleWait: idleWait)
                quietSince = nil
            } else if running != nil, let idleWait {
                // While a task runs, its process needs the core more than this rank does: block until it
                // writes (or the doorbell rings, or 10 ms pass) instead of spinning beside it. A short
                // task's result comes within microseconds, sooner than a wake-up from a block takes: look
                // without blocking, yielding the core, for the first `supervisorSpin` seconds.
                let now = monotonicSeconds()
                if quietSince == nil { quietSince = now }
                if now - quietSince! < TaskSupervisor.supervisorSpin, !transport.waitPolicy.spin.isZero {
                    sched_yield()
                } else {
                    _ = idleWait()
                }
            } else {
                quietSince = nil
                backoff.pause()
            }
        }
    }

    /// How long the rank looks for a running task's frames without blocking, in seconds (from the
    /// environment `PARALLELVM_SUPERVISOR_SPIN_US` when set, for measuring).
    static let supervisorSpin: Double = {
        let text = ProcessInfo.processInfo.environment["PARALLELVM_SUPERVISOR_SPIN_US"] ?? ""
        return (Double(text) ?? 50) / 1e6
    }()

    /// How this rank waits once its spin time is over: on its doorbell (if the spawner rings it) and its
    /// task process's channel at once. The 10 ms bound also bounds how late a message for a running task,
    /// a kill or a timeout is seen.
    private var idleWait: (() -> Bool)? {
        // Asked for at every turn of the loop while a task runs: made once per task process and doorbell
        // state. The cached closure holds its channel, so no other channel can take that channel's identity.
        let key = IdleWaitKey(channel: child.map { ObjectIdentifier($0.channel) }, doorbellArmed: doorbellArmed)
        if let cached = idleWaitCache, cached.key == key { return cached.wait }
        let wait = makeIdleWait()
        idleWaitCache = (key, wait)
        return wait
    }

    private struct IdleWaitKey: Equatable {
        var channel: ObjectIdentifier?
        var doorbellArmed: Bool
    }

    private var idleWaitCache: (key: IdleWaitKey, wait: (() -> Bool)?)?

    private func makeIdleWait() -> (() -> Bool)? {
        guard let channel = child?.channel else { return nil }
        let fd = channel.fileDescriptor
        // A task process writes small frames into shared memory: it rings the socket only for a rank that
        // said it would block.
        let blocking: (() -> Bool) -> Bool = { wait in
            guard channel.prepareToBlock() else { return true }
            defer { channel.finishBlocking() }
            return wait()
        }
        if let localLink { return { blocking { localLink.wait(milliseconds: 10, orReadable: fd) } } }
        if doorbellArmed, let doorbell { return { blocking { doorbell.wait(milliseconds: 10, orReadable: fd) } } }
        return {
            blocking {
                var request = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                return poll(&request, 1, 10) > 0
            }
        }
    }

    private func fail(_ text: String) -> Never {
        FileHandle.standardError.write(Data("ParallelVM worker rank \(rank) on \(host): \(text)\n".utf8))
        child?.killGroup()
        guard localLink == nil else {
            // Only the spawner's link can fail here, and the program cannot go on without it.
            fflush(nil)
            _exit(1)
        }
        MPIEnvironment.abort(code: 1)
    }

    /// Lets the task process go: asks it to finish, and ends it if it does not within 5 s.
    private func releaseChild() {
        if let child {
            writer?.send(
                Relay.encode(
                    peer: 0,
                    frame: WireWriter(kind: .finalize, sourceTask: 0, destinationTask: 0).bytes,
                    payload: nil
                )
            )
            if (try? child.wait(timeout: .seconds(5))) ?? nil == nil {
                _ = try? child.terminate(grace: .milliseconds(500))
            }
        }
        writer?.stop()
        writer = nil
        child = nil
        reapOrphans()
    }

    /// Ends the orphans re-parented to this rank. A local slot has none (the spawner adopts nothing), and
    /// the spawner's other children are the program's own.
    private func reapOrphans() {
        guard localLink == nil else { return }
        _ = ChildProcess.reapOrphans()
    }

    // MARK: - A lost spawner

    /// Seconds without a frame from a spawner on another host (it sends a heartbeat every few seconds)
    /// after which it counts as lost.
    static let remoteSpawnerSilence = 30.0

    /// A run whose spawner is gone cannot go on: end the task process and its folder, and exit. With
    /// Open MPI's recovery on, nothing else would end this rank.
    private func checkSpawnerAlive() {
        let now = monotonicSeconds()
        guard welcomed, now - lastSpawnerCheck >= 1 else { return }
        lastSpawnerCheck = now
        let gone: Bool
        if let localSpawner {
            gone = Glibc.kill(localSpawner, 0) == -1 && errno == ESRCH
        } else {
            gone = transport.quietSinceSpawner > TaskSupervisor.remoteSpawnerSilence
        }
        if gone {
            FileHandle.standardError.write(
                Data("ParallelVM worker rank \(rank) on \(host): the spawner is gone; ending\n".utf8)
            )
            stop(Interrupt(signal: SIGTERM), acknowledge: false, status: 1)
        }
    }

    // MARK: - Interrupts

    /// Called on the interrupt thread: the loop ends the run at its next turn (within its 10 ms bound).
    func interruptedBySignal(_ interrupt: Interrupt) -> Never {
        signalled.withLock { $0 = interrupt }
        // The loop exits the process; this thread only waits for it.
        while true { sleep(60) }
    }

    /// Ends the task process and whatever it started, removes the running task's folder, and exits with
    /// 128 plus the signal number, telling the spawner first when it asked. A local slot stops instead of
    /// exiting: the spawner exits once every slot has answered.
    private func stop(_ interrupt: Interrupt, acknowledge: Bool, status: Int32? = nil) {
        writer?.stop()
        if let child {
            child.killGroup()
            // The folder goes first, while mpirun's grace lasts; the task process is reaped after.
            _ = try? child.wait(timeout: .milliseconds(300))
        }
        if let task = running {
            closeLog(of: task, ending: "the run was interrupted by \(interrupt); the task was ended")
        }
        if let folder = running?.folder ?? directRunning()?.folder, !folder.persistent {
            _ = PreparedStorage.removeAbandoned(folder: folder.path)
        }
        reapOrphans()
        if acknowledge { try? InterruptNotice.acknowledge(over: transport) }
        guard localLink == nil else {
            child = nil
            writer = nil
            running = nil
            stopped = true
            return
        }
        direct?.unlinkName()
        fflush(nil)
        _exit(status ?? interrupt.exitStatus)
    }

    // MARK: - The task process

    private func startChild() {
        var environment = ChildProcess.currentEnvironment()
        // The task process is no MPI process: user code there must not take it for one.
        for key in environment.keys where key.hasPrefix("OMPI_") || key.hasPrefix("PMIX_") || key.hasPrefix("PMI_") {
            environment[key] = nil
        }
        environment[TaskSupervisor.rankVariable] = String(rank)
        environment[TaskSupervisor.sizeVariable] = String(transport.size)
        environment[TaskSupervisor.hostVariable] = host.name
        // Swift's backtracer takes seconds per crash; the crash report names the signal and the fatal error.
        if environment["SWIFT_BACKTRACE"] == nil { environment["SWIFT_BACKTRACE"] = "enable=no" }
        do {
            let started = try ChildProcess.spawn(
                executable: ChildProcess.currentExecutable,
                arguments: CommandLine.arguments,
                environment: environment,
                channelVariable: TaskSupervisor.channelVariable,
                // Through this rank, so that a task of an experiment has its output in its log.
                standardOutput: .forward,
                memoryLimit: memoryLimit,
                inheriting: direct?.descriptor.map { ($0, TaskSupervisor.directVariable) }
            )
            child = started
            writer = ChannelWriter(channel: started.channel)
            failedStarts = 0
        } catch {
            child = nil
            failedStarts += 1
            log(.error, "could not start a task process: \(error)")
        }
    }

    /// Forwards what the task process sent; handles its death. Returns whether anything happened.
    private func relayFromChild() -> Bool {
        guard let child else { return false }
        var progressed = false
        while true {
            let bytes: [UInt8]?
            do {
                bytes = try child.channel.receive(timeout: .zero)
            } catch {
                childEnded()
                return true
            }
            guard let bytes else { return progressed }
            progressed = true
            do {
                let (peer, frame, payload) = try Relay.decode(bytes)
                try forward(frame, payload: payload, to: peer)
            } catch {
                log(.error, "dropped a frame from the task process: \(error)")
            }
            // A task process that said it ends was replaced while forwarding; its channel is done.
            if self.child !== child { return true }
        }
    }

    private func forward(_ frame: [UInt8], payload: [UInt8]?, to peer: Int) throws(VMError) {
        let envelope = try Envelope(sourceRank: rank, frame: frame, payload: nil)
        switch envelope.kind {
        case .taskFolder:
            let note = try TaskFolderNote(envelope)
            if running?.number == note.task {
                running?.folder = (note.path, note.persistent)
            } else {
                directFolder = (note.task, note.path, note.persistent)
            }
            return
        default:
            break
        }
        let ends =
            (envelope.kind == .taskResult || envelope.kind == .taskExit) && envelope.sourceTask == running?.number
        if let log = running?.log, envelope.sourceTask == running?.number {
            if envelope.kind == .log, let record = try? LogRecord(envelope) { try? log.log(record.logLine) }
            // The log is complete before the spawner learns that the task ended.
            if ends, let task = running { closeLog(of: task, ending: "the task ended") }
        }
        if peer == 0 { wakeSpawnerIfAsleep() }
        try transport.send(frame, payload: payload, to: peer)
        if ends { taskEnded(leftProcesses: envelope.flags & Wire.flagLeftProcesses != 0) }
        if ends, envelope.flags & Wire.flagProcessEnds != 0 { replaceEndingChild() }
    }

    /// The task process said it exits after the result it sent: take that exit, and start another before
    /// the next task comes (sent to the ending process, it would be reported as crashed).
    private func replaceEndingChild() {
        guard let child else { return }
        if (try? child.wait(timeout: .seconds(2))) ?? nil == nil { _ = try? child.terminate(grace: .milliseconds(200)) }
        self.child = nil
        writer?.stop()
        writer = nil
        reapOrphans()
        startChild()
    }

    /// The task reported its end: end whatever it left running, and serve the next one.
    ///
    /// The task process says whether it has children left; processes they detached were re-parented to
    /// this rank, whose own children are one small file to read. The sweep over every process of the host
    /// only runs when there is something to end.
    private func taskEnded(leftProcesses: Bool) {
        running = nil
        guard let child else { return }
        // A local slot's process has other children: the other slots' task processes, the program's own.
        let strays = localLink == nil && ownChildren.read().contains { $0 != child.pid }
        guard strays || leftProcesses else { return }
        _ = ChildProcess.killDescendants(of: child.pid)
        reapOrphans()
    }

    /// This rank's children, read after every task.
    private let ownChildren = ChildList()

    /// The children of this process's main thread, from `/proc/PID/task/PID/children`: orphans are
    /// re-parented to a subreaper's main thread, so for this rank that thread is the one to read. The
    /// file stays open and is read again from its start, one system call per task instead of a path to
    /// look up, an open, a read and a close.
    final class ChildList {
        private var fd: Int32 = -1
        private var buffer = [UInt8](repeating: 0, count: 4096)

        deinit { if fd >= 0 { close(fd) } }

        func read() -> [Int32] {
            if fd < 0 {
                let pid = getpid()
                fd = open("/proc/\(pid)/task/\(pid)/children", O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { return [] }
            }
            let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { return [] }
            var children: [Int32] = []
            var value: Int32 = 0
            var inNumber = false
            for byte in buffer[..<count] {
                if byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") {
                    value = value &* 10 &+ Int32(byte - UInt8(ascii: "0"))
                    inNumber = true
                } else if inNumber {
                    children.append(value)
                    value = 0
                    inNumber = false
                }
            }
            if inNumber { children.append(value) }
            return children
        }
    }

    /// The task process died (or was killed): report the task it ran, clean up after it, start another.
    private func childEnded() {
        guard let child else { return }
        self.child = nil
        writer?.stop()
        writer = nil
        // What the task process left in its group goes with it; a rank also adopts what left the group.
        if localLink != nil { child.killGroup() }
        let end: ProcessEnd
        do {
            end = try child.wait()
        } catch {
            end = ProcessEnd(cause: .exited(status: -1), standardErrorTail: child.standardErrorTail)
        }
        reapOrphans()
        if let task = running {
            running = nil
            report(task, end: end)
        } else if let task = directRunning() {
            direct?.clearTask()
            directEnding = nil
            directFolder = nil
            report(task, end: end)
        } else if !finalizeRequested {
            log(.warning, "the idle task process ended (\(end)); starting another")
        }
        if !finalizeRequested { startChild() }
    }

    /// The task that came directly and has not ended, as this rank reports it.
    private func directRunning() -> Running? {
        guard let task = direct?.runningTask() else { return nil }
        let folder = directFolder.flatMap { $0.task == task.number ? ($0.path, $0.persistent) : nil }
        return Running(
            number: task.number,
            function: task.function,
            sendBack: task.sendBack,
            deadline: task.deadline,
            timeout: task.timeout,
            folder: folder,
            ending: task.claimed ? directEnding : nil
        )
    }

    /// Ends the task that came directly on purpose, unless it ended meanwhile: its process is killed, and
    /// its end is reported with `reason`.
    private func endDirect(_ number: Int, because reason: TaskTermination.Reason) {
        guard let direct, direct.claimTask(number) else { return }
        directEnding = reason
        guard let child else { return }
        _ = try? child.terminate(grace: .milliseconds(200))
        childEnded()
    }

    /// Ends the running task on purpose: its process is killed, and its end is reported with `reason`.
    private func end(_ task: Running, because reason: TaskTermination.Reason) {
        running?.ending = reason
        guard let child else { return }
        _ = try? child.terminate(grace: .milliseconds(200))
        childEnded()
    }

    private func report(_ task: Running, end: ProcessEnd) {
        let reason: TaskTermination.Reason
        let detail: String
        if let ending = task.ending {
            reason = ending
            switch ending {
            case .timedOut(let seconds): detail = "timed out after \(formatSeconds(seconds)) s and was killed"
            case .killed: detail = "was killed on request"
            default: detail = end.descriptionBeforeResult
            }
        } else if end.ranOutOfMemory {
            reason = .outOfMemory
            detail = end.descriptionBeforeResult
        } else {
            switch end.cause {
            case .exited(let status): reason = .exited(status: status)
            case .signaled(let signal): reason = .signal(name: signal.name, number: signal.rawValue)
            }
            detail = end.descriptionBeforeResult
        }
        let termination = TaskTermination(
            reason: reason,
            task: TaskID(slot: rank, number: task.number),
            function: task.function,
            host: host,
            detail: detail,
            standardError: end.standardErrorWithReasons
        )
        // Its standard error is in the log already.
        closeLog(of: task, ending: "task \(termination.task) running '\(task.function)' on \(host) \(detail)")
        if let folder = task.folder, !folder.persistent {
            let report = PreparedStorage.removeAbandoned(folder: folder.path)
            for (path, reason) in report.failures.sorted(by: { $0.key < $1.key }) {
                log(.warning, "could not remove the folder of task \(termination.task), \(path): \(reason)")
            }
        }
        let failure = TaskFailure(
            typeName: _typeName(TaskTermination.self, qualified: true),
            message: termination.description,
            typedError: termination
        )
        do {
            wakeSpawnerIfAsleep()
            if task.sendBack {
                try TaskEnd.sendResult(task: task.number, function: task.function, .failure(failure), over: transport)
            } else {
                try TaskEnd.sendExit(task: task.number, over: transport)
            }
        } catch {
            fail("cannot report the end of task \(task.number): \(error)")
        }
    }

    // MARK: - From MPI

    private func relayToChild(_ envelope: Envelope) {
        switch envelope.kind {
        case .spawn:
            guard let request = try? SpawnRequest(envelope) else {
                send(toChild: envelope)
                return
            }
            running = Running(
                number: request.task,
                function: request.function,
                sendBack: request.sendBack,
                deadline: request.timeout > 0 ? monotonicSeconds() + request.timeout : nil,
                timeout: request.timeout
            )
            if child == nil { startChild() }
            running?.log = openLog(for: request)
            guard child != nil else {
                let task = running!
                report(task, end: ProcessEnd(cause: .exited(status: 127)))
                running = nil
                return
            }
            send(toChild: envelope)
        case .kill:
            if let task = running, task.number == envelope.destinationTask, task.ending == nil {
                end(task, because: .killed)
            } else if running == nil, let task = direct?.runningTaskTimes(), task.number == envelope.destinationTask,
                !task.claimed
            {
                endDirect(task.number, because: .killed)
            }
        case .finalize:
            finalizeRequested = true
            withoutMPIFinalize = Signal.finalizesWithoutMPI(envelope)
        case .interrupt:
            stop(Interrupt(signal: InterruptNotice.signal(of: envelope)), acknowledge: true)
        case .welcome:
            welcomed = true
            StartWatchdog.finish()
            guard let welcome = try? Welcome(envelope) else { return }
            if welcome.host != host, heartbeat == nil { heartbeat = Heartbeat(over: transport) }
            // Only a spawner on this host opens the direct route (and removes its name then).
            if welcome.host != host { direct?.unlinkName() }
            if welcome.host == host { localSpawner = welcome.pid }
            guard let doorbell else { return }
            // On the spawner's host, or where the spawner rings over the network: wait on the doorbell.
            let bell = doorbell.spawnerBell(from: welcome, workerHost: host)
            guard welcome.host == host || bell != nil else { return }
            doorbellArmed = true
            spawnerDoorbell = bell
        case .heartbeat:
            break
        case .mirrorOffer:
            let interrupt = MirrorReceiver.receive(envelope, over: transport) { signalled.withLock { $0 != nil } }
            if let interrupt { relayToChild(interrupt) }
        case .clearStorage:
            // The task process clears; the mirror trees this rank pinned must not keep the cache.
            MirrorCache.releasePins()
            send(toChild: envelope)
        case .user:
            send(toChild: envelope)
        case .hello, .taskResult, .taskExit, .log, .clearStorageReport, .taskFolder, .interruptAck, .mirrorNeed,
            .mirrorData, .mirrorStored:
            log(.warning, "dropped an unexpected \(envelope.kind) message from rank \(envelope.sourceRank)")
        }
    }

    private func send(toChild envelope: Envelope) {
        writer?.send(Relay.encode(peer: envelope.sourceRank, frame: envelope.frame, payload: envelope.payload))
    }

    // MARK: - The task's log in its experiment

    /// Opens `tasks/<task>.log` when the request comes from an experiment's dispatch, and has the task
    /// process's standard output and error copied into it from now on. A log that cannot be opened is
    /// reported in the spawner's log; the task runs without it.
    private func openLog(for request: SpawnRequest) -> TaskLog? {
        if experimentCache?.settings != request.settings {
            experimentCache = (request.settings, try? SpawnSettings(decoding: request.settings).experiment)
        }
        guard let experiment = experimentCache?.experiment, let child else { return nil }
        let task = TaskID(slot: rank, number: request.task)
        let log: TaskLog
        do {
            log = try TaskLog.open(
                task: task.description,
                experiment: experiment.name,
                folder: try experiment.localFolder()
            )
            try log.session("runs '\(request.function)' in worker rank \(rank), task process \(child.pid)")
        } catch {
            self.log(.warning, "task \(task) runs without its log in experiment \(experiment.name): \(error)")
            return nil
        }
        child.observeOutput { stream, bytes in
            try? log.write(bytes: bytes, to: stream == .standardOutput ? .stdout : .stderr)
        }
        return log
    }

    /// Takes in what the task process wrote until now, notes how the task ended, and closes the task's log.
    private func closeLog(of task: Running, ending: String) {
        guard let log = task.log else { return }
        if let child {
            child.deliverPendingOutput()
            child.observeOutput(nil)
        }
        running?.log = nil
        try? log.flush()
        try? log.session(ending)
        try? log.close()
    }

    // MARK: - Talking to the spawner

    private func wakeSpawnerIfAsleep() {
        guard let bell = spawnerDoorbell, let doorbell else { return }
        if transport.quietSinceSpawner > transport.waitPolicy.spin / 2 { doorbell.ring(bell) }
    }

    private func log(_ level: Logger.Level, _ text: String) {
        wakeSpawnerIfAsleep()
        try? LogRecord(level: level, text: text).send(from: running?.number ?? 0, over: transport)
    }

    private func formatSeconds(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(format: "%.3g", seconds)
    }
}

/// Sends frames to a task process in order, on a thread of its own. A send that fails (the task process
/// is gone) drops what is queued: the supervisor sees the death on its side of the channel.
final class ChannelWriter: @unchecked Sendable {
    // Invariant for @unchecked Sendable: `queue` and `stopped` are only touched while holding `condition`.
    private let channel: MessageChannel
    private let condition = NSCondition()
    private var queue: [[UInt8]] = []
    private var busy = false
    private var stopped = false

    init(channel: MessageChannel) {
        self.channel = channel
        let thread = Thread { [self] in run() }
        thread.name = "ParallelVM.task-writer"
        thread.start()
    }

    /// Sends at once from the caller's thread when nothing is queued and the socket takes the frame whole;
    /// otherwise queues it for the writer thread (waking a thread costs more than a trivial task).
    func send(_ bytes: [UInt8]) {
        condition.withLock {
            guard !stopped else { return }
            if queue.isEmpty, !busy, let sent = try? channel.trySend(bytes), sent { return }
            queue.append(bytes)
            condition.signal()
        }
    }

    func stop() {
        condition.withLock {
            stopped = true
            queue = []
            condition.signal()
        }
    }

    private func run() {
        while true {
            let next: [UInt8]? = condition.withLock {
                busy = false
                while queue.isEmpty && !stopped { condition.wait() }
                if stopped { return nil }
                busy = true
                return queue.removeFirst()
            }
            guard let next else { return }
            do {
                try channel.send(next)
            } catch {
                condition.withLock {
                    stopped = true
                    queue = []
                }
                return
            }
        }
    }
}
