import Foundation
public import Logging
import MPI
import ParallelVMCodec
public import ParallelVMStorage

/// A parallel virtual machine over MPI: rank 0 is the spawner and runs your program, the other ranks are
/// workers that run registered functions on request.
///
/// Create the first VM at the top of `main`, on every rank: on a worker the initialiser never returns
/// (the process serves spawn requests until the spawner calls ``finalize(timeout:)``, then exits 0); on the spawner
/// it returns once every worker has reported in. Run without mpirun (or with `mpirun -n 1`), the program is one
/// process whose workers are local slots: one supervised task process per core, or `PARALLELVM_LOCAL_SLOTS`
/// of them, each task in its own task folder with mirroring, as on a worker rank. With none
/// (`PARALLELVM_LOCAL_SLOTS=0`, or `isolation: .inProcess`) it has no workers: queries answer truthfully and
/// ``spawnFunction(_:args:count:targets:sendBack:timeout:)`` spawns nothing.
///
/// ```swift
/// let hello = RemoteFunction("hello") { (name: String, task: TaskContext) in "Hello \(name) from \(task.host)" }
/// let vm = try VM(functions: [hello])
/// let tasks = try vm.spawnFunction(hello, args: "world", count: 2)
/// while let (source, message) = try vm.receiveMessage(timeout: 10) { ... }
/// try vm.finalize()
/// ```
///
/// Several VM objects with different settings may be created; each spawn request carries the settings of
/// the VM object that made it.
public final class VM: Sendable {
    let spawner: Spawner
    /// The debug level: 0 quiet, 1 task starts and ends, 2 and more everything.
    public let debug: Int
    /// This VM object's index in the process (1 for the first), part of local storage folder names.
    public let vmIndex: Int
    /// Whether task storage folders stay after a task and are reused by the VM's later tasks on that worker.
    public let persistentStorage: Bool
    /// Warnings from validating the mirror map (sources that matched nothing, with `.warn`).
    public let storageWarnings: [String]
    let storage: StorageRequest?
    /// What the mirror map names in unshared folders, read when the VM object was made; nil when nothing.
    let mirrorSnapshot: MirrorSnapshot?
    /// The settings every spawn request of this VM object carries, encoded once.
    let encodedSettings: [UInt8]
    /// Whether those settings name an experiment (its tasks keep their logs through their worker ranks).
    let namesExperiment: Bool

