import MPI

// The VM's wire format. Every VM message is one MPI message of bytes on the VM's private communicator:
//
//   kind: UInt8 | flags: UInt8 | source task number: Int64 LE | destination task number: Int64 LE | body
//
// The body depends on the kind; each kind has one file beside this one that writes and reads it
// (SpawnRequest, TaskEnd, UserFrame, LogRecord, Control). A fixed binary header (no JSON, no
// reflection) keeps a small message to a few dozen bytes and a few nanoseconds of framing. Payloads at
// or above `Wire.separatePayloadThreshold` travel as a second MPI message right after the header, sent
// straight from and received straight into the caller's array, so large buffers are never copied into a frame.

/// The kinds of VM message.
enum MessageKind: UInt8 {
    /// Worker to spawner at start: host name, CPU count, PID.
    case hello = 1
    /// Spawner to worker: run a registered function.
    case spawn = 2
    /// Task to its parent: the function's outcome.
    case taskResult = 3
    /// Task to its parent: the task has ended and its slot is free.
    case taskExit = 4
    /// Any task to any task: a user value.
    case user = 5
    /// Worker to spawner: a diagnostic to print in the spawner's log.
    case log = 6
    /// Spawner to worker: leave the worker loop.
    case finalize = 7
    /// Spawner to worker: remove this user's local storage and report.
    case clearStorage = 8
    /// Worker to spawner: what clearing local storage removed.
    case clearStorageReport = 9
    /// Spawner to worker, once at start: the spawner's host, so that a worker on it can wait on its doorbell.
    case welcome = 10
    /// Spawner to worker: end the task running in the slot (``VM/kill(_:)``).
    case kill = 11
    /// Task process to its worker rank, never forwarded: the task's storage folder, removed by the worker
    /// should the task process die with it.
    case taskFolder = 12
    /// Spawner to worker: the run was interrupted; end the task process, remove its folder, answer, exit.
    case interrupt = 13
    /// Worker to spawner: done with an interrupt.
    case interruptAck = 14
    /// Between the spawner and its workers on other hosts, every few seconds each way: the sender still lives
    /// (the only way to know across hosts).
    case heartbeat = 15
    /// Spawner to worker: a tree of unshared mirror sources for this host's mirror cache (``MirrorFrames``).
    case mirrorOffer = 16
    /// Worker to spawner: which of the tree's contents the host lacks.
    case mirrorNeed = 17
    /// Spawner to worker: the next bytes of those contents.
    case mirrorData = 18
    /// Worker to spawner: the contents are in the cache (or why not).
    case mirrorStored = 19
}

enum Wire {
    /// The VM's single tag: one tag keeps MPI's non-overtaking order across all kinds from one sender.
    static let tag = Tag(7)
    static let headerSize = 18
    /// Payloads this large travel as their own MPI message after the header (no copy into the frame).
    static let separatePayloadThreshold = 32 * 1024
    /// Flag bit: a payload message follows the header.
    static let flagSeparatePayload: UInt8 = 1
    /// Flag bit on a task result: the task has also ended. The spawner hands out the result and then a
    /// TaskExit, so a task costs two MPI messages instead of three.
    static let flagEndsTask: UInt8 = 2
    /// Flag bit on a task process's result or exit: processes the task started still run, for its worker
    /// rank to end.
    static let flagLeftProcesses: UInt8 = 4
    /// Flag bit on a task process's result: the task process exits right after it, so its worker rank
    /// takes that exit before it hands the process another task.
    static let flagProcessEnds: UInt8 = 8
}

/// Appends little-endian values to a byte array.
struct WireWriter {
    var bytes: [UInt8]

    init(kind: MessageKind, flags: UInt8 = 0, sourceTask: Int, destinationTask: Int, capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(Swift.max(capacity, Wire.headerSize))
        bytes.append(kind.rawValue)
        bytes.append(flags)
        append(Int64(sourceTask))
        append(Int64(destinationTask))
    }

    mutating func append<I: FixedWidthInteger>(_ value: I) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func append(_ value: Bool) { bytes.append(value ? 1 : 0) }

