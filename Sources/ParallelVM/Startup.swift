import CRunStatus
import Foundation
import Logging
import MPI
import ParallelVMProcess
import Synchronization

/// Starts this process's part of the VM once, when the first ``VM`` is created, and remembers its role.
///
/// Every rank runs the same program up to that point. Rank 0 (or the only process, without mpirun) becomes
/// the ``Spawner`` and returns to the program; every other rank becomes a ``Worker`` and never returns.
enum Startup {
    private enum Role: Sendable {
        case spawner(Spawner)
        /// A worker rank running tasks itself, or a task process.
        case worker(Worker)
        /// A worker rank supervising its task process.
        case supervisor(TaskSupervisor)
    }
    private static let role = Mutex<Role?>(nil)

    /// The spawner of this process, started on first use. On a worker rank this call never returns: the
    /// process serves spawn requests until the spawner finalizes, then exits 0.
    static func spawner(
        functions: [any RemoteFunctionConvertible],
        logger: Logger?,
        isolation: Isolation,
        setup: (@Sendable () throws -> Void)?
    ) throws(VMError) -> Spawner {
        let started = try role.withLock { (role) throws(VMError) -> Role in
            if let role { return role }
            let started = try start(functions: functions, logger: logger, isolation: isolation, setup: setup)
            role = started
            return started
        }
        switch started {
        case .worker(let worker):
            // A VM created inside a task finds the worker that runs the task already serving.
            guard !worker.isServing else {
                throw VMError(
                    .notSpawner,
                    "a VM cannot be created inside a task on rank \(worker.rank); use the TaskContext the function receives"
                )
            }
            worker.watchForTasksReenteringTheGlobalInitializer()
            worker.serve()
        case .supervisor(let supervisor):
            supervisor.serve()
        case .spawner(let spawner):
            guard !spawner.isFinalized else { throw VMError(.finalized, "the VM runtime has been finalized") }
            for function in functions where spawner.functions[function.erased.name] == nil {
                throw VMError(
                    .unknownFunction,
                    "function '\(function.erased.name)' must be registered with the first VM, before the workers start"
                )
            }
            return spawner
        }
    }

    private static func start(
        functions: [any RemoteFunctionConvertible],
        logger: Logger?,
        isolation: Isolation,
        setup: (@Sendable () throws -> Void)?
    ) throws(VMError) -> Role {
        var table = FunctionTable()
        for function in functions { try table.register(function.erased) }
        try table.register(OutputJob.function(over: table))
        try table.register(ChunkRunner.function(over: table))
        if let taskProcess = try taskProcess(functions: table, setup: setup) { return .worker(taskProcess) }
        let environment = ProcessInfo.processInfo.environment
        // Folders of dead runs on this host go as the VM starts, on every rank (their owners are provably gone).
        _ = Worker.removeStaleLocalStorageHere()
        let policy = try WaitPolicy.fromEnvironment(environment)
        // A library's logger: the program's LoggingSystem.bootstrap decides where the lines go.
        let logger = logger ?? Logger(label: "ParallelVM")

        let localSlots = try LocalSlots.count(from: environment)

        guard launchedByMPI(environment) else {
            if let error = Launcher.srunWithoutPMI(environment, worldSize: 1) { throw error }
            let spawner = try Spawner.alone(
                functions: table,
                logger: logger,
                isolation: isolation,
                localSlots: localSlots,
                waitPolicy: policy,
                usesMPI: false
            )
            if spawner.localSlots != nil { atexit { Startup.runningSpawner?.finalizeAtExit() } }
            Interrupts.install { spawner.interrupted($0) }
            return .spawner(spawner)
        }

        tuneAllocatorForLargeMessages(environment)
        StartWatchdog.start(
            limit: try StartWatchdog.limit(from: environment),
            waitingFor: "MPI did not start (a rank of this run may have ended before starting it)"
        )
        let communicator: Communicator
        let host: HostID
        do {
            let granted = try MPIEnvironment.initialize(threadLevel: .serialized)
            if granted < .serialized {
                logger.warning("MPI granted thread level \(granted), less than the serialized level the VM asks for")
            }
            communicator = try Communicator.world().duplicate()
            host = HostID(try MPIEnvironment.processorName())
        } catch {
            throw VMError(.mpi, "starting MPI failed: \(error)", underlying: error)
        }
        // MPI may have put its own fatal-signal handlers in front of the ones recording rank 0's end.
        parallelvm_run_status_rearm()
        if let error = Launcher.srunWithoutPMI(environment, worldSize: communicator.size) { throw error }
        if communicator.size == 1, isolation.kind == .process, localSlots > 0 {
            // `mpirun -n 1`: the same local slots as without mpirun; MPI is only initialised and finalized.
            let spawner = try Spawner.alone(
                functions: table,
                logger: logger,
                isolation: isolation,
                host: host,
                localSlots: localSlots,
                waitPolicy: policy,
                usesMPI: true
            )
            atexit { Startup.runningSpawner?.finalizeAtExit() }
            Interrupts.install { spawner.interrupted($0) }
            return .spawner(spawner)
        }
        let doorbell = policy.spin.isInfinite ? nil : Doorbell()
        guard communicator.rank.rawValue == 0 else {
            let transport = Transport(communicator: communicator, waitPolicy: policy, tracksSpawnerArrivals: true)
            switch isolation.kind {
            case .process:
                let supervisor = TaskSupervisor(
                    transport: transport,
                    host: host,
                    doorbell: doorbell,
                    memoryLimit: isolation.memoryLimit
                )
                Interrupts.install { supervisor.interruptedBySignal($0) }
                return .supervisor(supervisor)
            case .inProcess:
                // The task runs on the worker loop's thread and cannot be stopped: end the process.
                Interrupts.install { interrupt in
                    fflush(nil)
                    _exit(interrupt.exitStatus)
                }
                return .worker(
                    Worker(transport: transport, host: host, functions: table, doorbell: doorbell, setup: setup)
                )
            }
        }
        let transport = Transport(communicator: communicator, waitPolicy: policy)
        let spawner = try Spawner.handshake(
            transport: transport,
            host: host,
            functions: table,
            logger: logger,
            doorbell: doorbell,
            isolation: isolation
        )
        // A program that forgets finalize() must not leave its workers waiting and mpirun hanging.
        atexit {
            Startup.runningSpawner?.finalizeAtExit()
            Startup.runningSpawner?.endMpirunIfHostsLost()
        }
        Interrupts.install { spawner.interrupted($0) }
        spawner.startHeartbeats()
        spawner.openDirectRoutes()
        return .spawner(spawner)
    }

