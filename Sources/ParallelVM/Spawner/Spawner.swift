import CRunStatus
import Foundation
import Glibc
import Logging
import MPI
import ParallelVMProcess
import ParallelVMStorage
import Synchronization

/// Rank 0's side of the VM: the slot book, the handshake with the workers, their doorbells, the one source
/// of task events that ``VM/receiveMessage(timeout:)`` and the dispatcher both read, clearing and finalize.
///
/// There is one per process, made by ``Startup`` when the first ``VM`` is created; several VM objects (with
/// different settings) share it, as several PyOPUS VM objects share one MPI world. A VM that runs as one
/// process (without mpirun, or with `mpirun -n 1`) has its workers in ``LocalSlots``, over a ``LocalLink``;
/// with none (`isolation: .inProcess`, or `PARALLELVM_LOCAL_SLOTS=0`) it has no transport: one slot, no workers.
final class Spawner: Sendable {
    /// nil when the program runs as one process without local slots.
    let transport: (any SpawnerLink)?
    /// The local slots of a VM that runs as one process; nil otherwise.
    let localSlots: LocalSlots?
    /// `transport` when it is the local slots' hub, cast once rather than on every wait.
    private let localLink: LocalLink?
    /// Whether this process initialised MPI (under a launcher), so finalize finalizes it.
    let usesMPI: Bool
    let host: HostID
    let functions: FunctionTable
    /// This process's doorbell: idle workers on this host ring it; it rings theirs.
    let doorbell: Doorbell?
    /// Whether every worker has a doorbell it can ring the spawner's with (on this host, or over the
    /// network from another), so all of them can wake the spawner.
    let everyWorkerRingsTheSpawner: Bool
    /// Where the workers run task code (every rank's first VM says the same).
    let isolation: Isolation

    private struct State: ~Copyable {
        var book: SlotBook
        var finalized = false
        var vmCount = 0
        var logger: Logger
        /// Exits of tasks whose result (which also ended them) has been handed out: each follows its result.
        var endedTasks: [(task: TaskID, sentAt: Double)] = []
        /// What the program asked to run when the run is interrupted, in registration order.
        var interruptHandlers: [@Sendable (Interrupt) -> Void] = []
        /// Results made here for tasks whose worker rank was lost; each one's exit follows.
        var lostResults: [(task: TaskID, result: TaskResult)] = []
        /// When the worker ranks on this host were last checked for life.
        var lastLivenessCheck = 0.0
        /// Calls of ``nextEvent(until:where:)`` that only looked: they read the clock one time in 32.
        var looks = 0
    }
    private let state: Mutex<State>
    /// The worker slots each mirror tree (by digest) has been offered to; held while a tree is brought to a
    /// slot, so that offers are made one at a time (see ``deliver(_:to:)``).
    let mirroredSlots = Mutex<[String: Set<Int>]>([:])

    var size: Int { transport?.size ?? 1 }
    /// Whether there are worker ranks to spawn on.
    var hasWorkers: Bool { size > 1 }
    /// How this process waits for messages; nil without mpirun.
    var waitPolicy: WaitPolicy? { transport?.waitPolicy }

    private init(
        transport: (any SpawnerLink)?,
        host: HostID,
        functions: FunctionTable,
        book: SlotBook,
        logger: Logger,
        doorbell: Doorbell?,
        isolation: Isolation,
        localSlots: LocalSlots? = nil,
        usesMPI: Bool
    ) {
        self.isolation = isolation
        self.transport = transport
        self.localSlots = localSlots
        self.localLink = transport as? LocalLink
        self.usesMPI = usesMPI
        self.host = host
        self.functions = functions
        self.doorbell = doorbell
        self.everyWorkerRingsTheSpawner =
            doorbell != nil && book.count > 1
            && book.slots.dropFirst().allSatisfy { slot in
                slot.host == host ? slot.doorbell != 0 : slot.networkBell != nil && doorbell?.networkPort != 0
            }
        self.state = Mutex(State(book: book, logger: logger))
    }

