import ParallelVMCodec
import ParallelVMStorage

/// Worker to spawner: how a task ended. Either a result that also ends the task (one message where a
/// result and an exit would take two), or a bare exit for a task spawned without `sendBack`.
///
/// Result body: send time, function name, success flag, then the value's type name and bytes (appended,
/// or a payload message of their own when large), or a ``TaskFailure``.
/// Exit body: send time.
///
/// The send time is the worker's monotonic clock: the spawner's host shares that clock and uses it to tell
/// whether the worker may have gone to sleep since (see ``Spawner/ringDoorbell(of:always:)``).
enum TaskEnd {
    enum Outcome {
        case value(type: String, bytes: [UInt8])
        case failure(TaskFailure)
    }

    static func sendResult(
        task: Int,
        function: String,
        _ outcome: Outcome,
        leftProcesses: Bool = false,
        processEnds: Bool = false,
        over transport: any FrameLink
    ) throws(VMError) {
        var (frame, payload) = resultFrame(task: task, function: function, outcome)
        if leftProcesses { frame.insertFlags(Wire.flagLeftProcesses) }
        if processEnds { frame.insertFlags(Wire.flagProcessEnds) }
        try transport.sendFrame(&frame, payload: payload, to: 0)
    }

    /// A result frame, stamped now, and the value's bytes that travel as its payload.
    static func resultFrame(task: Int, function: String, _ outcome: Outcome) -> (WireWriter, payload: [UInt8]) {
        var frame = WireWriter(kind: .taskResult, flags: Wire.flagEndsTask, sourceTask: task, destinationTask: 0)
        frame.append(UInt64(0))
        frame.append(function)
        var payload: [UInt8] = []
        switch outcome {
        case .value(let type, let bytes):
            frame.append(true)
            frame.append(type)
            payload = bytes
        case .failure(let failure):
            frame.append(false)
            failure.write(to: &frame)
        }
        frame.stampTime(at: Wire.headerSize)
        return (frame, payload)
    }

    static func sendExit(task: Int, leftProcesses: Bool = false, over transport: any FrameLink) throws(VMError) {
        var frame = exitFrame(task: task)
        if leftProcesses { frame.insertFlags(Wire.flagLeftProcesses) }
        try transport.send(frame.bytes, to: 0)
    }

    /// An exit frame, stamped now.
    static func exitFrame(task: Int) -> WireWriter {
        var frame = WireWriter(kind: .taskExit, sourceTask: task, destinationTask: 0)
        frame.append(UInt64(0))
        frame.stampTime(at: Wire.headerSize)
        return frame
    }

    /// When the worker sent a result or exit frame.
    static func sentAt(_ envelope: Envelope) -> Double? {
        guard envelope.kind == .taskResult || envelope.kind == .taskExit else { return nil }
        var reader = envelope.reader
        return (try? reader.read(UInt64.self)).map(Double.init(bitPattern:))
    }

    /// Whether a result frame also says its task has ended.
    static func endsTask(_ envelope: Envelope) -> Bool {
        envelope.kind == .taskResult && envelope.flags & Wire.flagEndsTask != 0
    }

    /// Reads a result frame as ``sendResult(task:function:_:over:)`` wrote it.
    static func result(from envelope: Envelope, host: HostID) throws(VMError) -> TaskResult {
        var reader = envelope.reader
        _ = try reader.read(UInt64.self)
        let function = try reader.readString()
        if try reader.readBool() {
            let valueType = try reader.readString()
            return TaskResult(function: function, valueType: valueType, valueBytes: envelope.payload(after: &reader))
        }
        let failure = try TaskFailure(reading: &reader)
        return TaskResult(
            function: function,
            error: RemoteError(
                function: function,
                typeName: failure.typeName,
                message: failure.message,
                task: envelope.sourceID,
                host: host,
                underlying: failure.typedError
            )
        )
    }
}

/// Why a task failed, as the worker reports it: the error's type name and text and, for the error types
/// the VM knows (``VMError``, `StorageError`), the error itself, so that it reaches the spawner as the same type.
struct TaskFailure: Error, Sendable {
    var typeName: String
    var message: String
    var typedError: (any Error & Sendable)?

    init(typeName: String, message: String, typedError: (any Error & Sendable)? = nil) {
        self.typeName = typeName
        self.message = message
        self.typedError = typedError
    }

    /// The failure that `error`, thrown while running a task, stands for.
    init(_ error: any Error) {
        if let failure = error as? TaskFailure {
            self = failure
            return
        }
        self.typeName = _typeName(type(of: error), qualified: true)
        self.message = String(describing: error)
        switch error {
        case let storage as StorageError: typedError = storage
        case let vm as VMError: typedError = VMError(vm.code, vm.message)
        case let termination as TaskTermination: typedError = termination
        default: typedError = nil
        }
    }

    /// Tags for the typed error that may follow the text.
    private enum Typed: UInt8 {
        case none = 0
        case storage = 1
        case vm = 2
        case termination = 3
    }

    func write(to frame: inout WireWriter) {
        frame.append(typeName)
        frame.append(message)
        switch typedError {
        case let storage as StorageError:
            if let bytes = try? BinaryEncoder.encode(storage) {
                frame.append(Typed.storage.rawValue)
                frame.append(lengthPrefixed: bytes)
            } else {
                frame.append(Typed.none.rawValue)
            }
        case let vm as VMError:
            frame.append(Typed.vm.rawValue)
            frame.append(vm.code.rawValue)
            frame.append(vm.message)
        case let termination as TaskTermination:
            if let bytes = try? BinaryEncoder.encode(termination) {
                frame.append(Typed.termination.rawValue)
                frame.append(lengthPrefixed: bytes)
            } else {
                frame.append(Typed.none.rawValue)
            }
        default:
            frame.append(Typed.none.rawValue)
        }
    }

    init(reading reader: inout WireReader) throws(VMError) {
        typeName = try reader.readString()
        message = try reader.readString()
        switch Typed(rawValue: try reader.read(UInt8.self)) ?? .none {
        case .storage:
            let bytes = try reader.readLengthPrefixed()
            typedError = try? BinaryDecoder.decode(StorageError.self, from: bytes)
        case .vm:
            let code = try reader.readString()
            let text = try reader.readString()
            typedError = VMError.Code(rawValue: code).map { VMError($0, text) }
        case .termination:
            let bytes = try reader.readLengthPrefixed()
            typedError = try? BinaryDecoder.decode(TaskTermination.self, from: bytes)
        case .none:
            typedError = nil
        }
    }
}
