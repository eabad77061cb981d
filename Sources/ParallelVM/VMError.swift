/// An error raised by the virtual machine, with the context needed to act on it and, when another error
/// caused it, that error.
public struct VMError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is.
    public enum Code: String, Sendable, Codable {
        /// A spawner-only operation was attempted on a worker or inside a task.
        case notSpawner
        /// A spawn request was malformed (count, targets).
        case invalidSpawn
        /// An argument is out of its domain (a NaN timeout, a malformed task ID).
        case invalidArgument
        /// A message was addressed to a task that does not exist or no longer runs.
        case invalidDestination
        /// A function name is not registered.
        case unknownFunction
        /// A function name is registered twice with different types.
        case duplicateFunction
        /// A value could not be encoded or decoded.
        case encoding
        /// A received value was decoded as the wrong type.
        case typeMismatch
        /// The MPI layer failed.
        case mpi
        /// A task ended without reporting its result.
        case taskLost
        /// A farm (or dispatch) was used after it was closed.
        case farmClosed
        /// The VM has been finalized, or is finalizing.
        case finalized
        /// A configuration value is wrong (environment variable, setting).
        case configuration
        /// A wait ran out of time.
        case timeout
        /// Files could not be mirrored to a host (its mirror cache could not take them, or they changed).
        case storage
    }

    /// What kind of failure this is.
    public let code: Code
    /// A sentence that says what went wrong and names the function, type, task, path or rank involved.
    public let message: String
    /// The error that caused this one, when there is one (an `MPIError`, a `StorageError`, a codec error).
    public let underlying: (any Error & Sendable)?

    /// Creates an error, optionally with the error that caused it.
    public init(_ code: Code, _ message: String, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String { message }
}
