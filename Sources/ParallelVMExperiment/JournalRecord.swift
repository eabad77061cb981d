public import Foundation
package import ParallelVMCodec

/// What identifies a job's input: a 64-bit FNV-1a hash of its function name and encoded arguments.
///
/// The hash is fixed (no per-process seed), so a rerun computes the same key for the same input and a
/// different key when the function or any argument byte changed. Arguments whose encoding is not
/// deterministic (a `Dictionary`'s order differs between processes) give a new key in every run, so
/// such a job is run again rather than wrongly reused.
public struct JobKey: Hashable, Sendable, Codable, CustomStringConvertible {
    /// The hash.
    public var value: UInt64

    /// A key with this hash value (as read back from a journal).
    public init(value: UInt64) { self.value = value }

    /// The key of calling `function` with arguments already encoded with `BinaryEncoder`.
    package init(function: String, encodedArguments: [UInt8]) {
        var maker = JobKeyMaker()
        self = maker.key(function: function, encodedArguments: encodedArguments)
    }

    /// The key of calling `function` with `arguments`, encoded with `BinaryEncoder` as the VM sends them.
    package init<Arguments: Encodable>(function: String, arguments: Arguments) throws(CodecError) {
        self.init(function: function, encodedArguments: try BinaryEncoder.encode(arguments))
    }

    /// Sixteen hexadecimal digits.
    public var description: String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// The identity of a whole list of inputs: a hash over every (index, key) in order, in hexadecimal.
    /// Two runs with the same jobs in the same order have the same identity.
    /// Words, not bytes, go into it (a run of many tiny jobs ends with this pass over all their keys),
    /// each through a 64-bit mixer, so that it depends on every bit and on the order.
    package static func inputsIdentity(of keys: [JobKey]) -> String {
        var hash = mixed(UInt64(keys.count))
        for index in keys.indices {
            hash = (hash ^ mixed(UInt64(index) &+ 0x9E37_79B9_7F4A_7C15 &* keys[index].value)) &* 0x0000_0100_0000_01b3
        }
        return JobKey(value: mixed(hash)).description
    }

