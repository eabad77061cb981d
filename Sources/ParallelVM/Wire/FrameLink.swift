/// Where a process's VM frames go and come from: MPI between ranks (``Transport``), or, in a task process,
/// the channel to the worker rank that supervises it (``ChannelLink``). A ``Worker`` serves tasks over either.
protocol FrameLink: AnyObject, Sendable {
    /// The rank whose frames these are (a task process has its worker's).
    var rank: Int { get }
    /// The number of ranks.
    var size: Int { get }
    var waitPolicy: WaitPolicy { get }
    /// Seconds since a frame from rank 0 last arrived, where tracked.
    var quietSinceSpawner: Double { get }

    /// Sends a frame, and a separate payload after it when given, to `rank`.
    func send(_ frame: [UInt8], payload: [UInt8]?, to rank: Int) throws(VMError)
    /// Sends a small frame that lives only for the call (on the caller's stack) to `rank`.
    func sendTransient(_ frame: UnsafeRawBufferPointer, to rank: Int) throws(VMError)
    /// The first frame that satisfies `matching`, waiting until `deadline`; others stay queued in order.
    func receive(
        until deadline: Deadline,
        matching: (Envelope) -> Bool,
        idleWait: (() -> Bool)?
    ) throws(VMError) -> Envelope?
    /// Whether a frame satisfying `matching` is queued or waiting (never blocks).
    func hasIncoming(matching: (Envelope) -> Bool) throws(VMError) -> Bool
    /// Drops queued frames for which `predicate` is true and returns how many were dropped.
    @discardableResult func removePending(where predicate: (Envelope) -> Bool) -> Int
}

/// The spawner's link to its worker ranks: MPI (``Transport``), or the mailboxes of a VM that runs as one
/// process (``LocalLink``).
protocol SpawnerLink: FrameLink {
    /// Starts noting when frames from `ranks` arrive (the worker ranks on other hosts).
    func watch(_ ranks: [Int])
    /// Seconds since a frame last arrived from each watched rank, by rank.
    func quietSince() -> [Int: Double]
}

extension FrameLink {
    /// Sends a frame with its payload: appended to the frame when small, as a message of its own when large.
    func sendFrame(_ frame: inout WireWriter, payload: [UInt8], to rank: Int) throws(VMError) {
        if payload.count >= Wire.separatePayloadThreshold {
            frame.insertFlags(Wire.flagSeparatePayload)
            try send(frame.bytes, payload: payload, to: rank)
        } else {
            frame.bytes.append(contentsOf: payload)
            try send(frame.bytes, payload: nil, to: rank)
        }
    }

    func send(_ frame: [UInt8], to rank: Int) throws(VMError) { try send(frame, payload: nil, to: rank) }

    /// Links that queue frames keep a copy.
    func sendTransient(_ frame: UnsafeRawBufferPointer, to rank: Int) throws(VMError) {
        try send([UInt8](frame.assumingMemoryBound(to: UInt8.self)), payload: nil, to: rank)
    }

    func receive(until deadline: Deadline, matching: (Envelope) -> Bool = { _ in true }) throws(VMError) -> Envelope? {
        try receive(until: deadline, matching: matching, idleWait: nil)
    }
}
