internal import CMPI

/// An MPI routine returned an error code.
///
/// The MPI layer sets `MPI_ERRORS_RETURN` on every communicator it uses, so failures come back as codes
/// and are thrown as this error instead of aborting the job.
public struct MPIError: Error, CustomStringConvertible, Sendable {
    /// The MPI error code (`MPI_SUCCESS` is never thrown).
    public let code: Int32
    /// The name of the MPI routine that failed, e.g. `MPI_Isend`.
    public let routine: String
    /// The text `MPI_Error_string` gives for the code, or a description of a misuse caught before calling MPI.
    public let message: String

    /// Creates an error for a misuse detected by this layer before any MPI routine ran.
    public init(routine: String, message: String) {
        self.code = -1
        self.routine = routine
        self.message = message
    }

    init(code: Int32, routine: String) {
        self.code = code
        self.routine = routine
        self.message = MPIError.errorString(code)
    }

    public var description: String { "\(routine) failed: \(message) (code \(code))" }

    /// `MPI_Error_string`: the library's text for an error code.
    static func errorString(_ code: Int32) -> String {
        var buffer = [CChar](repeating: 0, count: Int(MPI_MAX_ERROR_STRING) + 1)
        var length: Int32 = 0
        let rc = MPI_Error_string(code, &buffer, &length)
        guard rc == MPI_SUCCESS else { return "unknown MPI error" }
        let bytes = buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Turns an MPI return code into a thrown error; every MPI call in this module goes through it.
@inline(__always)
func check(_ code: Int32, _ routine: @autoclosure () -> String) throws(MPIError) {
    if code != MPI_SUCCESS {
        throw MPIError(code: code, routine: routine())
    }
}
