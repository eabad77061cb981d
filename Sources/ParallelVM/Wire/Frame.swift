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

    /// Bytes that are not a frame (a chunk's jobs or outcomes): no header.
    init(reservingCapacity capacity: Int) {
        bytes = []
        bytes.reserveCapacity(capacity)
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

/// Writes a frame whose size is known beforehand straight into its one allocation: the frames of user
/// messages, which are the latency path. ``WireWriter`` grows its array with each field instead.
struct FrameBuilder {
    private let base: UnsafeMutableRawPointer
    private(set) var offset = 0

    /// A frame of `size` bytes: the header, then `body` writes exactly `size - Wire.headerSize` bytes.
    static func frame(
        kind: MessageKind,
        flags: UInt8 = 0,
        sourceTask: Int,
        destinationTask: Int,
        size: Int,
        body: (inout FrameBuilder) -> Void
    ) -> [UInt8] {
        func write(into base: UnsafeMutableRawPointer) {
            var builder = FrameBuilder(base: base)
            builder.putHeader(kind: kind, flags: flags, sourceTask: sourceTask, destinationTask: destinationTask)
            body(&builder)
            precondition(builder.offset == size, "a frame of \(size) bytes was written with \(builder.offset)")
        }
        // A small frame is written on the stack and copied into its array: making an array from a buffer
        // of bytes is specialised in the standard library, while `init(unsafeUninitializedCapacity:)`
        // looks up the array's storage type at run time, which costs more than the frame's bytes.
        guard size > FrameBuilder.stackLimit else {
            return withUnsafeTemporaryAllocation(byteCount: size, alignment: 8) { scratch in
                write(into: scratch.baseAddress!)
                return [UInt8](UnsafeRawBufferPointer(scratch).assumingMemoryBound(to: UInt8.self))
            }
        }
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            write(into: UnsafeMutableRawPointer(buffer.baseAddress!))
            count = size
        }
    }

    /// Builds a frame of at most ``stackLimit`` bytes on the stack and hands it to `use`, which must not
    /// keep the buffer: no array is made at all.
    static func withSmallFrame(
        kind: MessageKind,
        flags: UInt8 = 0,
        sourceTask: Int,
        destinationTask: Int,
        size: Int,
        body: (inout FrameBuilder) -> Void,
        use: (UnsafeRawBufferPointer) throws(VMError) -> Void
    ) throws(VMError) {
        precondition(size <= stackLimit, "a frame of \(size) bytes is not small")
        let failure = withUnsafeTemporaryAllocation(byteCount: size, alignment: 8) { scratch -> VMError? in
            var builder = FrameBuilder(base: scratch.baseAddress!)
            builder.putHeader(kind: kind, flags: flags, sourceTask: sourceTask, destinationTask: destinationTask)
            body(&builder)
            precondition(builder.offset == size, "a frame of \(size) bytes was written with \(builder.offset)")
            do throws(VMError) {
                try use(UnsafeRawBufferPointer(scratch))
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw failure }
    }

    /// Frames up to this size are written on the stack first.
    static let stackLimit = 4096

    private init(base: UnsafeMutableRawPointer) { self.base = base }

    /// The header every frame starts with (see the layout at the top of this file).
    private mutating func putHeader(kind: MessageKind, flags: UInt8, sourceTask: Int, destinationTask: Int) {
        put(kind.rawValue)
        put(flags)
        put(Int64(sourceTask))
        put(Int64(destinationTask))
    }

    mutating func put<I: FixedWidthInteger>(_ value: I) {
        base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: I.self)
        offset += MemoryLayout<I>.size
    }

    mutating func put(_ value: Bool) { put(UInt8(value ? 1 : 0)) }

    mutating func put(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress, !bytes.isEmpty else { return }
        (base + offset).copyMemory(from: source, byteCount: bytes.count)
        offset += bytes.count
    }

    /// A length-prefixed UTF-8 string, as ``WireWriter/append(_:)-(String)`` writes it.
    mutating func put(_ value: String) {
        var value = value
        value.withUTF8 { utf8 in
            put(UInt32(utf8.count))
            put(UnsafeRawBufferPointer(utf8))
        }
    }

    /// The bytes ``put(_:)-(String)`` writes for `value`.
    static func size(of value: String) -> Int { 4 + value.utf8.count }
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
        let value = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: I.self) }
        offset += MemoryLayout<I>.size
        return I(littleEndian: value)
    }

    mutating func readBool() throws(VMError) -> Bool { try read(UInt8.self) != 0 }

    mutating func readString() throws(VMError) -> String {
        let count = Int(try read(UInt32.self))
        if count == 0 { return "" }
        try need(count, "string")
        defer { offset += count }
        return bytes.withUnsafeBytes { String(decoding: $0[offset..<offset + count], as: UTF8.self) }
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
        self.sourceRank = sourceRank
        self.kind = kind
        self.flags = frame[1]
        (sourceTask, destinationTask) = frame.withUnsafeBytes { bytes in
            (
                Int(Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: 2, as: Int64.self))),
                Int(Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: 10, as: Int64.self)))
            )
        }
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