    /// The finaliser of splitmix64: every input bit changes about half the output bits.
    private static func mixed(_ word: UInt64) -> UInt64 {
        var z = word
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Makes the keys of many jobs (``JobKey/init(function:encodedArguments:)``), hashing a function's name
/// once for the jobs that follow with the same function, as the jobs of a chunk do.
package struct JobKeyMaker {
    private var function: String?
    /// The hash after the name of `function`.
    private var afterFunction = FNV1a64()

    package init() {}

    /// The key of calling `function` with arguments already encoded with `BinaryEncoder`.
    package mutating func key(function: String, encodedArguments: [UInt8]) -> JobKey {
        if function != self.function {
            var hash = FNV1a64()
            hash.combine(function)
            afterFunction = hash
            self.function = function
        }
        var hash = afterFunction
        hash.combine(UInt64(encodedArguments.count))
        hash.combine(encodedArguments)
        return JobKey(value: hash.value)
    }
}

/// A value read from a journal record could not be given back: the job failed, the type differs, or the
/// bytes do not decode.
public struct JournalValueError: Error, CustomStringConvertible, Sendable, Hashable {
    /// The sentence, naming the job and the types.
    public var description: String
}

/// One finished job, as the results journal keeps it.
public struct JournalRecord: Sendable, Hashable {
    /// How the job ended.
    public enum Outcome: Sendable, Hashable {
        /// It returned a value: its type (`_typeName(T.self, qualified: true)`) and its `BinaryEncoder` bytes.
        case success(typeName: String, value: [UInt8])
        /// It threw: the error's type and text.
        case failure(typeName: String, message: String)
    }

    /// The job's index in the dispatch.
    public var index: Int
    /// The hash of its function and arguments.
    public var key: JobKey
    /// Its value or its error.
    public var outcome: Outcome
    /// How many times it was started, this run's attempt included.
    public var attempts: Int
    /// The host it ran on.
    public var host: String
    /// The task it ran in, e.g. `1:5`.
    public var task: String
    /// When it started.
    public var started: Date
    /// When it ended.
    public var ended: Date

    /// Creates a record.
    public init(
        index: Int,
        key: JobKey,
        outcome: Outcome,
        attempts: Int = 1,
        host: String,
        task: String,
        started: Date,
        ended: Date
    ) {
        self.index = index
        self.key = key
        self.outcome = outcome
        self.attempts = attempts
        self.host = host
        self.task = task
        self.started = started
        self.ended = ended
    }

    /// True when the job returned a value.
    public var succeeded: Bool {
        if case .success = outcome { return true }
        return false
    }

    /// The job's value, decoded as `T`; throws a `JournalValueError` when the job failed, when it returned
    /// another type, or when the bytes do not decode.
    public func value<T: Decodable>(as type: T.Type) throws -> T {
        switch outcome {
        case .failure(let typeName, let message):
            throw JournalValueError(
                description: "job #\(index) failed in task \(task) on \(host): \(typeName): \(message)"
            )
        case .success(let typeName, let bytes):
            let expected = _typeName(T.self, qualified: true)
            guard typeName == expected else {
                throw JournalValueError(description: "job #\(index) returned a \(typeName), not a \(expected)")
            }
            do {
                return try BinaryDecoder.decode(T.self, from: bytes)
            } catch {
                throw JournalValueError(description: "job #\(index): its \(typeName) value does not decode: \(error)")
            }
        }
    }
}

/// The journal's file format.
///
/// ```
/// file   := fileHeader record*
/// fileHeader := "PVMJRNL" 0x01                            8 bytes: magic and format version
/// record := magic:u32 length:u32 crc:u32 body[length]     12-byte header; crc is CRC-32 of body
/// body   := version:u8 flags:u8 index:i64 key:u64 attempts:u32 started:f64 ended:f64
///           typeName:str payload:bytes host:str task:str
/// str, bytes := length:u32 then that many bytes (UTF-8 for str)
/// ```
/// Integers and floats are little-endian; times are seconds since 1970 (UTC). `flags` bit 0 is set for
/// success: `typeName` is the value's type and `payload` its `BinaryEncoder` bytes; otherwise `typeName`
/// is the error's type and `payload` its message in UTF-8. The body is written by hand rather than with
/// `BinaryEncoder` because an append is on the dispatch's hot path and the layout must stay stable across
/// versions of the codec.
///
/// A second body layout (version 2) holds a group: successful jobs of one task (a chunk) that share their
/// value type, host, task and times, so that a chunk of tiny jobs costs one header and one checksum:
///
/// ```
/// group  := version:u8(2) flags:u8(1) count:u32 started:f64 ended:f64 typeName:str host:str task:str
///           entry[count]
/// entry  := index:i64 key:u64 attempts:u32 payload:bytes
/// ```
/// A group is checked and kept or dropped whole, like any record: a torn group at the end loses all its
/// jobs, which then run again.
enum JournalFormat {
    /// `PVMJRNL` and version 1.
    static let fileHeader: [UInt8] = Array("PVMJRNL".utf8) + [1]
    /// "PVJR" read as a little-endian u32.
    static let recordMagic: UInt32 = 0x524A_5650
    /// Bytes before a record's body.
    static let recordHeaderSize = 12
    /// Version of the body layout of one job.
    static let bodyVersion: UInt8 = 1
    /// Version of the body layout of a group of successful jobs.
    static let groupVersion: UInt8 = 2
    /// Bytes of a group body before its type name: version, flags, count and the two times.
    static let groupFixedSize = 1 + 1 + 4 + 8 + 8
    /// The largest body a reader accepts; a longer length field is damage, not data.
    static let maxBodyLength = 1 << 30

    /// Appends the framed record (header and body) to `buffer`; on failure `buffer` is unchanged.
    static func append(_ record: JournalRecord, to buffer: inout [UInt8]) -> Bool {
        let start = buffer.count
        buffer.append(contentsOf: repeatElement(0, count: recordHeaderSize))
        let success: Bool
        let typeName: String
        switch record.outcome {
        case .success(let name, _):
            success = true
            typeName = name
        case .failure(let name, _):
            success = false
            typeName = name
        }
        buffer.append(bodyVersion)
        buffer.append(success ? 1 : 0)
        putInteger(Int64(record.index), &buffer)
        putInteger(record.key.value, &buffer)
        guard let attempts = UInt32(exactly: max(record.attempts, 0)) else {
            buffer.removeSubrange(start...)
            return false
        }
        putInteger(attempts, &buffer)
        putInteger(record.started.timeIntervalSince1970.bitPattern, &buffer)
        putInteger(record.ended.timeIntervalSince1970.bitPattern, &buffer)
        var ok = putString(typeName, &buffer)
        switch record.outcome {
        case .success(_, let value): ok = ok && putBytes(value, &buffer)
        case .failure(_, let message): ok = ok && putString(message, &buffer)
        }
        ok = ok && putString(record.host, &buffer) && putString(record.task, &buffer)
        let length = buffer.count - start - recordHeaderSize
        guard ok, length <= maxBodyLength else {
            buffer.removeSubrange(start...)
            return false
        }
        seal(recordAt: start, in: &buffer)
        return true
    }

    /// Fills in the header of the record whose header starts at `start` and whose body runs to the end of
    /// `buffer`: magic, body length and the body's checksum.
    static func seal(recordAt start: Int, in buffer: inout [UInt8]) {
        seal(recordAt: start, end: buffer.count, in: &buffer)
    }

    /// ``seal(recordAt:in:)`` of a record whose body ends at `end` of `buffer`.
    static func seal(recordAt start: Int, end: Int, in buffer: inout [UInt8]) {
        let length = end - start - recordHeaderSize
        let crc = buffer.withUnsafeBytes { raw in
            CRC32.checksum(UnsafeRawBufferPointer(rebasing: raw[(start + recordHeaderSize)..<end]))
        }
        buffer.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: recordMagic.littleEndian, toByteOffset: start, as: UInt32.self)
            raw.storeBytes(of: UInt32(length).littleEndian, toByteOffset: start + 4, as: UInt32.self)
            raw.storeBytes(of: crc.littleEndian, toByteOffset: start + 8, as: UInt32.self)
        }
    }