    /// The spawner of a program that runs as one process: started without mpirun (`usesMPI` false), or as
    /// the only rank. Under process isolation its workers are `localSlots` local slots (none: jobs run in
    /// this process, and the VM has one slot).
    static func alone(
        functions: FunctionTable,
        logger: Logger,
        isolation: Isolation,
        host: HostID = HostID(ProcessInfo.processInfo.hostName),
        localSlots: Int,
        waitPolicy: WaitPolicy,
        usesMPI: Bool
    ) throws(VMError) -> Spawner {
        if isolation.kind == .process, localSlots > 0 {
            let slots = LocalSlots(
                count: localSlots,
                host: host,
                waitPolicy: waitPolicy,
                memoryLimit: isolation.memoryLimit
            )
            return try handshake(
                transport: slots.spawnerLink,
                host: host,
                functions: functions,
                logger: logger,
                doorbell: nil,
                isolation: isolation,
                localSlots: slots,
                usesMPI: usesMPI
            )
        }
        let slot = SlotBook.Slot(host: host, cpus: ProcessInfo.processInfo.activeProcessorCount, pid: getpid(), task: 0)
        return Spawner(
            transport: nil,
            host: host,
            functions: functions,
            book: SlotBook(slots: [slot]),
            logger: logger,
            doorbell: nil,
            isolation: isolation,
            usesMPI: usesMPI
        )
    }

    /// Seconds between heartbeats to workers on other hosts (theirs to the spawner come every
    /// ``Worker/heartbeatInterval``).
    static let heartbeatInterval = 5.0

    /// Seconds without a frame from a worker rank on another host after which it counts as lost, with its
    /// host: `PARALLELVM_HOST_TIMEOUT` in the spawner's environment, 10 by default. Its workers send a
    /// heartbeat every second, so a live host is never this quiet; a host whose network is cut is reported
    /// lost within this time plus ``livenessInterval``.
    static let remoteSilence: Double = {
        let value = ProcessInfo.processInfo.environment["PARALLELVM_HOST_TIMEOUT"].flatMap(Double.init)
        return value.map { $0.isFinite && $0 > 0 ? $0 : 10 } ?? 10
    }()

    /// The worker ranks on other hosts than the spawner's.
    private var remoteWorkers: [Int] { withBook { book in book.liveWorkers.filter { book.host(of: $0) != host } } }

    /// Sends workers on other hosts a heartbeat every few seconds, from a thread of its own, so that they
    /// can tell a spawner that died from one that is busy (they watch one on their own host by its PID),
    /// and starts watching for theirs.
    func startHeartbeats() {
        guard let transport else { return }
        let remote = remoteWorkers
        guard !remote.isEmpty else { return }
        transport.watch(remote)
        let thread = Thread { [self] in
            while !isFinalized {
                Thread.sleep(forTimeInterval: Spawner.heartbeatInterval)
                guard !isFinalized else { return }
                let alive = withBook { Set($0.liveWorkers) }
                for rank in remote where alive.contains(rank) {
                    try? transport.send(WireWriter(kind: .heartbeat, sourceTask: 0, destinationTask: 0).bytes, to: rank)
                }
            }
        }
        thread.name = "ParallelVM.heartbeat"
        thread.start()
    }

    /// Waits for every worker's ``Hello``, answers each with a ``Welcome``, and returns the spawner.
    static func handshake(
        transport: any SpawnerLink,
        host: HostID,
        functions: FunctionTable,
        logger: Logger,
        doorbell: Doorbell?,
        isolation: Isolation,
        localSlots: LocalSlots? = nil,
        usesMPI: Bool = true
    ) throws(VMError) -> Spawner {
        let pid = getpid()
        var slots = [SlotBook.Slot](
            repeating: .init(host: host, cpus: ProcessInfo.processInfo.activeProcessorCount, pid: pid, task: nil),
            count: transport.size
        )
        var silent = Set(1..<transport.size)
        for _ in 1..<transport.size {
            StartWatchdog.waiting(
                for:
                    "worker rank(s) \(silent.sorted().map(String.init).joined(separator: ", ")) did not report to the spawner"
            )
            guard let envelope = try transport.receive(until: .never, matching: { $0.kind == .hello }) else { continue }
            silent.remove(envelope.sourceRank)
            let hello = try Hello(envelope)
            slots[envelope.sourceRank] = .init(
                host: hello.host,
                cpus: hello.cpus,
                pid: hello.pid,
                task: nil,
                doorbell: hello.doorbell,
                networkBell: hello.host == host || doorbell == nil
                    ? nil : hello.bell.target.map { NetworkBellTarget(address: $0.address, port: $0.port) }
            )
        }
        let welcome = Welcome(
            host: host,
            pid: pid,
            doorbell: doorbell?.token ?? 0,
            bell: slots.contains { $0.host != host } ? NetworkBell.of(doorbell) : .none
        )
        for worker in 1..<transport.size { try welcome.send(over: transport, to: worker) }
        StartWatchdog.finish()
        return Spawner(
            transport: transport,
            host: host,
            functions: functions,
            book: SlotBook(slots: slots),
            logger: logger,
            doorbell: doorbell,
            isolation: isolation,
            localSlots: localSlots,
            usesMPI: usesMPI
        )
    }

