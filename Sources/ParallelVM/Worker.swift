import Foundation
public import Logging
import MPI
import ParallelVMCodec
import ParallelVMStorage

extension Runtime {
    /// The worker loop: serve spawn requests until the spawner finalizes, then finalize MPI and exit 0.
    func serve() -> Never {
        guard let transport else { exit(0) }
        while !finalizeRequested {
            let envelope: Envelope?
            do {
                // A user message for a task this slot has not started yet may overtake its spawn request (MPI
                // orders messages per sender only), so it stays queued until that task runs.
                let served = lastServedTask
                // An idle worker on the spawner's host blocks on its doorbell once the spin time is over. The
                // spawner rings it; the 10 ms limit only bounds the delay should a ring ever be missed.
                let idleWait: (() -> Bool)? =
                    if doorbellArmed, let doorbell { { doorbell.wait(milliseconds: 10) } } else { nil }
                envelope = try transport.receive(
                    timeout: nil,
                    matching: { $0.kind != .user || $0.destinationTask <= served },
                    idleWait: idleWait
                )
            } catch {
                FileHandle.standardError.write(Data("ParallelVM worker rank \(rank) on \(host): \(error)\n".utf8))
                MPIEnvironment.abort(code: 1)
            }
            guard let envelope else { continue }
            switch envelope.kind {
            case .spawn:
                runTask(envelope)
            case .finalize:
                finalizeRequested = true
            case .clearStorage:
                clearStorageOnWorker(envelope)
            case .welcome:
                var reader = envelope.reader
                guard let doorbell, let spawnerHost = try? reader.readString(), spawnerHost == host.name,
                    let spawnerPID = try? reader.read(Int32.self), let spawnerToken = try? reader.read(UInt64.self)
                else { continue }
                doorbellArmed = true
                if spawnerToken != 0 { transport.spawnerDoorbell = (doorbell, spawnerPID, spawnerToken) }
            case .user:
                forwardLog(
                    .debug,
                    "dropped a \(envelope.kind) message for task \(rank):\(envelope.destinationTask), which is not running"
                )
            case .hello, .taskResult, .taskExit, .log, .clearStorageReport:
                forwardLog(.warning, "dropped an unexpected \(envelope.kind) message from rank \(envelope.sourceRank)")
            }
        }
        do {
            try MPIEnvironment.finalize()
        } catch {
            FileHandle.standardError.write(Data("ParallelVM worker rank \(rank): \(error)\n".utf8))
            exit(1)
        }
        exit(0)
    }