    @inline(__always)
    static func putInteger<T: FixedWidthInteger>(_ value: T, _ buffer: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { buffer.append(contentsOf: $0) }
    }

    static func putString(_ string: String, _ buffer: inout [UInt8]) -> Bool {
        var copy = string
        return copy.withUTF8 { utf8 in
            guard utf8.count <= maxBodyLength else { return false }
            putInteger(UInt32(utf8.count), &buffer)
            buffer.append(contentsOf: utf8)
            return true
        }
    }

    private static func putBytes(_ bytes: [UInt8], _ buffer: inout [UInt8]) -> Bool {
        guard bytes.count <= maxBodyLength else { return false }
        putInteger(UInt32(bytes.count), &buffer)
        buffer.append(contentsOf: bytes)
        return true
    }

    /// Decodes a body whose checksum already matched, appending its records (one, or a group's) to
    /// `records`; false, with `records` unchanged, when its layout is wrong.
    static func decodeBody(_ body: UnsafeRawBufferPointer, into records: inout [JournalRecord]) -> Bool {
        guard let version = body.first else { return false }
        if version == groupVersion { return decodeGroup(body, into: &records) }
        guard let record = decodeSingle(body) else { return false }
        records.append(record)
        return true
    }

    private static func decodeGroup(_ body: UnsafeRawBufferPointer, into records: inout [JournalRecord]) -> Bool {
        var reader = BodyReader(bytes: body)
        guard reader.byte() == groupVersion, reader.byte() == 1, let count = reader.integer(UInt32.self),
            let started = reader.integer(UInt64.self), let ended = reader.integer(UInt64.self),
            let typeName = reader.string(), let host = reader.string(), let task = reader.string(),
            Int(count) <= body.count  // every entry takes more than a byte: a larger count is damage
        else { return false }
        let start = Date(timeIntervalSince1970: Double(bitPattern: started))
        let end = Date(timeIntervalSince1970: Double(bitPattern: ended))
        var group: [JournalRecord] = []
        group.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let index = reader.integer(Int64.self), let key = reader.integer(UInt64.self),
                let attempts = reader.integer(UInt32.self), let payload = reader.blob(),
                let index = Int(exactly: index)
            else { return false }
            group.append(
                JournalRecord(
                    index: index,
                    key: JobKey(value: key),
                    outcome: .success(typeName: typeName, value: payload),
                    attempts: Int(attempts),
                    host: host,
                    task: task,
                    started: start,
                    ended: end
                )
            )
        }
        guard reader.atEnd else { return false }
        records += group
        return true
    }

    private static func decodeSingle(_ body: UnsafeRawBufferPointer) -> JournalRecord? {
        var reader = BodyReader(bytes: body)
        guard let version = reader.byte(), version == bodyVersion, let flags = reader.byte(),
            let index = reader.integer(Int64.self), let key = reader.integer(UInt64.self),
            let attempts = reader.integer(UInt32.self), let started = reader.integer(UInt64.self),
            let ended = reader.integer(UInt64.self), let typeName = reader.string(), let payload = reader.blob(),
            let host = reader.string(), let task = reader.string(), reader.atEnd, let index = Int(exactly: index)
        else { return nil }
        let outcome: JournalRecord.Outcome =
            flags & 1 != 0
            ? .success(typeName: typeName, value: payload)
            : .failure(typeName: typeName, message: String(decoding: payload, as: UTF8.self))
        return JournalRecord(
            index: index,
            key: JobKey(value: key),
            outcome: outcome,
            attempts: Int(attempts),
            host: host,
            task: task,
            started: Date(timeIntervalSince1970: Double(bitPattern: started)),
            ended: Date(timeIntervalSince1970: Double(bitPattern: ended))
        )
    }

    /// Reads a body's fields in order, checking every length against what is left.
    private struct BodyReader {
        let bytes: UnsafeRawBufferPointer
        var offset = 0

        var atEnd: Bool { offset == bytes.count }

        mutating func byte() -> UInt8? {
            guard offset < bytes.count else { return nil }
            defer { offset += 1 }
            return bytes[offset]
        }

        mutating func integer<T: FixedWidthInteger>(_ type: T.Type) -> T? {
            let size = MemoryLayout<T>.size
            guard bytes.count - offset >= size else { return nil }
            defer { offset += size }
            return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        }

        mutating func blob() -> [UInt8]? {
            guard let count = integer(UInt32.self).map(Int.init), bytes.count - offset >= count else { return nil }
            defer { offset += count }
            return Array(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count]))
        }

        mutating func string() -> String? {
            guard let count = integer(UInt32.self).map(Int.init), bytes.count - offset >= count else { return nil }
            defer { offset += count }
            return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count]), as: UTF8.self)
        }
    }
}