    func nextVMIndex() -> Int {
        state.withLock { state in
            state.vmCount += 1
            return state.vmCount
        }
    }

    // MARK: - The book

    func withBook<T>(_ body: (inout SlotBook) -> T) -> T {
        state.withLock { state in body(&state.book) }
    }

    var isFinalized: Bool { state.withLock { $0.finalized } }

    // MARK: - Logging

    var logger: Logger { state.withLock { $0.logger } }

    func raiseLogLevel(to level: Logger.Level) {
        state.withLock { state in
            if level < state.logger.logLevel { state.logger.logLevel = level }
        }
    }

    /// Prints a log line forwarded by a worker, tagged with its host and task and carrying its metadata.
    private func printForwardedLog(_ envelope: Envelope) {
        guard let record = try? LogRecord(envelope) else { return }
        let host = withBook { $0.host(of: envelope.sourceRank) }?.name ?? "rank \(envelope.sourceRank)"
        if let note = StorageNote(record) {
            EventHub.shared.emit(
                .storagePrepared(
                    task: envelope.sourceID,
                    host: HostID(host),
                    files: note.files,
                    bytes: note.bytes,
                    seconds: note.seconds
                )
            )
            return
        }
        var metadata = Logger.Metadata()
        for (key, value) in record.metadata { metadata[key] = .string(value) }
        metadata["host"] = .string(host)
        metadata["task"] = .string(envelope.sourceID.description)
        StatusLine.shared.printAbove { logger.log(level: record.level, "\(record.text)", metadata: metadata) }
    }

    // MARK: - Spawning

    /// Places up to `count` tasks in free slots (on `targets` only, when given) and sends each its request.
    func spawn(
        function: String,
        arguments: [UInt8],
        settings: [UInt8],
        count: Int?,
        targets: Set<HostID>?,
        sendBack: Bool,
        timeout: Double = 0,
        avoiding: Set<Int> = [],
        mirror: MirrorSnapshot? = nil,
        direct: Bool = true,
        describeArguments: () -> String = { "" }
    ) throws(VMError) -> [TaskID] {
        guard let transport else { return [] }
        let (placed, knownTasks) = withBook { book in
            let free = book.freeSlots(on: targets)
            let preferred = free.filter { !avoiding.contains($0) } + free.filter { avoiding.contains($0) }
            let tasks = preferred.prefix(count ?? Int.max).map { book.occupy($0) }
            return (tasks, book.nextTaskNumber)
        }
        if EventHub.shared.hasListeners { emitSpawned(placed, function: function, arguments: describeArguments()) }
        for (index, task) in placed.enumerated() {
            let request = SpawnRequest(
                task: task.number,
                sendBack: sendBack,
                knownTasks: knownTasks,
                timeout: timeout,
                function: function,
                settings: settings,
                arguments: arguments
            )
            // The tasks not sent yet give their slots back; the error says what failed.
            func releaseUnsent(_ error: VMError) -> VMError {
                withBook { book in
                    for unsent in placed[index...] { book.release(unsent) }
                }
                for unsent in placed[index...] { emitEnded(unsent) }
                return error
            }
            if let mirror {
                do {
                    try deliver(mirror, to: task.slot)
                } catch {
                    throw releaseUnsent(
                        VMError(error.code, "spawnFunction('\(function)'): \(error.message)", underlying: error)
                    )
                }
            }
            do {
                if direct, mirror == nil, let route = directRoute(to: task.slot) {
                    route.task.store(task.number, ordering: .releasing)
                    try request.send(over: route, to: task.slot)
                } else {
                    // Ring first: a request above MPI's eager limit completes only once the worker takes it.
                    ringDoorbell(of: task.slot)
                    try request.send(over: transport, to: task.slot)
                }
            } catch {
                throw releaseUnsent(
                    VMError(
                        .mpi,
                        "spawnFunction('\(function)'): sending the request for task \(task) failed: \(error)",
                        underlying: error
                    )
                )
            }
        }
        return placed
    }

