/// The internal function that runs a chunk of jobs in one task, so that tiny jobs do not each pay for a
/// spawn request, a result and an exit message (mpi4py.futures' `chunksize`).
///
/// Every rank registers it (`Startup`) over the same function table it
/// serves, so a chunk can run any registered function. Each item's outcome is reported on its own, so
/// one failing job does not fail its chunk.
enum ChunkRunner {
    /// The registered name; user functions cannot take it without a type clash.
    static let name = "ParallelVM.chunk"

    /// One job of a chunk: the function's name and its encoded arguments.
    struct Item: Codable, Sendable {
        var function: String
        var arguments: [UInt8]
    }

    /// One job's outcome: the result's type name and encoded value, or the error's type name and text.
    struct Outcome: Codable, Sendable {
        var success: Bool
        /// The result type on success, the error type on failure.
        var typeName: String
        var value: [UInt8]
        var message: String
    }

    /// The chunk function over `table`, the functions this rank knows.
    static func function(over table: FunctionTable) -> AnyRemoteFunction {
        RemoteFunction<[Item], [Outcome]>(name) { items, task in
            items.map { item in
                guard let function = table[item.function] else {
                    return Outcome(
                        success: false,
                        typeName: "ParallelVM.VMError",
                        value: [],
                        message:
                            "function '\(item.function)' is not registered on rank \(task.taskID.slot) (host \(task.host))"
                    )
                }
                do {
                    let (type, bytes) = try function.call(item.arguments, task)
                    return Outcome(success: true, typeName: type, value: bytes, message: "")
                } catch {
                    let failure = TaskFailure(error)
                    return Outcome(success: false, typeName: failure.typeName, value: [], message: failure.message)
                }
            }
        }.erased
    }
}
