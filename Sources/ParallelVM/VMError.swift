/// An error raised by the virtual machine, with the context needed to act on it.
public struct VMError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is.
    public enum Code: String, Sendable {
        /// A spawner-only operation was attempted on a worker.
        case notSpawner
        /// A spawn request was malformed (count, targets).
        case invalidSpawn
        /// A message was addressed to a task that does not exist or no longer runs.
        case invalidDestination
        /// A function name is not registered, or registered twice with different types.
        case unknownFunction
        /// A value could not be encoded or decoded.
        case encoding
        /// A received value was decoded as the wrong type.
        case typeMismatch
        /// The MPI layer failed.
        case mpi
        /// The VM has been finalized, or is finalizing.
        case finalized
        /// A configuration value is wrong (environment variable, setting).
        case configuration
        /// A wait ran out of time.
        case timeout
    }

    /// What kind of failure this is.
    public let code: Code
    /// A sentence that says what went wrong and names the function, type, task, path or rank involved.
    public let message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
