import Foundation
import Logging
import MPI
import ParallelVMCodec
import ParallelVMStorage

/// The process-wide part of the VM: MPI, the transport, the function table and, on the spawner, the slot book.
///
/// It starts once per process, when the first ``VM`` is created. Several VM objects (with different
/// settings) share it, as several PyOPUS VM objects share one MPI world.
final class Runtime: @unchecked Sendable {
    // Invariant for @unchecked Sendable: the `let` properties never change after init; `book`,
    // `finalized` and `logger` are guarded by `lock`; `currentTask`, `lastServedTask`, `workerDebug`,
    // `workerStorage`, `lastSettings`, `doorbellArmed` and `finalizeRequested` are only touched by
    // the worker's main thread while it serves a task.
    nonisolated(unsafe) private static var shared: Runtime?
    private static let startLock = NSLock()

    /// nil when the program runs without mpirun: one process, no workers.
    let transport: Transport?
    let rank: Int
    let size: Int
    let host: HostID
    let functions: FunctionTable
    /// This process's doorbell: workers wait on it when idle, the spawner uses it to ring theirs.
    let doorbell: Doorbell?
    /// On the spawner: whether every worker shares its host and has a doorbell, so all of them can wake it.
    let everyWorkerRingsTheSpawner: Bool

    private let lock = NSLock()
    private var book: SlotBook
    private var finalized = false
    private var vmCount = 0
    private var spawnerLogger: Logger

    var currentTask: Int?
    var lastServedTask = 0
    var finalizeRequested = false
    var workerDebug = 0
    var workerStorage = WorkerStorageState()
    var lastSettings: (bytes: [UInt8], settings: SpawnSettings)?
    /// Whether this idle worker waits on its doorbell (it shares the spawner's host).
    var doorbellArmed = false

    var isSpawner: Bool { rank == 0 }

    private init(
        transport: Transport?,
        host: HostID,
        functions: FunctionTable,
        book: SlotBook,
        logger: Logger,
        doorbell: Doorbell? = nil
    ) {
        self.doorbell = doorbell
        self.everyWorkerRingsTheSpawner =
            doorbell != nil && book.count > 1
            && book.slots.dropFirst().allSatisfy { $0.host == host && $0.doorbell != 0 }
        self.transport = transport
        self.rank = transport?.rank ?? 0
        self.size = transport?.size ?? 1
        self.host = host
        self.functions = functions
        self.book = book
        self.spawnerLogger = logger
    }