    /// Runs one spawned function and reports its result and exit to the spawner.
    private func runTask(_ envelope: Envelope) {
        guard let transport else { return }
        let number = envelope.destinationTask
        let taskID = TaskID(slot: rank, number: number)
        var reader = envelope.reader
        let sendBack: Bool
        let name: String
        let settings: SpawnSettings
        let arguments: [UInt8]
        do {
            sendBack = try reader.readBool()
            name = try reader.readString()
            let settingsBytes = try reader.readLengthPrefixed()
            // Every spawn of one VM object carries the same settings: decode them once.
            if let cached = lastSettings, cached.bytes == settingsBytes {
                settings = cached.settings
            } else {
                settings = try BinaryDecoder.decode(SpawnSettings.self, from: settingsBytes)
                lastSettings = (settingsBytes, settings)
            }
            arguments = envelope.payload(after: &reader)
        } catch {
            forwardLog(.error, "task \(taskID): malformed spawn request: \(error)")
            sendExit(task: number, transport: transport)
            return
        }

        currentTask = number
        lastServedTask = number
        workerDebug = settings.debug
        // Messages queued for earlier task numbers were for tasks that ran elsewhere or have ended.
        transport.removePending { $0.kind == .user && $0.destinationTask < number }
        defer {
            currentTask = nil
        }
        let context = TaskContext(runtime: self, taskID: taskID, debug: settings.debug, vmIndex: settings.vmIndex)
        forwardLog(.debug, "task \(taskID) runs '\(name)'")

        var frame = WireWriter(kind: .taskResult, sourceTask: number, destinationTask: 0)
        frame.append(UInt64(0))  // the send time, stamped below
        frame.append(name)
        var payload: [UInt8] = []
        let started = monotonicSeconds()
        do {
            guard let function = functions[name] else {
                throw InvocationFailure(
                    typeName: "ParallelVM.VMError",
                    message:
                        "function '\(name)' is not registered on rank \(rank) (host \(host)); registered: \(functions.names.joined(separator: ", "))"
                )
            }
            let prepared = try settings.storage.map { (request) throws -> PreparedStorage in
                do {
                    return try prepareStorage(request, task: taskID)
                } catch {
                    throw InvocationFailure(
                        typeName: _typeName(type(of: error), qualified: true),
                        message: "preparing local storage for '\(name)' failed: \(error)"
                    )
                }
            }
            defer { if let prepared { cleanupStorage(prepared, task: taskID) } }
            payload = try function.invoke(arguments, context)
            frame.append(true)
            frame.append(function.resultType)
        } catch let failure as InvocationFailure {
            frame.append(false)
            frame.append(failure.typeName)
            frame.append(failure.message)
        } catch {
            frame.append(false)
            frame.append(_typeName(type(of: error), qualified: true))
            frame.append(String(describing: error))
        }
        forwardLog(
            .debug,
            "task \(taskID) finished '\(name)' in \(String(format: "%.6f", monotonicSeconds() - started)) s"
        )

        guard sendBack else {
            sendExit(task: number, transport: transport)
            return
        }
        // The result frame also says the task has ended: one message instead of a result and an exit.
        frame.insertFlags(Wire.flagEndsTask)
        frame.stampTime(at: Wire.headerSize)
        do {
            try transport.sendFrame(&frame, payload: payload, to: 0)
        } catch {
            forwardLog(.error, "task \(taskID) could not send its result: \(error)")
            sendExit(task: number, transport: transport)
        }
    }

    private func sendExit(task number: Int, transport: Transport) {
        var exitFrame = WireWriter(kind: .taskExit, sourceTask: number, destinationTask: 0)
        exitFrame.append(UInt64(0))
        exitFrame.stampTime(at: Wire.headerSize)
        do {
            try transport.send(exitFrame.bytes, to: 0)
        } catch {
            FileHandle.standardError.write(
                Data("ParallelVM worker rank \(rank): cannot report the exit of task \(number): \(error)\n".utf8)
            )
            MPIEnvironment.abort(code: 1)
        }
    }

    /// Sends a diagnostic to the spawner's log when the current debug level lets it through.
    /// `text` is only built when it is sent: every task logs at debug level, and formatting those lines
    /// cost more than the rest of a trivial task.
    func forwardLog(_ level: Logger.Level, _ text: @autoclosure () -> String, force: Bool = false) {
        guard let transport, force || level >= Logger.Level(debug: workerDebug) else { return }
        var frame = WireWriter(kind: .log, sourceTask: currentTask ?? 0, destinationTask: 0)
        frame.append(UInt8(Logger.Level.allCases.firstIndex(of: level) ?? 0))
        frame.append(text())
        try? transport.send(frame.bytes, to: 0)
    }