    /// Sends a user value to `destination`, which the caller has checked is running.
    func send<T: Encodable>(_ value: T, to destination: TaskID, knownTasks: Int? = nil) throws(VMError) {
        guard let transport else {
            throw VMError(
                .invalidDestination,
                "task \(destination) does not exist: the VM runs without workers (not under mpirun)"
            )
        }
        let knownTasks = knownTasks ?? withBook { $0.nextTaskNumber }
        if let route = directRoute(to: destination.slot), route.task.load(ordering: .acquiring) == destination.number {
            try UserFrame.send(value, from: 0, to: destination, knownTasks: knownTasks, over: route)
            return
        }
        // A worker rank supervising a task process may wait on its doorbell while its task runs.
        if isolation.kind == .process { ringDoorbell(of: destination.slot, always: true) }
        try UserFrame.send(value, from: 0, to: destination, knownTasks: knownTasks, over: transport)
    }

    /// Whether `task`'s spawn request went through the direct route to its task process.
    func wentDirectly(_ task: TaskID) -> Bool {
        directRoute(to: task.slot)?.task.load(ordering: .acquiring) == task.number
    }

    /// Opens the direct routes to the task processes on this host at once, so that their names leave
    /// `/dev/shm` as the run starts.
    func openDirectRoutes() {
        for slot in 1..<max(size, 1) { _ = directRoute(to: slot) }
    }

    /// The direct route to the task process of the worker in `slot`, when it runs on this host under
    /// process isolation and made one.
    func directRoute(to slot: Int) -> DirectRoutes.Route? {
        guard isolation.kind == .process, localLink == nil, let mpi = transport as? Transport else { return nil }
        guard
            let (pid, token) = withBook({ book -> (Int32, UInt64)? in
                guard book.slots.indices.contains(slot), book.slots[slot].host == host, !book.slots[slot].lost,
                    book.slots[slot].doorbell != 0
                else { return nil }
                return (book.slots[slot].pid, book.slots[slot].doorbell)
            })
        else { return nil }
        return mpi.direct.route(
            rank: slot,
            path: DirectSegment.path(forWorker: pid, token: token),
            size: mpi.size,
            waitPolicy: mpi.waitPolicy,
            doorbell: doorbell,
            fallback: { [weak self] frame, payload throws(VMError) in
                // A worker rank supervising a task process may wait on its doorbell while its task runs.
                self?.ringDoorbell(of: slot, always: true)
                try mpi.send(frame, payload: payload, to: slot)
            }
        )
    }

    // MARK: - Task events

    /// Waits until `deadline` for the next task event that `accept` takes, printing forwarded logs on the
    /// way. A result that also ended its task is followed by that task's exit; an exit frees its slot in
    /// the book before it is returned. User messages for tasks other than the spawner's are dropped.
    func nextEvent(
        until deadline: Deadline,
        where accept: (TaskEvent.Kind, TaskID) -> Bool
    ) throws(VMError) -> TaskEvent? {
        guard let transport else { return nil }
        let idleWait = spawnerIdleWait
        while true {
            // One look at the state on the hot path: a poll finds nothing queued here almost always. A
            // caller that only looks (the dispatcher's loop polls so) reads the clock one time in 32.
            let immediate = deadline.isImmediate
            let (queued, now, due) = state.withLock { state -> (Bool, Double?, Bool) in
                state.looks &+= 1
                let clock = !immediate || state.looks & 31 == 0 ? monotonicSeconds() : nil
                return (
                    !state.lostResults.isEmpty || !state.endedTasks.isEmpty,
                    clock,
                    clock.map { $0 - state.lastLivenessCheck >= Spawner.livenessInterval } ?? false
                )
            }
            if due { checkWorkersAlive() }
            if queued || due {
                if let lost = takeLostResult(where: accept) { return lost }
                if let exit = takeEndedTask(where: accept) { return exit }
            }
            // Wait in slices, so that a worker lost meanwhile is noticed within the slice.
            let slice: Deadline
            if immediate {
                slice = deadline
            } else {
                let now = now ?? monotonicSeconds()
                slice =
                    deadline.at.map { $0 - now <= Spawner.livenessInterval } == true
                    ? deadline : Deadline.after(seconds: Spawner.livenessInterval, from: now)
            }
            let envelope = try transport.receive(
                until: slice,
                matching: { envelope in
                    switch envelope.kind {
                    case .log: true
                    case .taskResult: accept(.result, envelope.sourceID)
                    case .taskExit: accept(.exit, envelope.sourceID)
                    case .user: envelope.destinationTask != 0 || accept(.user, envelope.sourceID)
                    case .hello, .spawn, .finalize, .clearStorage, .clearStorageReport, .welcome, .kill, .taskFolder,
                        .interrupt, .interruptAck, .heartbeat, .mirrorOffer, .mirrorNeed, .mirrorData, .mirrorStored:
                        false
                    }
                },
                idleWait: idleWait
            )
            guard let envelope else {
                if deadline.hasPassed { return nil }
                continue
            }
            let source = envelope.sourceID
            switch envelope.kind {
            case .log:
                printForwardedLog(envelope)
            case .taskResult:
                let host = withBook { $0.host(of: source.slot) } ?? HostID("rank \(source.slot)")
                let result = try TaskEnd.result(from: envelope, host: host)
                if TaskEnd.endsTask(envelope) {
                    let sentAt = TaskEnd.sentAt(envelope) ?? monotonicSeconds()
                    state.withLock { $0.endedTasks.append((source, sentAt)) }
                }
                EventHub.shared.emit(VMEvent.Kind(result: result, task: source))
                return .result(source, result)
            case .taskExit:
                let sentAt = TaskEnd.sentAt(envelope) ?? monotonicSeconds()
                withBook { _ = $0.release(source, at: sentAt) }
                emitEnded(source)
                return .exit(source)
            case .user:
                guard envelope.destinationTask == 0 else { continue }
                return .user(source, try UserFrame.message(from: envelope))
            case .hello, .spawn, .finalize, .clearStorage, .clearStorageReport, .welcome, .kill, .taskFolder,
                .interrupt, .interruptAck, .heartbeat, .mirrorOffer, .mirrorNeed, .mirrorData, .mirrorStored:
                continue
            }
        }
    }

