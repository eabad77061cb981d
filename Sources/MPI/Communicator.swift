internal import CMPI

/// A group of processes that exchange messages (`MPI_Comm`).
///
/// Every message is a run of bytes (`MPI_BYTE`): the layers above frame and encode their own data.
public final class Communicator: @unchecked Sendable {
    // The handle never changes after init; MPI itself makes concurrent calls on one communicator safe when it
    // was initialised with MPI_THREAD_MULTIPLE, and callers that got less serialise their calls.
    let handle: MPI_Comm
    private let owned: Bool

    /// This process's rank in the communicator (`MPI_Comm_rank`).
    public let rank: Rank
    /// The number of processes in the communicator (`MPI_Comm_size`).
    public let size: Int

    private init(handle: MPI_Comm, owned: Bool) throws(MPIError) {
        self.handle = handle
        self.owned = owned
        var value: Int32 = 0
        try check(MPI_Comm_rank(handle, &value), "MPI_Comm_rank")
        self.rank = Rank(value)
        try check(MPI_Comm_size(handle, &value), "MPI_Comm_size")
        self.size = Int(value)
    }

    /// The world communicator (`MPI_COMM_WORLD`); MPI must be initialised.
    public static func world() throws(MPIError) -> Communicator {
        try Communicator(handle: MPI_COMM_WORLD, owned: false)
    }

