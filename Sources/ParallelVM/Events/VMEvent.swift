public import Foundation

/// A change in the VM's status, as ``VM/events`` delivers it: hosts, slots, tasks, task storage and
/// dispatch progress (discoro's status messages).
///
/// Events are numbered in the order the spawner saw them; a task's events always come in the order
/// ``Kind-swift.enum/taskSpawned(_:)``, then one outcome (``Kind-swift.enum/taskResult(task:function:)``,
/// ``Kind-swift.enum/taskFailed(task:function:message:)``, ``Kind-swift.enum/taskCrashed(task:function:detail:)``,
/// ``Kind-swift.enum/taskTimedOut(task:function:seconds:)`` or ``Kind-swift.enum/taskKilled(task:function:)``)
/// when the task sends its result back, then ``Kind-swift.enum/taskExit(task:)`` and
/// ``Kind-swift.enum/slotFree(slot:host:)``.
public struct VMEvent: Sendable, Hashable, CustomStringConvertible {
    /// What happened.
    public enum Kind: Sendable, Hashable {
        /// A host is part of the VM, with these slots (ranks). Every new subscription starts with one per host.
        case hostUp(host: HostID, slots: [Int])
        /// Every worker rank of a host was lost.
        case hostDown(host: HostID)
        /// A task was placed in a slot.
        case slotBusy(slot: Int, host: HostID, task: TaskID)
        /// A slot has no task any more.
        case slotFree(slot: Int, host: HostID)
        /// A task was spawned.
        case taskSpawned(TaskStart)
        /// A task's function returned a value.
        case taskResult(task: TaskID, function: String)
        /// A task's function threw, or the VM could not run it; `message` is the error's text.
        case taskFailed(task: TaskID, function: String, message: String)
        /// A task's process died (a trap, a signal, an exit, no memory) or its worker rank was lost.
        case taskCrashed(task: TaskID, function: String, detail: String)
        /// A task ran past its timeout and was killed.
        case taskTimedOut(task: TaskID, function: String, seconds: Double)
        /// A task was killed by ``VM/kill(_:)``, a cancelled dispatch or `finalize(timeout:)`.
        case taskKilled(task: TaskID, function: String)
        /// A task has ended; its slot frees next.
        case taskExit(task: TaskID)
        /// A worker mirrored files into a task's local storage.
        case storagePrepared(task: TaskID, host: HostID, files: Int, bytes: Int, seconds: Double)
        /// The spawner sent files from its unshared folders (`PARALLEL_UNSHARED_STORAGE`) to a host's mirror
        /// cache: `files` contents of `bytes` bytes that the host lacked (0 when it had them all), out of a tree
        /// of `treeFiles` files. Once per worker rank and VM object, before its first task of that VM object.
        case mirrorSent(host: HostID, files: Int, bytes: Int, treeFiles: Int, seconds: Double)
        /// A dispatch finished another job: `done` of `total` (nil when the job list has no known length).
        case dispatchProgress(done: Int, total: Int?, finished: Bool)
    }

    /// What a newly spawned task runs.
    public struct TaskStart: Sendable, Hashable {
        /// The task.
        public let task: TaskID
        /// The registered name of its function.
        public let function: String
        /// The host it runs on.
        public let host: HostID
        /// A short description of its arguments (`String(describing:)`, at most 200 characters).
        public let arguments: String
    }

    /// The event's number: 1 for the first event of the process, one more for each after it.
    public let sequence: Int
    /// When the spawner saw it.
    public let time: Date
    /// What happened.
    public let kind: Kind

    public var description: String { "#\(sequence) \(kind)" }
}

extension VMEvent.Kind {
    /// The outcome event of a task's result.
    init(result: TaskResult, task: TaskID) {
        if result.success {
            self = .taskResult(task: task, function: result.function)
            return
        }
        guard let error = result.error else {
            self = .taskFailed(task: task, function: result.function, message: "failed")
            return
        }
        guard let termination = error.underlying as? TaskTermination else {
            self = .taskFailed(task: task, function: result.function, message: "\(error.typeName): \(error.message)")
            return
        }
        switch termination.reason {
        case .killed: self = .taskKilled(task: task, function: result.function)
        case .timedOut(let seconds): self = .taskTimedOut(task: task, function: result.function, seconds: seconds)
        case .signal, .exited, .outOfMemory, .workerLost:
            self = .taskCrashed(task: task, function: result.function, detail: termination.detail)
        }
    }
}

extension VMEvent {
    /// The arguments of a task as ``TaskStart/arguments`` shows them: at most 200 characters.
    static func describe(_ value: some Any) -> String {
        let text = String(describing: value)
        return text.count <= 200 ? text : String(text.prefix(199)) + "…"
    }
}