    /// Seconds `MPI_Finalize` may take after a worker rank was lost before the process ends.
    static let finalizeLimitAfterLoss = 10.0

    /// How often the spawner looks whether the worker ranks on its host still live, in seconds.
    static let livenessInterval = 0.5

    /// Marks lost the worker ranks on this host whose process is gone, and those on other hosts not heard
    /// from for ``remoteSilence`` seconds (a host whose network went down, or that died), and makes a failed
    /// result (``TaskTermination/Reason/workerLost``) for the task each ran.
    func checkWorkersAlive() {
        let now = monotonicSeconds()
        let due = state.withLock { state -> [(rank: Int, pid: Int32)]? in
            guard now - state.lastLivenessCheck >= Spawner.livenessInterval else { return nil }
            state.lastLivenessCheck = now
            return state.book.slots.indices.compactMap { rank in
                let slot = state.book.slots[rank]
                return rank > 0 && !slot.lost && slot.host == host && slot.pid > 0 ? (rank, slot.pid) : nil
            }
        }
        guard let due else { return }
        for (rank, pid) in due where Glibc.kill(pid, 0) == -1 && errno == ESRCH {
            workerLost(rank: rank, pid: pid)
        }
        guard let quiet = transport?.quietSince(), !quiet.isEmpty else { return }
        let limit = Spawner.remoteSilence
        // A rank past the limit takes along the ranks of its host that have missed a few heartbeats too:
        // their beats come from threads of their own, up to a second apart, and a host goes as a whole.
        let lost = withBook { book -> [(host: HostID, ranks: [Int], whole: Bool)] in
            let silentHosts = Set(book.liveWorkers.filter { (quiet[$0] ?? 0) > limit }.compactMap { book.host(of: $0) })
            return silentHosts.sorted { $0.name < $1.name }.map { lostHost in
                let live = book.liveWorkers.filter { book.host(of: $0) == lostHost }
                let ranks = live.filter { (quiet[$0] ?? 0) > min(limit, 3 * Heartbeat.interval) }
                return (lostHost, ranks, ranks.count == live.count)
            }
        }
        for (lostHost, ranks, whole) in lost {
            let list = ranks.map(String.init).joined(separator: ", ")
            logger.warning(
                whole
                    ? "host \(lostHost) was lost: no word from its worker rank(s) \(list) for \(Int(limit)) s"
                    : "worker rank(s) \(list) on \(lostHost) went silent for \(Int(limit)) s; the host's other ranks still talk"
            )
            for rank in ranks {
                let pid = withBook { $0.slots[rank].pid }
                workerLost(rank: rank, pid: pid, why: "no word from it for \(Int(limit)) s")
            }
        }
    }