    /// Starts the VM (MPI and, on workers, the worker loop) on first use and makes a VM object.
    ///
    /// - Parameters:
    ///   - functions: the functions workers may run; register all of them with the first VM a program creates.
    ///   - debug: 0 prints nothing extra; 1 and more prints spawner and worker diagnostics in the spawner's log.
    ///   - mirrorMap: spawner paths (globs allowed) mapped to folders relative to each task's local storage
    ///     (`"."` is the storage folder itself). Sources must lie in `PARALLEL_MIRRORED_STORAGE` (default: the
    ///     home folder), or in `PARALLEL_UNSHARED_STORAGE`, folders only the spawner's host has: those are read
    ///     now and sent to each host's mirror cache once, and task folders get hard links to the cached copies.
    ///     Directories are copied as trees, files into the target folder. With a mirror map each task runs in
    ///     its own local storage folder under `PARALLEL_LOCAL_STORAGE`.
    ///   - startupDir: with a mirror map, a folder relative to the task's storage to start in; without one, a
    ///     spawner path (translated through the mirrored storage when `translateStartupDir`) to start in.
    ///   - translateStartupDir: whether a `startupDir` given without a mirror map is a spawner path to translate
    ///     through the mirrored storage (true) or a path taken as it is on every worker (false).
    ///   - persistentStorage: keep task storage after a task and reuse it, without mirroring again, for the
    ///     VM's later tasks on the same worker.
    ///   - missingMirrorSources: whether a mirror source that matches nothing is an error (default) or a
    ///     warning (listed in ``storageWarnings``).
    ///   - isolation: where workers run task code: ``Isolation/process`` (the default) in supervised task
    ///     processes, so that a crashing task fails alone; ``Isolation/inProcess`` in the worker rank itself.
    ///     Only the first VM's setting counts, and every rank must pass the same.
    ///   - setup: runs once in each task process (or worker rank, in-process) before its first task, and again
    ///     in the fresh task process that replaces a crashed one, so that tasks can keep in-memory data such as
    ///     a loaded model (mpi4py.futures' `initializer`). A setup that throws fails the task it ran before,
    ///     and runs again before the next. Only the first VM's setup counts.
    ///   - logger: where the spawner prints its own and forwarded diagnostics. The default is
    ///     `Logger(label: "ParallelVM")`, so the program's `LoggingSystem.bootstrap` decides where lines go
    ///     (swift-log's default handler writes them to standard error).
    /// - Throws: ``VMError`` when MPI cannot start, `StorageError` naming the path when the mirror map or
    ///   startup folder is invalid.
    public init(
        functions: [any RemoteFunctionConvertible] = [],
        debug: Int = 0,
        mirrorMap: [String: String]? = nil,
        startupDir: String? = nil,
        translateStartupDir: Bool = true,
        persistentStorage: Bool = false,
        missingMirrorSources: MissingSourcePolicy = .error,
        isolation: Isolation = .process,
        setup: (@Sendable () throws -> Void)? = nil,
        logger: Logger? = nil
    ) throws {
        self.spawner = try Startup.spawner(functions: functions, logger: logger, isolation: isolation, setup: setup)
        self.debug = debug
        self.vmIndex = spawner.nextVMIndex()
        self.persistentStorage = persistentStorage
        if (mirrorMap ?? [:]).isEmpty && startupDir == nil {
            self.storage = nil
            self.storageWarnings = []
            self.mirrorSnapshot = nil
        } else {
            let (request, warnings, snapshot) = try StorageRequest.makeSending(
                mirrorMap: mirrorMap,
                startupDir: startupDir,
                translateStartupDir: translateStartupDir,
                persistent: persistentStorage,
                vmIndex: vmIndex,
                mirrored: MirroredStorage(environment: ProcessInfo.processInfo.environment),
                missing: missingMirrorSources
            )
            self.storage = request
            self.storageWarnings = warnings
            self.mirrorSnapshot = snapshot
        }
        self.encodedSettings = try SpawnSettings(debug: debug, vmIndex: vmIndex, storage: storage).encoded()
        self.namesExperiment = false
        spawner.raiseLogLevel(to: Logger.Level(debug: debug))
        for warning in storageWarnings { spawner.logger.warning("\(warning)") }
    }

    /// The VM object `vm` whose spawn requests also name `experiment`, for a dispatch with an experiment:
    /// task processes then keep each task's log in the experiment's `tasks/` folder.
    init(_ vm: VM, experiment: ExperimentLocation) throws(VMError) {
        spawner = vm.spawner
        debug = vm.debug
        vmIndex = vm.vmIndex
        persistentStorage = vm.persistentStorage
        storageWarnings = vm.storageWarnings
        storage = vm.storage
        mirrorSnapshot = vm.mirrorSnapshot
        encodedSettings = try SpawnSettings(
            debug: vm.debug,
            vmIndex: vm.vmIndex,
            storage: vm.storage,
            experiment: experiment
        ).encoded()
        namesExperiment = true
    }

    private func requireLive(_ operation: String) throws(VMError) {
        if spawner.isFinalized {
            throw VMError(.finalized, "\(operation) was called after the VM was finalized")
        }
    }

    // MARK: - Queries

    /// Whether ``finalize(timeout:)`` has been called.
    public var isFinalized: Bool { spawner.isFinalized }

    /// Whether the program runs under an MPI launcher, with workers possible.
    public var isDistributed: Bool { spawner.usesMPI }

    /// The hosts of the VM, in the order of their first slot (the spawner's host first).
    public func hosts() -> [HostID] { spawner.withBook { $0.hosts } }

    /// The number of slots (MPI ranks), the spawner's included.
    public func slots() -> Int { spawner.withBook { $0.count } }

    /// The number of worker slots with no task running.
    public func freeSlots() -> Int { spawner.withBook { $0.freeSlots().count } }

    /// The free worker slots (ranks).
    public func freeSlotsSet() -> Set<Int> { Set(spawner.withBook { $0.freeSlots() }) }

    /// The hosts that have at least one free slot.
    public func hostsWithFreeSlots() -> [HostID] {
        spawner.withBook { book in
            let free = Set(book.freeSlots().compactMap { book.host(of: $0) })
            return book.hosts.filter { free.contains($0) }
        }
    }