    /// The runtime of this process, started on first use. On a worker this call never returns: the
    /// process serves spawn requests until the spawner finalizes, then exits 0.
    static func start(functions: [any RemoteFunctionConvertible], logger: Logger?) throws(VMError) -> Runtime {
        startLock.lock()
        defer { startLock.unlock() }
        if let shared {
            guard shared.isSpawner else {
                throw VMError(
                    .notSpawner,
                    "a VM cannot be created inside a task on rank \(shared.rank); use the TaskContext the function receives"
                )
            }
            guard !shared.finalized else { throw VMError(.finalized, "the VM runtime has been finalized") }
            for function in functions where shared.functions[function.erased.name] == nil {
                throw VMError(
                    .unknownFunction,
                    "function '\(function.erased.name)' must be registered with the first VM, before the workers start"
                )
            }
            return shared
        }
        var table = FunctionTable()
        for function in functions { try table.register(function.erased) }
        try table.register(ChunkRunner.function(over: table))
        let environment = ProcessInfo.processInfo.environment

        _ = removeStaleLocalStorageHere()  // local storage: remove folders of dead runs on this host

        let policy = try WaitPolicy.fromEnvironment(environment)
        let logger = logger ?? Logger(label: "ParallelVM") { StreamLogHandler.standardOutput(label: $0) }
        let pid = getpid()
        let cpus = ProcessInfo.processInfo.activeProcessorCount

        guard Runtime.launchedByMPI(environment) else {
            let host = HostID(ProcessInfo.processInfo.hostName)
            let runtime = Runtime(
                transport: nil,
                host: host,
                functions: table,
                book: SlotBook(slots: [.init(host: host, cpus: cpus, pid: pid, task: 0)]),
                logger: logger
            )
            shared = runtime
            return runtime
        }

        tuneAllocatorForLargeMessages(environment)
        let transport: Transport
        let host: HostID
        do {
            let granted = try MPIEnvironment.initialize(threadLevel: .serialized)
            if granted < .serialized {
                logger.warning("MPI granted thread level \(granted), less than the serialized level the VM asks for")
            }
            transport = Transport(communicator: try Communicator.world().duplicate(), waitPolicy: policy)
            host = HostID(try MPIEnvironment.processorName())
        } catch {
            throw VMError(.mpi, "starting MPI failed: \(error)")
        }

        let doorbell = policy.spin.isInfinite ? nil : Doorbell()
        if transport.rank != 0 {
            var hello = WireWriter(kind: .hello, sourceTask: 0, destinationTask: 0)
            hello.append(host.name)
            hello.append(Int32(cpus))
            hello.append(Int32(pid))
            hello.append(doorbell?.token ?? 0)
            do {
                try transport.send(hello.bytes, to: 0)
            } catch {
                FileHandle.standardError.write(Data("ParallelVM rank \(transport.rank): \(error)\n".utf8))
                MPIEnvironment.abort(code: 1)
            }
            let runtime = Runtime(
                transport: transport,
                host: host,
                functions: table,
                book: SlotBook(slots: []),
                logger: logger,
                doorbell: doorbell
            )
            shared = runtime
            startLock.unlock()
            runtime.serve()
        }

        var slots = [SlotBook.Slot](
            repeating: .init(host: host, cpus: cpus, pid: pid, task: nil),
            count: transport.size
        )
        for _ in 1..<transport.size {
            guard let envelope = try transport.receive(timeout: nil, matching: { $0.kind == .hello }) else { continue }
            var reader = envelope.reader
            let workerHost = HostID(try reader.readString())
            let workerCPUs = Int(try reader.read(Int32.self))
            let workerPID = try reader.read(Int32.self)
            let token = try reader.read(UInt64.self)
            slots[envelope.sourceRank] = .init(
                host: workerHost,
                cpus: workerCPUs,
                pid: workerPID,
                task: nil,
                doorbell: token
            )
        }
        // Tell every worker where the spawner runs: those on its host can wait on their doorbells.
        var welcome = WireWriter(kind: .welcome, sourceTask: 0, destinationTask: 0)
        welcome.append(host.name)
        welcome.append(Int32(pid))
        welcome.append(doorbell?.token ?? 0)
        for worker in 1..<transport.size { try transport.send(welcome.bytes, to: worker) }
        let runtime = Runtime(
            transport: transport,
            host: host,
            functions: table,
            book: SlotBook(slots: slots),
            logger: logger,
            doorbell: doorbell
        )
        shared = runtime
        // A program that forgets finalize() must not leave its workers waiting and mpirun hanging.
        atexit {
            Runtime.shared?.finalizeAtExit()
        }
        return runtime
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

    /// Whether a launcher (mpirun, srun with PMIx/PMI) started this process.
    static func launchedByMPI(_ environment: [String: String]) -> Bool {
        ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"].contains { environment[$0] != nil }
    }

    func nextVMIndex() -> Int {
        lock.withLock {
            vmCount += 1
            return vmCount
        }
    }

    // MARK: - Logging

    func raiseSpawnerLogLevel(to level: Logger.Level) {
        lock.withLock {
            if level < spawnerLogger.logLevel { spawnerLogger.logLevel = level }
        }
    }

    var logger: Logger { lock.withLock { spawnerLogger } }

    /// Prints a diagnostic forwarded by a worker, tagged with its host and task.
    func printForwardedLog(_ envelope: Envelope) {
        var reader = envelope.reader
        guard let levelByte = try? reader.read(UInt8.self), let text = try? reader.readString() else { return }
        let level =
            Logger.Level.allCases.indices.contains(Int(levelByte)) ? Logger.Level.allCases[Int(levelByte)] : .info
        let host = lock.withLock { book.host(of: envelope.sourceRank) }?.name ?? "rank \(envelope.sourceRank)"
        logger.log(level: level, "\(text)", metadata: ["host": "\(host)", "task": "\(envelope.sourceID)"])
    }

    // MARK: - Spawner book

    func withBook<T>(_ body: (inout SlotBook) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&book)
    }

    var isFinalized: Bool { lock.withLock { finalized } }

    // MARK: - Sending user values (spawner and tasks alike)