    private func workerLost(rank: Int, pid: Int32, why: String = "its process is gone") {
        let running = withBook { $0.markLost(rank) }
        let slotHost = withBook { $0.host(of: rank) } ?? host
        let hostLost = withBook { book in
            book.slots.indices.allSatisfy { book.slots[$0].host != slotHost || book.slots[$0].lost }
        }
        if hostLost { EventHub.shared.emit(.hostDown(host: slotHost)) }
        logger.warning("worker rank \(rank) (pid \(pid)) on \(slotHost) was lost (\(why)); its slot gets no more tasks")
        guard let task = running else { return }
        let termination = TaskTermination(
            reason: .workerLost,
            task: task,
            function: "",
            host: slotHost,
            detail: "was lost with its worker rank \(rank) (pid \(pid)): \(why)",
            standardError: []
        )
        let error = RemoteError(
            function: "",
            typeName: _typeName(TaskTermination.self, qualified: true),
            message: termination.description,
            task: task,
            host: slotHost,
            underlying: termination
        )
        state.withLock { state in
            state.lostResults.append((task, TaskResult(function: "", error: error)))
            state.endedTasks.append((task, monotonicSeconds()))
        }
    }

    private func takeLostResult(where accept: (TaskEvent.Kind, TaskID) -> Bool) -> TaskEvent? {
        state.withLock { state in
            guard let index = state.lostResults.firstIndex(where: { accept(.result, $0.task) }) else { return nil }
            let lost = state.lostResults.remove(at: index)
            EventHub.shared.emit(VMEvent.Kind(result: lost.result, task: lost.task))
            return .result(lost.task, lost.result)
        }
    }

    private func takeEndedTask(where accept: (TaskEvent.Kind, TaskID) -> Bool) -> TaskEvent? {
        let ended = state.withLock { state -> TaskID? in
            guard let index = state.endedTasks.firstIndex(where: { accept(.exit, $0.task) }) else { return nil }
            let ended = state.endedTasks.remove(at: index)
            _ = state.book.release(ended.task, at: ended.sentAt)
            return ended.task
        }
        guard let ended else { return nil }
        emitEnded(ended)
        return .exit(ended)
    }

    // MARK: - Status events

    private func emitSpawned(_ tasks: [TaskID], function: String, arguments: String) {
        for task in tasks {
            let host = withBook { $0.host(of: task.slot) } ?? host
            EventHub.shared.emit(.slotBusy(slot: task.slot, host: host, task: task))
            EventHub.shared.emit(
                .taskSpawned(.init(task: task, function: function, host: host, arguments: arguments))
            )
        }
    }

    private func emitEnded(_ task: TaskID) {
        guard EventHub.shared.hasListeners else { return }
        let host = withBook { $0.host(of: task.slot) } ?? host
        EventHub.shared.emit(.taskExit(task: task))
        EventHub.shared.emit(.slotFree(slot: task.slot, host: host))
    }

    /// Whether a task event that `accept` takes is waiting (never blocks).
    func hasEvent(where accept: (TaskEvent.Kind, TaskID) -> Bool) throws(VMError) -> Bool {
        guard let transport else { return false }
        if state.withLock({ state in state.endedTasks.contains { accept(.exit, $0.task) } }) { return true }
        return try transport.hasIncoming { envelope in
            switch envelope.kind {
            case .taskResult: accept(.result, envelope.sourceID)
            case .taskExit: accept(.exit, envelope.sourceID)
            case .user: envelope.destinationTask == 0 && accept(.user, envelope.sourceID)
            default: false
            }
        }
    }

    // MARK: - Doorbells

    /// Rings the doorbell of the worker in `slot` just before a message to it (over the network when it is
    /// on another host), when it may be asleep: it has been free for longer than half the spin time (`always`: whatever its state).
    /// A woken worker spins again for the spin time, so the message that follows finds it awake.
    func ringDoorbell(of slot: Int, always: Bool = false) {
        guard let doorbell, let transport else { return }
        let target: (pid: Int32, token: UInt64, network: NetworkBellTarget?)? = withBook { book in
            guard book.slots.indices.contains(slot) else { return nil }
            let entry = book.slots[slot]
            guard entry.host == host ? entry.doorbell != 0 : entry.networkBell != nil else { return nil }
            guard always || monotonicSeconds() - entry.freedAt > transport.waitPolicy.spin / 2 else { return nil }
            return (entry.pid, entry.doorbell, entry.host == host ? nil : entry.networkBell)
        }
        if let network = target?.network {
            doorbell.ring(address: network.address, port: network.port)
        } else if let target {
            doorbell.ring(pid: target.pid, token: target.token)
        }
    }