    /// The task running this code: the spawner's own task, `0:0`.
    public func taskID() -> TaskID { .spawner }

    /// The parent of the spawner's task: none.
    public func parentTaskID() -> TaskID? { nil }

    /// The host of `task` (the spawner's host when nil), or nil when no such slot exists.
    public func hostID(_ task: TaskID? = nil) -> HostID? {
        spawner.withBook { $0.host(of: task?.slot ?? 0) }
    }

    /// A table of hosts, slots per host and what runs in each slot.
    public func formatSpawnerConfig() -> String { spawner.withBook { $0.formatted() } }

    // MARK: - Spawning

    /// Spawns `function` with `args` in free slots.
    ///
    /// - Parameters:
    ///   - function: the registered function to run.
    ///   - args: its arguments, encoded once and sent to every task.
    ///   - count: how many tasks; nil fills every free slot. Must be positive.
    ///   - targets: only spawn on these hosts; every host must be one of ``hosts()``, and the list must not
    ///     be empty (nil means any host).
    ///   - sendBack: whether each task sends a ``TaskResult`` before its ``Message/taskExit``.
    ///   - timeout: seconds each task may run; one that runs longer is killed, with every process it started,
    ///     and reported as failed with a ``TaskTermination`` (`.timedOut`). nil or `.infinity`: no limit.
    ///     Needs ``Isolation/process``.
    /// - Returns: the tasks actually spawned: fewer than `count` (or none) when fewer slots are free.
    @discardableResult
    public func spawnFunction<Arguments, Result>(
        _ function: RemoteFunction<Arguments, Result>,
        args: Arguments,
        count: Int? = nil,
        targets: [HostID]? = nil,
        sendBack: Bool = true,
        timeout: Double? = nil
    ) throws -> [TaskID] {
        try spawn(
            named: function.name,
            args: args,
            count: count,
            targets: targets,
            sendBack: sendBack,
            timeout: timeout
        )
    }

    /// Spawns a ``Spawnable`` value: the instance, with its state, runs on each worker.
    @discardableResult
    public func spawnFunction<S: Spawnable>(
        _ instance: S,
        count: Int? = nil,
        targets: [HostID]? = nil,
        sendBack: Bool = true,
        timeout: Double? = nil
    ) throws -> [TaskID] {
        try spawn(
            named: S.functionName,
            args: instance,
            count: count,
            targets: targets,
            sendBack: sendBack,
            timeout: timeout
        )
    }

    /// Spawns a function by its registered name. A name no worker knows gives a failed ``TaskResult``.
    @discardableResult
    public func spawnFunction<Arguments: Encodable>(
        named name: String,
        args: Arguments,
        count: Int? = nil,
        targets: [HostID]? = nil,
        sendBack: Bool = true,
        timeout: Double? = nil
    ) throws -> [TaskID] {
        try spawn(named: name, args: args, count: count, targets: targets, sendBack: sendBack, timeout: timeout)
    }

