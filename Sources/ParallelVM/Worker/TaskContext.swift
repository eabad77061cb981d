import Foundation
public import Logging

/// What a running task reaches through its ``TaskContext``: its worker, or, for a job the dispatcher runs
/// in the spawner's process, the spawner.
protocol TaskHost: Sendable {
    func log(_ record: LogRecord, from task: TaskID)
    func send<T: Encodable>(_ value: T, from task: TaskID, to destination: TaskID) throws(VMError)
    func receive(for task: TaskID, until deadline: Deadline) throws(VMError) -> (source: TaskID, message: Message)?
    func hasIncoming(for task: TaskID) throws(VMError) -> Bool
}

/// What a spawned function gets: its identity, a logger whose output reaches the spawner's log, and
/// messaging with the spawner and other tasks.
public final class TaskContext: Sendable {
    private let host_: any TaskHost
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
    /// spawner tagged with this task's host and ID, with their metadata.
    public let logger: Logger

    init(host: any TaskHost, taskID: TaskID, hostID: HostID, debug: Int, vmIndex: Int) {
        self.host_ = host
        self.taskID = taskID
        self.parentTaskID = .spawner
        self.host = hostID
        self.debug = debug
        self.vmIndex = vmIndex
        var logger = Logger(label: "ParallelVM.task") { _ in TaskLogHandler(host: host, task: taskID) }
        logger.logLevel = Logger.Level(debug: debug)
        self.logger = logger
    }

    /// Sends a value to another task or to the spawner (`TaskID.spawner`). Messages from one task to another
    /// arrive in the order they were sent; a message for a task that no longer runs is dropped by its slot.
    ///
    /// Throws a ``VMError`` (`.invalidDestination`) for a task that does not exist: slot 0 other than `0:0`,
    /// a slot the VM does not have, or a task number not spawned yet.
    public func sendMessage<T: Encodable>(to destination: TaskID, _ value: T) throws {
        guard destination.slot >= 0, destination.number >= 0 else {
            throw VMError(.invalidArgument, "cannot send to task \(destination): task IDs are never negative")
        }
        try host_.send(value, from: taskID, to: destination)
    }

    /// The next message for this task: `timeout` nil, negative or `.infinity` waits for ever, 0 polls,
    /// positive waits that many seconds; nil when nothing came in time. NaN is refused.
    public func receiveMessage(timeout: Double? = nil) throws -> (source: TaskID, message: Message)? {
        let deadline = try Deadline(timeout: timeout, for: "TaskContext.receiveMessage")
        return try host_.receive(for: taskID, until: deadline)
    }

    /// Whether a message for this task is waiting.
    public func checkForIncoming() throws -> Bool {
        try host_.hasIncoming(for: taskID)
    }
}

/// Sends a task's log lines to its host, which hands them to the spawner's log with their metadata.
struct TaskLogHandler: LogHandler {
    let host: any TaskHost
    let task: TaskID
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var flat: [String: String] = [:]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
            flat[key] = "\(value)"
        }
        host.log(LogRecord(level: event.level, text: "\(event.message)", metadata: flat), from: task)
    }
}

/// The host of a job the dispatcher runs in the spawner's own process: its log lines go to the spawner's
/// log, tagged like a worker's; it has no messages.
struct LocalTaskHost: TaskHost {
    let spawner: Spawner

    func log(_ record: LogRecord, from task: TaskID) {
        var metadata = Logger.Metadata()
        for (key, value) in record.metadata { metadata[key] = .string(value) }
        metadata["host"] = .string(spawner.host.name)
        metadata["task"] = .string(task.description)
        spawner.logger.log(level: record.level, "\(record.text)", metadata: metadata)
    }

    func send<T: Encodable>(_ value: T, from task: TaskID, to destination: TaskID) throws(VMError) {
        throw VMError(
            .invalidDestination,
            "a job running in the spawner's process cannot send messages (to \(destination))"
        )
    }

    func receive(for task: TaskID, until deadline: Deadline) throws(VMError) -> (source: TaskID, message: Message)? {
        if let remaining = deadline.remaining, remaining > 0 { Thread.sleep(forTimeInterval: remaining) }
        return nil
    }

    func hasIncoming(for task: TaskID) throws(VMError) -> Bool { false }
}