    /// How the spawner waits once its spin time is over: on its doorbell when every worker can ring it
    /// (on this host, or over the network), otherwise by sleeping between polls (nil).
    private var spawnerIdleWait: (() -> Bool)? {
        if let localLink { return { localLink.wait(milliseconds: 10) } }
        guard let doorbell, everyWorkerRingsTheSpawner else { return nil }
        return { doorbell.wait(milliseconds: 10) }
    }

    // MARK: - Local storage

    /// Clears this user's local storage here and on every worker; one report per rank that answered, and
    /// a failure for each that did not answer in time.
    func clearLocalStorage(until deadline: Deadline, timeoutText: String) throws(VMError) -> [ClearReport] {
        var reports = [Worker.clearLocalStorageHere()]
        guard let transport else { return reports }
        // The workers' mirror caches go too: trees are offered again to the next task on each rank.
        mirroredSlots.withLock { $0.removeAll() }
        let workers = withBook { $0.liveWorkers }
        for worker in workers {
            ringDoorbell(of: worker, always: true)
            try Signal.clearStorage(over: transport, to: worker)
        }
        var waiting = Set(workers)
        while !waiting.isEmpty {
            guard
                let envelope = try transport.receive(until: deadline, matching: { $0.kind == .clearStorageReport })
            else { break }
            waiting.remove(envelope.sourceRank)
            do {
                reports.append(try ClearStorageReport.report(from: envelope))
            } catch {
                let host = withBook { $0.host(of: envelope.sourceRank) }?.name ?? "rank \(envelope.sourceRank)"
                reports.append(ClearReport(host: host, failures: ["rank \(envelope.sourceRank)": "\(error)"]))
            }
        }
        for worker in waiting.sorted() {
            let host = withBook { $0.host(of: worker) }?.name ?? "rank \(worker)"
            reports.append(
                ClearReport(
                    host: host,
                    failures: ["rank \(worker)": "no answer within \(timeoutText) (busy with a long task?)"]
                )
            )
        }
        return reports
    }

    // MARK: - Killing

    /// Asks the worker running `task` to end it; its result (killed) and exit follow as for any task.
    func kill(_ task: TaskID) throws(VMError) {
        guard let transport else { return }
        ringDoorbell(of: task.slot, always: true)
        try KillRequest.send(task: task.number, over: transport, to: task.slot)
    }

    // MARK: - Interrupts

    func onInterrupt(_ handler: @escaping @Sendable (Interrupt) -> Void) {
        state.withLock { $0.interruptHandlers.append(handler) }
    }

    /// Ends an interrupted run: the program's handlers first, then every worker ends its task process and
    /// removes its task folder, then this process exits with 128 plus the signal number.
    func interrupted(_ interrupt: Interrupt) -> Never {
        // Should mpirun's SIGKILL come before the end of this (it gives 2 s), the launcher still learns
        // that the run was interrupted.
        parallelvm_run_status_exiting(interrupt.exitStatus)
        for handler in state.withLock({ $0.interruptHandlers }) { handler(interrupt) }
        if let transport, size > 1 {
            var waiting = Set<Int>()
            for worker in 1..<size {
                ringDoorbell(of: worker, always: true)
                if (try? InterruptNotice.send(signal: interrupt.signal, over: transport, to: worker)) != nil {
                    waiting.insert(worker)
                }
            }
            // Workers mpirun already stopped do not answer: wait a bounded time only.
            let deadline = (try? Deadline(timeout: 5, for: "interrupt")) ?? .now
            while !waiting.isEmpty,
                let envelope = try? transport.receive(
                    until: deadline,
                    matching: { $0.kind == .interruptAck },
                    idleWait: nil
                )
            {
                waiting.remove(envelope.sourceRank)
            }
        }
        fflush(nil)
        parallelvm_run_status_exiting(interrupt.exitStatus)
        _exit(interrupt.exitStatus)
    }

    // MARK: - Finalize

