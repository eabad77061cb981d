/// Where a worker runs the code of its tasks.
///
/// With ``process`` (the default) each worker rank starts a task process, a copy of the program that runs
/// main up to the VM's creation and then serves the rank's tasks, and keeps it for the next task. A task
/// that traps, crashes, exits, runs out of memory or overruns its timeout ends only its task process: the
/// rank reports the task as failed with a ``TaskTermination`` and starts a fresh task process, and the run
/// goes on. ``VM/kill(_:)`` and timeouts need it.
///
/// With ``inProcess`` tasks run in the worker rank itself, as in PyOPUS: a little faster for tiny tasks,
/// but a task that crashes ends the whole run, a task that never returns cannot be killed, and what a task
/// leaves behind (its working folder, child processes, globals) stays with the rank. Use it only for small
/// trusted functions.
///
/// Every rank must create its first VM with the same isolation.
public struct Isolation: Sendable, Hashable, CustomStringConvertible {
    enum Kind: Sendable, Hashable {
        case process
        case inProcess
    }

    let kind: Kind
    /// The address-space limit of each task process in bytes, if any.
    public let memoryLimit: Int?

    /// Tasks run in supervised task processes.
    public static let process = Isolation(kind: .process, memoryLimit: nil)

    /// Tasks run in supervised task processes whose address space is limited to `memoryLimit` bytes, so that
    /// a runaway allocation fails in the task (reported as out of memory) instead of calling the host's
    /// out-of-memory killer. Swift reserves address space generously: allow a few hundred MiB above what
    /// the task needs.
    public static func process(memoryLimit: Int) -> Isolation { Isolation(kind: .process, memoryLimit: memoryLimit) }

    /// Tasks run in the worker rank itself.
    public static let inProcess = Isolation(kind: .inProcess, memoryLimit: nil)

    public var description: String {
        switch kind {
        case .process: memoryLimit.map { "process (memory limit \($0) bytes)" } ?? "process"
        case .inProcess: "inProcess"
        }
    }
}