    mutating func append(_ value: String) {
        var value = value
        value.withUTF8 { utf8 in
            append(UInt32(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }

    mutating func append(lengthPrefixed data: [UInt8]) {
        append(UInt32(data.count))
        bytes.append(contentsOf: data)
    }

    mutating func insertFlags(_ flags: UInt8) { bytes[1] |= flags }

    /// Writes the monotonic clock at `offset` (into 8 bytes reserved there). Task results and exits carry
    /// the moment the worker sent them: the spawner's host shares that clock and uses it to tell whether
    /// the worker may have gone to sleep since.
    mutating func stampTime(at offset: Int) {
        withUnsafeBytes(of: monotonicSeconds().bitPattern.littleEndian) { time in
            bytes.replaceSubrange(offset..<offset + 8, with: time)
        }
    }
}

/// Reads little-endian values from a received frame; every read is bounds-checked and throws.
struct WireReader {
    let bytes: [UInt8]
    var offset: Int

    init(_ bytes: [UInt8], offset: Int = Wire.headerSize) {
        self.bytes = bytes
        self.offset = offset
    }

    // `what` is an autoclosure: naming a type with String(describing:) costs thousands of instructions,
    // far more than the read itself, so it is only worked out for the error.
    private func need(_ count: Int, _ what: @autoclosure () -> String) throws(VMError) {
        guard count >= 0, bytes.count - offset >= count else {
            throw VMError(
                .encoding,
                "malformed VM message: \(what()) needs \(count) bytes, \(bytes.count - offset) left"
            )
        }
    }

    mutating func read<I: FixedWidthInteger>(_ type: I.Type) throws(VMError) -> I {
        try need(MemoryLayout<I>.size, String(describing: I.self))
        var value = I.zero
        withUnsafeMutableBytes(of: &value) { target in
            bytes.withUnsafeBytes { source in
                target.copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: source[offset..<offset + MemoryLayout<I>.size])
                )
            }
        }
        offset += MemoryLayout<I>.size
        return I(littleEndian: value)
    }

    mutating func readBool() throws(VMError) -> Bool { try read(UInt8.self) != 0 }

    mutating func readString() throws(VMError) -> String {
        let count = Int(try read(UInt32.self))
        try need(count, "string")
        defer { offset += count }
        return String(decoding: bytes[offset..<offset + count], as: UTF8.self)
    }

    mutating func readLengthPrefixed() throws(VMError) -> [UInt8] {
        let count = Int(try read(UInt32.self))
        try need(count, "byte block")
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    /// The bytes from the current offset to the end.
    mutating func readRest() -> [UInt8] {
        defer { offset = bytes.count }
        return offset == 0 ? bytes : Array(bytes[offset...])
    }
}

/// A received VM message: who sent it, its header, and its bytes.
struct Envelope {
    let sourceRank: Int
    let kind: MessageKind
    let flags: UInt8
    let sourceTask: Int
    let destinationTask: Int
    /// The whole frame, header included.
    let frame: [UInt8]
    /// The separately sent payload, when the header's flag says one followed.
    let payload: [UInt8]?

    init(sourceRank: Int, frame: [UInt8], payload: [UInt8]?) throws(VMError) {
        guard frame.count >= Wire.headerSize, let kind = MessageKind(rawValue: frame[0]) else {
            throw VMError(.encoding, "malformed VM message of \(frame.count) bytes from rank \(sourceRank)")
        }
        var reader = WireReader(frame, offset: 2)
        self.sourceRank = sourceRank
        self.kind = kind
        self.flags = frame[1]
        self.sourceTask = Int(try reader.read(Int64.self))
        self.destinationTask = Int(try reader.read(Int64.self))
        self.frame = frame
        self.payload = payload
    }

    var reader: WireReader { WireReader(frame) }

    var sourceID: TaskID { TaskID(slot: sourceRank, number: sourceTask) }

    /// The payload of a frame: the separately sent message, or the frame's bytes from `reader`'s offset.
    func payload(after reader: inout WireReader) -> [UInt8] {
        payload ?? reader.readRest()
    }
}