    /// Tells every worker to leave its loop, then finalizes MPI (local slots: waits until each has let its
    /// task process go). Safe to call more than once.
    ///
    /// With a deadline, tasks still running then are killed, and their IDs returned; their results are
    /// dropped (nobody may receive them after finalize). Without one, finalize waits for them.
    @discardableResult
    func finalize(until deadline: Deadline = .never) throws(VMError) -> [TaskID] {
        let first = state.withLock { state in
            defer { state.finalized = true }
            return !state.finalized
        }
        defer { EventHub.shared.finishAll() }
        guard first, let transport else { return [] }
        var failures: [String] = []
        // Open MPI's finalize waits in a collective exchange for every rank; after a loss, under its
        // recovery, it has been seen to wait for the lost rank for ever, on every rank. No rank calls it
        // then (Open MPI's recovery lets processes exit without it).
        let lostBefore = !withBook { $0.lostWorkers }.isEmpty
        for worker in withBook({ $0.liveWorkers }) {
            do {
                ringDoorbell(of: worker, always: true)
                try Signal.finalize(over: transport, to: worker, withoutMPI: lostBefore)
            } catch {
                failures.append("rank \(worker): \(error)")
            }
        }
        var killed: [TaskID] = []
        if deadline.at != nil {
            let busy = {
                self.withBook { book in
                    book.liveWorkers.compactMap { slot in book.task(in: slot).map { TaskID(slot: slot, number: $0) } }
                }
            }
            while !busy().isEmpty, (try? nextEvent(until: deadline, where: { _, _ in true })) ?? nil != nil {}
            killed = busy()
            for task in killed { try? kill(task) }
            let grace = try Deadline(timeout: 10, for: "finalize")
            while !busy().isEmpty, (try? nextEvent(until: grace, where: { _, _ in true })) ?? nil != nil {}
            if !killed.isEmpty {
                logger.warning(
                    "finalize killed task(s) still running: \(killed.map(\.description).joined(separator: ", "))"
                )
            }
        }
        // Print what workers said last, so their diagnostics are not lost.
        while let envelope = try? transport.receive(until: .now, matching: { $0.kind == .log }) {
            printForwardedLog(envelope)
        }
        localSlots?.waitUntilEnded(until: .never)
        // A rank lost since the finalize requests went out: MPI's finalize is bounded.
        let lost = withBook { $0.lostWorkers }
        let bound =
            usesMPI && !lost.isEmpty
            ? ExitTimer(limit: Spawner.finalizeLimitAfterLoss, name: "ParallelVM.finalize-bound") {
                "ParallelVM: MPI_Finalize did not return within \(Int(Spawner.finalizeLimitAfterLoss)) s after worker rank(s) \(lost.map(String.init).joined(separator: ", ")) were lost; ending the process"
            } : nil
        do {
            if usesMPI, !lostBefore { try MPIEnvironment.finalize() }
        } catch {
            failures.append("\(error)")
        }
        bound?.cancel()
        if !failures.isEmpty {
            throw VMError(.mpi, "finalizing the VM failed: \(failures.joined(separator: "; "))")
        }
        return killed
    }

    /// Ends mpirun when the program exits after a host was lost: Open MPI's recovery keeps the job going
    /// without the host, but mpirun then waits for that host's ranks forever. Run at exit (the program's
    /// results are out by then), and only when mpirun is this process's parent; mpirun then exits with a
    /// non-zero status, which says the run lost a host.
    func endMpirunIfHostsLost() {
        let lost = withBook { book in
            Set(book.lostWorkers.compactMap { book.host(of: $0) }.filter { $0 != host })
        }
        guard !lost.isEmpty else { return }
        let parent = getppid()
        let command = (try? String(contentsOfFile: "/proc/\(parent)/comm", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let names = lost.map(\.name).sorted().joined(separator: ", ")
        guard let command, ["mpirun", "mpiexec", "orterun"].contains(command) else {
            logger.warning(
                "host(s) \(names) were lost: end mpirun by hand if it does not end (it waits for their ranks)"
            )
            return
        }
        logger.warning(
            "host(s) \(names) were lost: ending mpirun (pid \(parent)), which would wait for their ranks forever"
        )
        fflush(nil)
        // mpirun passes its SIGTERM on to this process, which is exiting anyway.
        signal(SIGTERM, SIG_IGN)
        Glibc.kill(parent, SIGTERM)
    }

    /// Finalizes for a program that forgot to; registered with `atexit`.
    func finalizeAtExit() {
        guard !isFinalized else { return }
        do {
            _ = try finalize()
        } catch {
            FileHandle.standardError.write(Data("ParallelVM: \(error)\n".utf8))
        }
    }
}

/// What the spawner hears from tasks.
enum TaskEvent: Sendable {
    enum Kind: Sendable { case result, exit, user }

    /// A task's outcome; its exit follows.
    case result(TaskID, TaskResult)
    /// A task has ended and its slot is free again.
    case exit(TaskID)
    /// A user value a task sent to the spawner.
    case user(TaskID, UserMessage)
}
