import Foundation
import Logging
import MPI
import Synchronization

/// Starts this process's part of the VM once, when the first ``VM`` is created, and remembers its role.
///
/// Every rank runs the same program up to that point. Rank 0 (or the only process, without mpirun) becomes
/// the ``Spawner`` and returns to the program; every other rank becomes a ``Worker`` and never returns.
enum Startup {
    private enum Role: Sendable {
        case spawner(Spawner)
        case worker(Worker)
    }
    private static let role = Mutex<Role?>(nil)

    /// The spawner of this process, started on first use. On a worker rank this call never returns: the
    /// process serves spawn requests until the spawner finalizes, then exits 0.
    static func spawner(functions: [any RemoteFunctionConvertible], logger: Logger?) throws(VMError) -> Spawner {
        let started = try role.withLock { (role) throws(VMError) -> Role in
            if let role { return role }
            let started = try start(functions: functions, logger: logger)
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
            worker.serve()
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

    private static func start(functions: [any RemoteFunctionConvertible], logger: Logger?) throws(VMError) -> Role {
        var table = FunctionTable()
        for function in functions { try table.register(function.erased) }
        try table.register(ChunkRunner.function(over: table))
        let environment = ProcessInfo.processInfo.environment
        // Folders of dead runs on this host go as the VM starts, on every rank (their owners are provably gone).
        _ = Worker.removeStaleLocalStorageHere()
        let policy = try WaitPolicy.fromEnvironment(environment)
        // A library's logger: the program's LoggingSystem.bootstrap decides where the lines go.
        let logger = logger ?? Logger(label: "ParallelVM")

        guard launchedByMPI(environment) else {
            if let error = Launcher.srunWithoutPMI(environment, worldSize: 1) { throw error }
            return .spawner(Spawner.alone(functions: table, logger: logger))
        }

        tuneAllocatorForLargeMessages(environment)
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
        if let error = Launcher.srunWithoutPMI(environment, worldSize: communicator.size) { throw error }
        let doorbell = policy.spin.isInfinite ? nil : Doorbell()
        guard communicator.rank.rawValue == 0 else {
            let transport = Transport(communicator: communicator, waitPolicy: policy, tracksSpawnerArrivals: true)
            return .worker(Worker(transport: transport, host: host, functions: table, doorbell: doorbell))
        }
        let transport = Transport(communicator: communicator, waitPolicy: policy)
        let spawner = try Spawner.handshake(
            transport: transport,
            host: host,
            functions: table,
            logger: logger,
            doorbell: doorbell
        )
        // A program that forgets finalize() must not leave its workers waiting and mpirun hanging.
        atexit {
            Startup.runningSpawner?.finalizeAtExit()
        }
        return .spawner(spawner)
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
