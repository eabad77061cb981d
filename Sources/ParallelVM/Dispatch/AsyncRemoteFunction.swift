import Foundation
import Synchronization

/// A registered function whose body is `async`: a worker runs it to completion like any other function,
/// and the dispatcher, running jobs in this process, runs several of them concurrently.
///
/// ```swift
/// let fetch = AsyncRemoteFunction("fetch") { (url: String, task: TaskContext) in try await download(url) }
/// let vm = try VM(functions: [fetch])
/// let pages = try await vm.dispatch(urls.map { Job(fetch, args: $0) }, remote: false)
/// ```
public struct AsyncRemoteFunction<Arguments: Codable & Sendable, Result: Codable & Sendable>: Sendable,
    RemoteFunctionConvertible
{
    /// The name the function is registered under on every rank.
    public let name: String
    let body: @Sendable (Arguments, TaskContext) async throws -> Result

    /// Creates a function with a stable name and an async body.
    public init(_ name: String, _ body: @escaping @Sendable (Arguments, TaskContext) async throws -> Result) {
        self.name = name
        self.body = body
    }

    /// The same function with a body that waits for the async one: what a worker runs, and what
    /// ``VM/spawnFunction(_:args:count:targets:sendBack:timeout:)`` takes.
    public var blocking: RemoteFunction<Arguments, Result> {
        let body = self.body
        return RemoteFunction(name) { arguments, task in
            try waitForAsync { try await body(arguments, task) }
        }
    }

    /// The type-erased form the registry keeps.
    public var erased: AnyRemoteFunction { blocking.erased }
}

/// Runs `operation` as a task and blocks the calling thread until it ends.
///
/// Only for threads of our own (a worker's main thread, the dispatcher's thread): blocking a thread of
/// Swift's cooperative pool this way could starve the very task it waits for.
func waitForAsync<T: Sendable>(_ operation: @escaping @Sendable () async throws -> T) throws -> T {
    let box = OutcomeBox<T>()
    let done = DispatchSemaphore(value: 0)
    Task {
        let outcome: Result<T, any Error>
        do {
            outcome = .success(try await operation())
        } catch {
            outcome = .failure(error)
        }
        box.set(outcome)
        done.signal()
    }
    done.wait()
    return try box.get()
}

/// Hands one outcome from a task to the thread waiting for it.
private final class OutcomeBox<T: Sendable>: Sendable {
    private let outcome = Mutex<Result<T, any Error>?>(nil)

    func set(_ value: Result<T, any Error>) { outcome.withLock { $0 = value } }

    func get() throws -> T { try outcome.withLock { $0! }.get() }
}