    /// Spawns as the public forms do; `avoiding` names slots to use only when no other is free (a retry).
    func spawn<Arguments: Encodable>(
        named name: String,
        args: Arguments,
        count: Int?,
        targets: [HostID]?,
        sendBack: Bool,
        timeout: Double?,
        avoiding: Set<Int> = []
    ) throws(VMError) -> [TaskID] {
        try requireLive("spawnFunction")
        let limit = try VM.checkTimeout(timeout, for: "spawnFunction('\(name)')")
        if let count, count <= 0 {
            throw VMError(.invalidSpawn, "spawnFunction('\(name)'): count must be positive or nil, not \(count)")
        }
        var targetSet: Set<HostID>? = nil
        if let targets {
            let known = hosts()
            guard !targets.isEmpty else {
                throw VMError(
                    .invalidSpawn,
                    "spawnFunction('\(name)'): targets is empty, so no slot could ever be used; pass nil for any host, or some of \(HostID.quotedList(known))"
                )
            }
            let unknown = targets.filter { !known.contains($0) }
            guard unknown.isEmpty else {
                throw VMError(
                    .invalidSpawn,
                    "spawnFunction('\(name)'): unknown host(s) \(HostID.quotedList(unknown)); the VM's hosts are \(HostID.quotedList(known))"
                )
            }
            targetSet = Set(targets)
        }
        guard spawner.transport != nil else { return [] }
        let arguments: [UInt8]
        do {
            arguments = try BinaryEncoder.encode(args)
        } catch {
            throw VMError(
                .encoding,
                "spawnFunction('\(name)'): cannot encode arguments of type \(_typeName(Arguments.self, qualified: true)): \(error)",
                underlying: error
            )
        }
        let placed = try spawner.spawn(
            function: name,
            arguments: arguments,
            settings: encodedSettings,
            count: count,
            targets: targetSet,
            sendBack: sendBack,
            timeout: limit,
            avoiding: avoiding,
            mirror: mirrorSnapshot,
            // A task of an experiment keeps its log through its worker rank.
            direct: !namesExperiment,
            describeArguments: { VMEvent.describe(args) }
        )
        if debug > 0 {
            for task in placed {
                let route = spawner.wentDirectly(task) ? " (directly to its task process)" : ""
                spawner.logger.debug(
                    "spawned task \(task) running '\(name)' on \(hostID(task).map(\.name) ?? "?")\(route)"
                )
            }
        }
        return placed
    }

    /// A task time limit in seconds for the wire: 0 for none.
    static func checkTimeout(_ timeout: Double?, for operation: @autoclosure () -> String) throws(VMError) -> Double {
        guard let timeout, !timeout.isInfinite else { return 0 }
        guard timeout.isFinite, timeout > 0 else {
            throw VMError(
                .invalidArgument,
                "\(operation()): a task timeout must be a positive number of seconds, not \(timeout)"
            )
        }
        return timeout
    }

    /// Ends a running task: its task process is killed, with every process it started, and the task is
    /// reported as failed with a ``TaskTermination`` (`.killed`), then its exit; the slot serves again.
    ///
    /// Returns at once; the result and exit arrive as messages. Throws a ``VMError`` when `task` is not
    /// running (`.invalidDestination`) or the VM runs tasks in-process (`.configuration`), where a task
    /// cannot be ended without ending its worker.
    public func kill(_ task: TaskID) throws {
        try requireLive("kill")
        guard spawner.isolation.kind == .process else {
            throw VMError(
                .configuration,
                "cannot kill task \(task): the VM runs tasks in-process (isolation: .inProcess)"
            )
        }
        guard task.slot > 0, task.number > 0, spawner.withBook({ $0.isRunning(task) }) else {
            throw VMError(.invalidDestination, "cannot kill task \(task): it is not running")
        }
        try spawner.kill(task)
    }

    // MARK: - Messages

    /// Sends a value to a task (or to the spawner itself, `0:0`).
    ///
    /// Throws a ``VMError``: `.invalidArgument` for a negative task ID, `.invalidDestination` when `task`
    /// names no slot of the VM or does not run in its slot (any more, or yet).
    public func sendMessage<T: Encodable>(to task: TaskID, _ value: T) throws {
        try requireLive("sendMessage")
        guard task.slot >= 0, task.number >= 0 else {
            throw VMError(.invalidArgument, "cannot send to task \(task): task IDs are never negative")
        }
        // One look at the book: whether the task runs, and the known-tasks mark the message carries.
        let (refusal, knownTasks): (String?, Int) = spawner.withBook { book in
            if task == .spawner || (task.slot > 0 && task.slot < book.count && book.isRunning(task)) {
                return (nil, book.nextTaskNumber)
            }
            return (Self.refusal(of: task, in: book), book.nextTaskNumber)
        }
        if let refusal {
            throw VMError(.invalidDestination, "cannot send to task \(task): it is not running (\(refusal))")
        }
        try spawner.send(value, to: task, knownTasks: knownTasks)
    }

    /// Why `task` cannot be sent to, as `sendMessage` says it.
    private static func refusal(of task: TaskID, in book: SlotBook) -> String {
        guard task.slot < book.count else { return "the VM has slots 0...\(book.count - 1)" }
        if task.slot == 0 { return "slot 0 only runs the spawner, 0:0" }
        let future =
            task.number >= book.nextTaskNumber ? "; no task number \(task.number) has been spawned yet" : ""
        if let other = book.task(in: task.slot) {
            return "slot \(task.slot) now runs task \(task.slot):\(other)\(future)"
        }
        return "slot \(task.slot) is free\(future)"
    }

