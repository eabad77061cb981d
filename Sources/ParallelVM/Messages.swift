import ParallelVMCodec

/// A message delivered by ``VM/receiveMessage(timeout:)`` or ``TaskContext/receiveMessage(timeout:)``.
public enum Message: Sendable {
    /// The outcome of a spawned function (sent when the task was spawned with `sendBack`). Always arrives
    /// before the same task's ``taskExit``.
    case taskResult(TaskResult)
    /// The task has ended; on the spawner its slot is already free when this is returned.
    case taskExit
    /// Hosts joined the VM.
    case hostAdd([HostID])
    /// Hosts left the VM.
    case hostDelete([HostID])
    /// A value sent with `sendMessage(to:_:)`.
    case user(UserMessage)
}

/// The outcome of a spawned function.
public struct TaskResult: Sendable, CustomStringConvertible {
    /// Whether the function returned normally.
    public let success: Bool
    /// The registered name of the function.
    public let function: String
    /// The fully qualified type name of the value, when `success` is true.
    public let valueType: String
    let valueBytes: [UInt8]
    /// What went wrong, when `success` is false.
    public let error: RemoteError?

    init(function: String, valueType: String, valueBytes: [UInt8]) {
        self.success = true
        self.function = function
        self.valueType = valueType
        self.valueBytes = valueBytes
        self.error = nil
    }

    init(function: String, error: RemoteError) {
        self.success = false
        self.function = function
        self.valueType = ""
        self.valueBytes = []
        self.error = error
    }

    /// Decodes the returned value. Throws the ``RemoteError`` when the function failed, and a
    /// ``VMError`` naming both types when `T` is not the type the function returned.
    public func value<T: Decodable>(as type: T.Type = T.self) throws -> T {
        if let error { throw error }
        let expected = TypeNames.qualified(T.self)
        guard expected == valueType else {
            throw VMError(.typeMismatch, "the result of '\(function)' is a \(valueType), not a \(expected)")
        }
        do {
            return try BinaryDecoder.decode(T.self, from: valueBytes)
        } catch {
            throw VMError(.encoding, "the result of '\(function)' could not be decoded as \(expected): \(error)")
        }
    }

    public var description: String {
        if let error { return "TaskResult(failure: \(error))" }
        return "TaskResult(success: \(valueType), \(valueBytes.count) bytes)"
    }
}

/// An error thrown by a function on a worker, or by the VM while running it, as reported to the spawner.
public struct RemoteError: Error, Sendable, CustomStringConvertible {
    /// The registered name of the function.
    public let function: String
    /// The fully qualified type name of the error that was thrown.
    public let typeName: String
    /// The error's text (`String(describing:)`).
    public let message: String
    /// The task that ran the function.
    public let task: TaskID
    /// The host the task ran on.
    public let host: HostID
    /// The error itself, for the error types the VM carries between processes unchanged: a `StorageError`
    /// (local storage could not be prepared on the worker) or a ``VMError``; nil for other types.
    public let underlying: (any Error & Sendable)?

    init(
        function: String,
        typeName: String,
        message: String,
        task: TaskID,
        host: HostID,
        underlying: (any Error & Sendable)? = nil
    ) {
        self.function = function
        self.typeName = typeName
        self.message = message
        self.task = task
        self.host = host
        self.underlying = underlying
    }

    public var description: String { "\(function) failed in task \(task) on \(host): \(typeName): \(message)" }
}

/// A user value in flight: decode it with ``decode(as:)``.
public struct UserMessage: Sendable, CustomStringConvertible {
    /// The fully qualified type name of the value that was sent.
    public let typeName: String
    let bytes: [UInt8]
    let raw: Bool

    init(typeName: String, bytes: [UInt8], raw: Bool) {
        self.typeName = typeName
        self.bytes = bytes
        self.raw = raw
    }

    /// Decodes the value; throws a ``VMError`` naming both types when `T` is not the type that was sent.
    public func decode<T: Decodable>(as type: T.Type = T.self) throws -> T {
        // A byte array travels as it is: no decoding, no type names to compare, and no dynamic cast either.
        if raw, T.self == [UInt8].self { return unsafeBitCast(bytes, to: T.self) }
        let expected = TypeNames.qualified(T.self)
        guard expected == typeName else {
            throw VMError(.typeMismatch, "the message holds a \(typeName), not a \(expected)")
        }
        do {
            return try BinaryDecoder.decode(T.self, from: bytes)
        } catch {
            throw VMError(.encoding, "the message could not be decoded as \(expected): \(error)")
        }
    }

    /// Whether the value is of type `T`.
    public func holds<T>(_ type: T.Type) -> Bool {
        if raw { return T.self == [UInt8].self }
        return typeName == TypeNames.qualified(T.self)
    }

    public var description: String { "UserMessage(\(typeName), \(bytes.count) bytes)" }
}

/// How a task ended without returning: its task process died, ran over its time, was killed, or its
/// worker was lost. It is the ``RemoteError/underlying`` error of such a task's failed ``TaskResult``.
public struct TaskTermination: Error, Sendable, Codable, Hashable, CustomStringConvertible {
    /// What ended the task.
    public enum Reason: Sendable, Codable, Hashable {
        /// The task process was killed by a signal it did not get from the VM (a trap, a bad access, abort).
        case signal(name: String, number: Int32)
        /// The task process exited (`exit(3)`, or `exit(0)` before reporting a result).
        case exited(status: Int32)
        /// The task process ran out of memory.
        case outOfMemory
        /// The task ran longer than its timeout and was killed.
        case timedOut(seconds: Double)
        /// ``VM/kill(_:)``, a cancelled dispatch or `finalize(timeout:)` ended it.
        case killed
        /// The worker rank running it was lost (its process died, or its host left the network).
        case workerLost
    }

    /// What ended the task.
    public let reason: Reason
    /// The task.
    public let task: TaskID
    /// The registered name of the function it ran.
    public let function: String
    /// The host it ran on.
    public let host: HostID
    /// How its process ended, in words ("was killed by signal SIGSEGV (11)").
    public let detail: String
    /// The last lines the task wrote to standard error.
    public let standardError: [String]

    init(reason: Reason, task: TaskID, function: String, host: HostID, detail: String, standardError: [String]) {
        self.reason = reason
        self.task = task
        self.function = function
        self.host = host
        self.detail = detail
        self.standardError = standardError
    }

    public var description: String {
        var text = "task \(task) running '\(function)' on \(host) \(detail)"
        if !standardError.isEmpty {
            text += "; its last lines on standard error:\n" + standardError.map { "  " + $0 }.joined(separator: "\n")
        }
        return text
    }
}