    /// What a task's receive returns: the next user message for it, skipping what is not its business.
    func taskReceive(task number: Int, timeout: Double?) throws(VMError) -> (source: TaskID, message: Message)? {
        guard let transport else { return nil }
        let deadline: Double? = if let timeout, timeout >= 0 { monotonicSeconds() + timeout } else { nil }
        while true {
            let remaining: Double? = deadline.map { max(0, $0 - monotonicSeconds()) }
            let matched = try transport.receive(timeout: remaining) { envelope in
                (envelope.kind == .user && envelope.destinationTask <= number) || envelope.kind == .finalize
            }
            guard let envelope = matched else { return nil }
            switch envelope.kind {
            case .finalize:
                finalizeRequested = true
                throw VMError(
                    .finalized,
                    "the spawner finalized the VM while task \(rank):\(number) was waiting for a message"
                )
            case .user where envelope.destinationTask == number:
                return (envelope.sourceID, .user(try UserMessage(envelope)))
            default:
                forwardLog(
                    .debug,
                    "dropped a message for task \(rank):\(envelope.destinationTask), which is not running"
                )
            }
        }
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

extension TaskResult {
    /// Reads a result frame as the worker wrote it: function name, success, then the value's type and
    /// bytes, or the error's type and text.
    init(_ envelope: Envelope, host: HostID) throws(VMError) {
        var reader = envelope.reader
        _ = try reader.read(UInt64.self)  // the send time
        let function = try reader.readString()
        if try reader.readBool() {
            let valueType = try reader.readString()
            self.init(function: function, valueType: valueType, valueBytes: envelope.payload(after: &reader))
        } else {
            let typeName = try reader.readString()
            let message = try reader.readString()
            let error = RemoteError(
                function: function,
                typeName: typeName,
                message: message,
                task: envelope.sourceID,
                host: host
            )
            self.init(function: function, error: error)
        }
    }
}

extension UserMessage {
    init(_ envelope: Envelope) throws(VMError) {
        var reader = envelope.reader
        self.typeName = try reader.readString()
        self.raw = try reader.readBool()
        self.bytes = envelope.payload(after: &reader)
    }
}

/// The settings of the VM object that spawned a task; they travel with every spawn request.
struct SpawnSettings: Codable, Sendable {
    var debug: Int
    var vmIndex: Int
    /// Local storage, mirroring and working folder; nil leaves the task where MPI started the worker.
    var storage: StorageRequest?
}

/// What a spawned function gets: its identity, a logger whose output reaches the spawner's log, and
/// messaging with the spawner and other tasks.
public final class TaskContext: Sendable {
    private let runtime: Runtime
    /// This task's ID.
    public let taskID: TaskID
    /// The task that spawned this one: the spawner, `0:0`.
    public let parentTaskID: TaskID
    /// The host this task runs on.
    public let host: HostID
    /// The debug level of the VM object that spawned the task.
    public let debug: Int
    /// The index of the VM object that spawned the task (1 for the first VM a program creates).
    public let vmIndex: Int
    /// A logger whose messages, at the levels the VM's debug setting lets through, are printed by the
    /// spawner tagged with this task's host and ID.
    public let logger: Logger

    init(runtime: Runtime, taskID: TaskID, debug: Int, vmIndex: Int) {
        self.runtime = runtime
        self.taskID = taskID
        self.parentTaskID = .spawner
        self.host = runtime.host
        self.debug = debug
        self.vmIndex = vmIndex
        var logger = Logger(label: "ParallelVM.task") { _ in ForwardingLogHandler(runtime: runtime) }
        logger.logLevel = Logger.Level(debug: debug)
        self.logger = logger
    }

    /// Sends a value to another task or to the spawner (`TaskID.spawner`). Messages from one task to another
    /// arrive in the order they were sent; a message for a task that no longer runs is dropped by its slot.
    public func sendMessage<T: Encodable>(to destination: TaskID, _ value: T) throws {
        guard destination.slot != 0 || destination.number == 0 else {
            throw VMError(.invalidDestination, "task \(destination) does not exist: slot 0 only runs the spawner, 0:0")
        }
        try runtime.sendUser(value, from: taskID.number, to: destination)
    }

    /// The next message for this task: `timeout` nil or negative waits for ever, 0 polls, positive waits that
    /// many seconds; nil when nothing came in time.
    public func receiveMessage(timeout: Double? = nil) throws -> (source: TaskID, message: Message)? {
        try runtime.taskReceive(task: taskID.number, timeout: timeout)
    }

    /// Whether a message for this task is waiting.
    public func checkForIncoming() throws -> Bool {
        guard let transport = runtime.transport else { return false }
        let number = taskID.number
        return try transport.hasIncoming { $0.kind == .user && $0.destinationTask == number }
    }
}

/// Sends a task's log messages to the spawner, which prints them with the task's host and ID.
struct ForwardingLogHandler: LogHandler {
    let runtime: Runtime
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var text = "\(event.message)"
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        if !merged.isEmpty {
            text += " " + merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        runtime.forwardLog(event.level, text, force: true)
    }
}