    func sendUser<T: Encodable>(_ value: T, from sourceTask: Int, to destination: TaskID) throws(VMError) {
        guard let transport else {
            throw VMError(
                .invalidDestination,
                "task \(destination) does not exist: the VM runs without workers (not under mpirun)"
            )
        }
        let raw = T.self == [UInt8].self
        let payload: [UInt8]
        if raw {
            payload = unsafeBitCast(value, to: [UInt8].self)
        } else {
            do {
                payload = try BinaryEncoder.encode(value)
            } catch {
                throw VMError(
                    .encoding,
                    "cannot encode a message of type \(_typeName(T.self, qualified: true)) for task \(destination): \(error)"
                )
            }
        }
        var frame = WireWriter(
            kind: .user,
            sourceTask: sourceTask,
            destinationTask: destination.number,
            capacity: 64 + payload.count
        )
        frame.append(_typeName(T.self, qualified: true))
        frame.append(raw)
        try transport.sendFrame(&frame, payload: payload, to: destination.slot)
    }

    /// Frees the slot of the task whose exit `envelope` is, as of the moment the worker sent it.
    func taskExited(_ envelope: Envelope) {
        withBook { _ = $0.release(envelope.sourceID, at: envelope.sentAt ?? monotonicSeconds()) }
    }

    // MARK: - Doorbells

    /// Rings the doorbell of the worker in `slot` just before a message to it, when it shares this host and
    /// may be asleep: it has been free for longer than half the spin time (`always`: whatever its state).
    /// A woken worker spins again for the spin time, so the message that follows finds it awake.
    func ringDoorbell(of slot: Int, always: Bool = false) {
        guard let doorbell, let transport else { return }
        let target: (pid: Int32, token: UInt64)? = lock.withLock {
            guard book.slots.indices.contains(slot) else { return nil }
            let entry = book.slots[slot]
            guard entry.doorbell != 0, entry.host == host else { return nil }
            guard always || monotonicSeconds() - entry.freedAt > transport.waitPolicy.spin / 2 else { return nil }
            return (entry.pid, entry.doorbell)
        }
        if let target { doorbell.ring(pid: target.pid, token: target.token) }
    }

    /// How the spawner waits once its spin time is over: on its doorbell when every worker shares its
    /// host (they ring it), otherwise by sleeping between polls (nil).
    var spawnerIdleWait: (() -> Bool)? {
        guard let doorbell, everyWorkerRingsTheSpawner else { return nil }
        return { doorbell.wait(milliseconds: 10) }
    }

    // MARK: - Finalize

    /// Tells every worker to leave its loop, then finalizes MPI. Safe to call more than once.
    func finalize() throws(VMError) {
        let first = lock.withLock {
            defer { finalized = true }
            return !finalized
        }
        guard first, let transport else { return }
        var failures: [String] = []
        for worker in 1..<size {
            let frame = WireWriter(kind: .finalize, sourceTask: 0, destinationTask: 0)
            do {
                ringDoorbell(of: worker, always: true)
                try transport.send(frame.bytes, to: worker)
            } catch {
                failures.append("rank \(worker): \(error)")
            }
        }
        // Print what workers said last, so their diagnostics are not lost.
        while let envelope = try? transport.receive(timeout: 0, matching: { $0.kind == .log }) {
            printForwardedLog(envelope)
        }
        do {
            try MPIEnvironment.finalize()
        } catch {
            failures.append("\(error)")
        }
        if !failures.isEmpty {
            throw VMError(.mpi, "finalizing the VM failed: \(failures.joined(separator: "; "))")
        }
    }

    private func finalizeAtExit() {
        guard isSpawner, !isFinalized else { return }
        do {
            try finalize()
        } catch {
            FileHandle.standardError.write(Data("ParallelVM: \(error)\n".utf8))
        }
    }
}

extension Transport {
    /// Sends a frame with its payload: appended to the frame when small, as a message of its own when large.
    func sendFrame(_ frame: inout WireWriter, payload: [UInt8], to rank: Int) throws(VMError) {
        if payload.count >= Wire.separatePayloadThreshold {
            frame.insertFlags(Wire.flagSeparatePayload)
            try send(frame.bytes, payload: payload, to: rank)
        } else {
            frame.bytes.append(contentsOf: payload)
            try send(frame.bytes, to: rank)
        }
    }
}

extension Envelope {
    /// The payload of a frame: the separately sent message, or the frame's bytes from `reader`'s offset.
    func payload(after reader: inout WireReader) -> [UInt8] {
        payload ?? reader.readRest()
    }
}