    /// The worker of a task process, when this process was started as one by its worker rank.
    private static func taskProcess(
        functions: FunctionTable,
        setup: (@Sendable () throws -> Void)?
    ) throws(VMError) -> Worker? {
        let channel: MessageChannel?
        do {
            channel = try ChildProcess.childDidStart(channelVariable: TaskSupervisor.channelVariable)
        } catch {
            throw VMError(.configuration, "this task process cannot start: \(error)", underlying: error)
        }
        guard let channel else { return nil }
        let environment = ProcessInfo.processInfo.environment
        guard let rank = environment[TaskSupervisor.rankVariable].flatMap(Int.init),
            let size = environment[TaskSupervisor.sizeVariable].flatMap(Int.init),
            let host = environment[TaskSupervisor.hostVariable]
        else {
            throw VMError(.configuration, "this task process was started without its rank, size and host")
        }
        let policy = (try? WaitPolicy.fromEnvironment(environment)) ?? .adaptive
        var direct: DirectSegment?
        var doorbell: Doorbell?
        if let text = environment[TaskSupervisor.directVariable], let fd = Int32(text), let bell = Doorbell() {
            unsetenv(TaskSupervisor.directVariable)
            direct = try? DirectSegment.inherited(fd)
            // What a task that came directly detaches is adopted here, to be ended as the task ends.
            if direct != nil { try? ChildProcess.enableSubreaper() }
            direct?.publishBell(pid: getpid(), token: bell.token)
            doorbell = bell
        }
        return Worker(
            transport: ChannelLink(
                channel: channel,
                rank: rank,
                size: size,
                waitPolicy: policy,
                direct: direct,
                doorbell: doorbell
            ),
            host: HostID(host),
            functions: functions,
            doorbell: nil,
            inTaskProcess: true,
            setup: setup
        )
    }

    private static var runningSpawner: Spawner? {
        role.withLock { role in
            if case .spawner(let spawner) = role { return spawner }
            return nil
        }
    }

    /// Whether a launcher (mpirun, srun with PMIx/PMI) started this process.
    static func launchedByMPI(_ environment: [String: String]) -> Bool {
        ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"].contains { environment[$0] != nil }
    }

    /// Keeps large freed blocks in the heap instead of returning them to the kernel.
    ///
    /// Every large message is received into a fresh array. With glibc's defaults each block above 128 KiB is
    /// a new mmap whose pages the kernel must zero and map on first touch, which costs more than the copy
    /// itself and halved bandwidth at 1 MB and more. With these settings the next message reuses warm pages.
    /// `PARALLELVM_MALLOC=default` leaves glibc's settings alone.
    private static func tuneAllocatorForLargeMessages(_ environment: [String: String]) {
        guard environment["PARALLELVM_MALLOC"] != "default" else { return }
        // <malloc.h> is not part of Swift's Glibc module, so mallopt is looked up at run time; the option
        // numbers are glibc's M_TRIM_THRESHOLD (-1), M_TOP_PAD (-2) and M_MMAP_THRESHOLD (-3).
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }
        let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
        _ = mallopt(-3, 512 << 20)
        _ = mallopt(-1, 1 << 30)
        _ = mallopt(-2, 64 << 20)
    }
}