    /// A new communicator with the same group and a separate message space (`MPI_Comm_dup`), returning errors.
    public func duplicate() throws(MPIError) -> Communicator {
        var copy: MPI_Comm? = MPI_COMM_NULL
        try check(MPI_Comm_dup(handle, &copy), "MPI_Comm_dup")
        guard let copy else { throw MPIError(routine: "MPI_Comm_dup", message: "returned a null communicator") }
        try check(MPI_Comm_set_errhandler(copy, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler")
        return try Communicator(handle: copy, owned: true)
    }

    /// Releases a duplicated communicator (`MPI_Comm_free`); the world communicator is left alone.
    public func free() throws(MPIError) {
        guard owned, !MPIEnvironment.isFinalized else { return }
        var copy: MPI_Comm? = handle
        try check(MPI_Comm_free(&copy), "MPI_Comm_free")
    }

    private func validate(_ peer: Rank, _ routine: String) throws(MPIError) {
        guard peer.rawValue >= 0, Int(peer.rawValue) < size else {
            throw MPIError(routine: routine, message: "rank \(peer) is outside the communicator (size \(size))")
        }
    }

    /// Sends bytes and returns once the buffer may be reused (`MPI_Send`).
    public func send(_ bytes: UnsafeRawBufferPointer, to peer: Rank, tag: Tag) throws(MPIError) {
        try validate(peer, "MPI_Send")
        try check(
            MPI_Send(bytes.baseAddress, Int32(bytes.count), MPI_BYTE, peer.rawValue, tag.rawValue, handle),
            "MPI_Send"
        )
    }

    /// Starts a send and returns at once (`MPI_Isend`). `bytes` must stay valid until the request completes.
    public func startSend(_ bytes: UnsafeRawBufferPointer, to peer: Rank, tag: Tag) throws(MPIError) -> SendRequest {
        try validate(peer, "MPI_Isend")
        guard bytes.count <= Int(Int32.max) else {
            throw MPIError(
                routine: "MPI_Isend",
                message: "message of \(bytes.count) bytes exceeds the 2 GiB MPI count limit"
            )
        }
        var request: MPI_Request? = MPI_REQUEST_NULL
        try check(
            MPI_Isend(bytes.baseAddress, Int32(bytes.count), MPI_BYTE, peer.rawValue, tag.rawValue, handle, &request),
            "MPI_Isend"
        )
        return SendRequest(handle: request)
    }

    /// Waits for a message and claims it, so no other receive can take it (`MPI_Mprobe`).
    public func matchedProbe(from source: Rank = .any, tag: Tag = .any) throws(MPIError) -> MatchedMessage {
        var message: MPI_Message? = MPI_MESSAGE_NULL
        var status = MPI_Status()
        try check(MPI_Mprobe(source.rawValue, tag.rawValue, handle, &message, &status), "MPI_Mprobe")
        return try MatchedMessage(handle: message, status: &status)
    }

    /// Claims a waiting message if there is one, without blocking (`MPI_Improbe`).
    public func matchedProbeIfAvailable(from source: Rank = .any, tag: Tag = .any) throws(MPIError) -> MatchedMessage? {
        var flag: Int32 = 0
        var message: MPI_Message? = MPI_MESSAGE_NULL
        var status = MPI_Status()
        try check(MPI_Improbe(source.rawValue, tag.rawValue, handle, &flag, &message, &status), "MPI_Improbe")
        guard flag != 0 else { return nil }
        return try MatchedMessage(handle: message, status: &status)
    }

    /// Whether a message is waiting, without claiming it (`MPI_Iprobe`).
    public func hasIncoming(from source: Rank = .any, tag: Tag = .any) throws(MPIError) -> Bool {
        var flag: Int32 = 0
        try check(MPI_Iprobe(source.rawValue, tag.rawValue, handle, &flag, MPI_STATUS_IGNORE), "MPI_Iprobe")
        return flag != 0
    }
}

/// A message claimed by a matched probe; it must be received exactly once.
public struct MatchedMessage: ~Copyable {
    private var handle: MPI_Message?
    /// The rank that sent it.
    public let source: Rank
    /// Its tag.
    public let tag: Tag
    /// Its length in bytes (`MPI_Get_count` with `MPI_BYTE`).
    public let count: Int

    init(handle: MPI_Message?, status: inout MPI_Status) throws(MPIError) {
        self.handle = handle
        self.source = Rank(status.MPI_SOURCE)
        self.tag = Tag(status.MPI_TAG)
        var count: Int32 = 0
        try check(MPI_Get_count(&status, MPI_BYTE, &count), "MPI_Get_count")
        self.count = Int(count)
    }

    /// Receives the message into `buffer`, which must hold at least `count` bytes (`MPI_Mrecv`).
    public consuming func receive(into buffer: UnsafeMutableRawBufferPointer) throws(MPIError) {
        guard buffer.count >= count else {
            throw MPIError(
                routine: "MPI_Mrecv",
                message: "buffer of \(buffer.count) bytes is smaller than the \(count)-byte message"
            )
        }
        var message = handle
        try check(MPI_Mrecv(buffer.baseAddress, Int32(count), MPI_BYTE, &message, MPI_STATUS_IGNORE), "MPI_Mrecv")
    }

    /// Receives the message into a new array of exactly `count` bytes (`MPI_Mrecv`).
    public consuming func receive() throws(MPIError) -> [UInt8] {
        let count = self.count
        var message = handle
        var failure: Int32 = MPI_SUCCESS
        // A small message is received on the stack and copied into its array: making an array from a
        // buffer of bytes is specialised in the standard library, while `init(unsafeUninitializedCapacity:)`
        // looks up the array's storage type at run time, which costs more than copying a few kilobytes.
        if count <= 4096 {
            let bytes = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: Swift.max(count, 1)) { scratch in
                failure = MPI_Mrecv(scratch.baseAddress, Int32(count), MPI_BYTE, &message, MPI_STATUS_IGNORE)
                return failure == MPI_SUCCESS ? [UInt8](UnsafeBufferPointer(rebasing: scratch[0..<count])) : []
            }
            try check(failure, "MPI_Mrecv")
            return bytes
        }
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            failure = MPI_Mrecv(buffer.baseAddress, Int32(count), MPI_BYTE, &message, MPI_STATUS_IGNORE)
            initialized = failure == MPI_SUCCESS ? count : 0
        }
        try check(failure, "MPI_Mrecv")
        return bytes
    }
}

/// A send in flight, started by ``Communicator/startSend(_:to:tag:)``.
///
/// MPI clears the handle when the send completes, so `test()` after completion keeps returning true.
public struct SendRequest {
    private var handle: MPI_Request?

    init(handle: MPI_Request?) { self.handle = handle }

    /// Whether the send has completed (`MPI_Test`); once it has, the buffer may be reused.
    public mutating func test() throws(MPIError) -> Bool {
        var flag: Int32 = 0
        try check(MPI_Test(&handle, &flag, MPI_STATUS_IGNORE), "MPI_Test")
        return flag != 0
    }

    /// Blocks until the send completes (`MPI_Wait`).
    public consuming func wait() throws(MPIError) {
        var request = handle
        try check(MPI_Wait(&request, MPI_STATUS_IGNORE), "MPI_Wait")
    }
}
