internal import CMPI
import Glibc

/// Process-wide MPI state: initialisation, finalisation, clock, processor name, abort.
public enum MPIEnvironment {
    /// Initialises MPI with the requested thread support (`MPI_Init_thread`) and sets `MPI_ERRORS_RETURN`
    /// on the world communicator. Returns the level MPI granted.
    public static func initialize(threadLevel required: ThreadLevel) throws(MPIError) -> ThreadLevel {
        var provided: Int32 = 0
        try check(MPI_Init_thread(nil, nil, required.mpiValue, &provided), "MPI_Init_thread")
        try check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler")
        return ThreadLevel(mpi: provided)
    }

    /// Whether `MPI_Init` or `MPI_Init_thread` has been called (`MPI_Initialized`).
    public static var isInitialized: Bool {
        var flag: Int32 = 0
        MPI_Initialized(&flag)
        return flag != 0
    }

    /// Whether `MPI_Finalize` has been called (`MPI_Finalized`).
    public static var isFinalized: Bool {
        var flag: Int32 = 0
        MPI_Finalized(&flag)
        return flag != 0
    }

    /// Shuts MPI down (`MPI_Finalize`).
    public static func finalize() throws(MPIError) {
        try check(MPI_Finalize(), "MPI_Finalize")
    }

    /// Seconds since an arbitrary point in the past (`MPI_Wtime`).
    public static func wtime() -> Double { MPI_Wtime() }

    /// The name of the processor this process runs on (`MPI_Get_processor_name`).
    public static func processorName() throws(MPIError) -> String {
        var buffer = [CChar](repeating: 0, count: Int(MPI_MAX_PROCESSOR_NAME) + 1)
        var length: Int32 = 0
        try check(MPI_Get_processor_name(&buffer, &length), "MPI_Get_processor_name")
        return String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Terminates every process of the job (`MPI_Abort` on the world communicator).
    public static func abort(code: Int32) -> Never {
        MPI_Abort(MPI_COMM_WORLD, code)
        exit(code)
    }
}
