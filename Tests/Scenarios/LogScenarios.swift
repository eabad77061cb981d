import Foundation
import ParallelVM

/// A log handler of the program's own, bootstrapped by `SCENARIO_LOG_CAPTURE=1`: it prints each line as
/// `log=LEVEL|MESSAGE|key=value,key=value` (metadata sorted by key) on standard output, so a test can see
/// that the VM's lines reach the program's handler and carry their metadata as metadata.
struct CapturingLogHandler: LogHandler {
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        let pairs = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        report("log", "\(event.level)|\(event.message)|\(pairs)")
    }
}

/// Logs one line with metadata, as a simulation step would.
let pointLogger = RemoteFunction("log.point") { (point: Int, task: TaskContext) -> Int in
    task.logger.warning("evaluated", metadata: ["point": "\(point)"])
    return point
}

let logFunctions: [any RemoteFunctionConvertible] = [pointLogger]

let logScenarios: [String: Scenario] = [
    // A worker's task and a job run in the spawner's process both log with metadata.
    "log-capture": { vm, _ in
        if vm.slots() > 1 {
            let tasks = try vm.spawnFunction(pointLogger, args: 7, count: 1)
            _ = try collect(vm, tasks)
            report("task", tasks[0])
        }
        let local = try waitForValue { try await vm.dispatch([Job(pointLogger, args: 8)], remote: false) }
        report("localValue", local.first?.value ?? -1)
    }
]

/// Runs an async body from the scenario's synchronous code and returns its value.
func waitForValue<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let box = ValueBox<T>()
    try waitFor { box.set(try await body()) }
    return box.get()!
}

final class ValueBox<T: Sendable>: @unchecked Sendable {
    // Invariant for @unchecked Sendable: `value` is only touched while holding `lock`.
    private let lock = NSLock()
    private var value: T?
    func set(_ newValue: T) { lock.withLock { value = newValue } }
    func get() -> T? { lock.withLock { value } }
}