    /// The next message for the spawner: `timeout` nil, negative or `.infinity` waits for ever, 0 polls,
    /// positive waits that many seconds; nil when nothing came in time. NaN is refused with a ``VMError``.
    ///
    /// A ``Message/taskExit`` has already freed its slot when it is returned, and a task's
    /// ``Message/taskResult(_:)`` always comes before its exit.
    public func receiveMessage(timeout: Double? = nil) throws -> (source: TaskID, message: Message)? {
        try requireLive("receiveMessage")
        let deadline = try Deadline(timeout: timeout, for: "receiveMessage")
        guard spawner.transport != nil else {
            if let remaining = deadline.remaining, remaining > 0 { Thread.sleep(forTimeInterval: remaining) }
            return nil
        }
        guard let event = try spawner.nextEvent(until: deadline, where: { _, _ in true }) else { return nil }
        switch event {
        case .result(let source, let result): return (source, .taskResult(result))
        case .exit(let source): return (source, .taskExit)
        case .user(let source, let message): return (source, .user(message))
        }
    }

    /// Whether a message for the spawner is waiting (never blocks).
    public func checkForIncoming() throws -> Bool {
        try requireLive("checkForIncoming")
        return try spawner.hasEvent { _, _ in true }
    }

    // MARK: - Local storage

    /// Removes this user's local storage (the per-user folder under `PARALLEL_LOCAL_STORAGE`) on the spawner
    /// and on every worker, and nothing else: no symlink is followed out of it.
    ///
    /// Workers busy with a task clear after it; a worker that does not answer within `timeout` seconds (nil
    /// or `.infinity`: wait for ever) is listed with a failure. Returns one report per host, the spawner's
    /// host first.
    public func clearLocalStorage(timeout: Double? = 30) throws -> [ClearReport] {
        try requireLive("clearLocalStorage")
        let deadline = try Deadline(timeout: timeout, for: "clearLocalStorage")
        let reports = try spawner.clearLocalStorage(
            until: deadline,
            timeoutText: timeout.map { "\($0) s" } ?? "ever"
        )
        // One report per host: ranks on one host usually share the folder, and the first one empties it.
        var merged: [ClearReport] = []
        for report in reports {
            if let index = merged.firstIndex(where: { $0.host == report.host }) {
                merged[index].removed += report.removed.filter { !merged[index].removed.contains($0) }
                merged[index].failures.merge(report.failures) { first, _ in first }
            } else {
                merged.append(report)
            }
        }
        // A worker's persistent folder is in use until that worker clears it: a rank that cleared first
        // reported it as in use, but if another rank of the host removed it, it is not a failure.
        for index in merged.indices {
            let removed = Set(merged[index].removed)
            merged[index].failures = merged[index].failures.filter { !removed.contains($0.key) }
        }
        return merged
    }

    // MARK: - Interrupts

    /// Registers `handler` to run when the run is interrupted: SIGINT or SIGTERM to this program, to mpirun
    /// or to the whole process group (Ctrl-C, `kill`, Slurm's scancel and walltime).
    ///
    /// The VM then runs the handlers, in the order they were registered, on a thread of its own (keep them
    /// short: save what you have); then every worker ends its task process and everything it started and
    /// removes its task folder, and the program exits with status 128 plus the signal number (130 or 143).
    /// A second signal ends the program at once.
    public func onInterrupt(_ handler: @escaping @Sendable (Interrupt) -> Void) {
        spawner.onInterrupt(handler)
    }

    // MARK: - Finalize

    /// Asks every worker to leave its loop, then finalizes MPI. Every process then exits 0. Calling it again
    /// does nothing.
    ///
    /// - Parameter timeout: nil waits for tasks still running to finish. With a timeout, tasks still running
    ///   after that many seconds are killed (with process isolation) so that the run ends; their results are
    ///   dropped.
    /// - Returns: the tasks that were killed.
    @discardableResult
    public func finalize(timeout: Double? = nil) throws -> [TaskID] {
        let deadline = try Deadline(timeout: timeout, for: "finalize")
        return try spawner.finalize(until: deadline)
    }
}
