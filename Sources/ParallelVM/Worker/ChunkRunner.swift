/// The internal function that runs a chunk of jobs in one task, so that tiny jobs do not each pay for a
/// spawn request, a result and an exit message (mpi4py.futures' `chunksize`).
///
/// Every rank registers it (`Startup`) over the same function table it
/// serves, so a chunk can run any registered function. Each item's outcome is reported on its own, so
/// one failing job does not fail its chunk.
enum ChunkRunner {
    /// The registered name; user functions cannot take it without a type clash.
    static let name = "ParallelVM.chunk"

    /// One job's outcome: the result's type name and encoded value, or the error's type name and text.
    struct Outcome: Sendable {
        var success: Bool
        /// The result type on success, the error type on failure.
        var typeName: String
        var value: [UInt8]
        var message: String
    }

    /// The chunk function over `table`, the functions this rank knows: its arguments are a chunk's jobs
    /// and its result their outcomes, both in ``ChunkCodec``'s format.
    static func function(over table: FunctionTable) -> AnyRemoteFunction {
        RemoteFunction<[UInt8], [UInt8]>(name) { chunk, task in
            var jobs = try ChunkReader(chunk, of: "jobs")
            var outcomes = ChunkWriter(capacity: 16 * jobs.count)
            // Most chunks run one function: it is looked up once.
            var last: (name: String, function: AnyRemoteFunction)?
            for _ in 0..<jobs.count {
                let (functionName, arguments) = try jobs.nextJob()
                let function: AnyRemoteFunction
                if let last, last.name == functionName {
                    function = last.function
                } else if let found = table[functionName] {
                    function = found
                    last = (functionName, found)
                } else {
                    outcomes.appendOutcome(
                        success: false,
                        typeName: "ParallelVM.VMError",
                        value: [],
                        message:
                            "function '\(functionName)' is not registered on rank \(task.taskID.slot) (host \(task.host))"
                    )
                    continue
                }
                do {
                    let (type, bytes) = try function.call(arguments, task)
                    guard bytes.count <= ChunkCodec.maxBlock else {
                        throw VMError(
                            .encoding,
                            "the result of '\(functionName)' is \(bytes.count) bytes, more than a chunk carries (\(ChunkCodec.maxBlock)); run it without chunks"
                        )
                    }
                    outcomes.appendOutcome(success: true, typeName: type, value: bytes, message: "")
                } catch {
                    let failure = TaskFailure(error)
                    outcomes.appendOutcome(
                        success: false,
                        typeName: failure.typeName,
                        value: [],
                        message: failure.message
                    )
                }
            }
            return outcomes.finished()
        }.erased
    }
}

/// How a chunk's jobs and outcomes travel: written and read by hand, because through `Codable` a chunk
/// of tiny jobs cost the spawner and the worker more to encode and decode than the jobs took to run.
///
/// Both are a count (`UInt32`) and then the entries. A job is its function's name and its encoded
/// arguments; an outcome is a success flag (one byte), the type name, the encoded value and the error
/// message. Integers are little-endian; a name, value or message is a `UInt32` length and its bytes. A
/// name's length of ``sameAsPrevious`` stands for the name of the entry before, which most entries share.
enum ChunkCodec {
    static let sameAsPrevious = UInt32.max
    /// The largest name, value or message an entry holds.
    static let maxBlock = Int(UInt32.max - 1)
}

/// Writes a chunk's jobs or outcomes in ``ChunkCodec``'s format.
struct ChunkWriter {
    private var writer: WireWriter
    private(set) var count = 0
    private var previousName: String?

    init(capacity: Int) {
        writer = WireWriter(reservingCapacity: 4 + capacity)
        writer.append(UInt32(0))  // the count, written by `finished()`
    }

    /// Appends a job; throws when its arguments are too large for a chunk.
    mutating func appendJob(function: String, arguments: [UInt8]) throws(VMError) {
        guard arguments.count <= ChunkCodec.maxBlock else {
            throw VMError(
                .encoding,
                "the arguments of '\(function)' are \(arguments.count) bytes, more than a chunk carries (\(ChunkCodec.maxBlock)); run the job without chunks"
            )
        }
        appendName(function)
        writer.append(lengthPrefixed: arguments)
        count += 1
    }

    /// Appends an outcome; the caller keeps `value` within ``ChunkCodec/maxBlock``, and a longer message
    /// is cut there.
    mutating func appendOutcome(success: Bool, typeName: String, value: [UInt8], message: String) {
        writer.append(success)
        appendName(typeName)
        writer.append(lengthPrefixed: value)
        writer.append(
            message.utf8.count <= ChunkCodec.maxBlock
                ? message : String(decoding: message.utf8.prefix(ChunkCodec.maxBlock), as: UTF8.self)
        )
        count += 1
    }

    /// The bytes, with the count in front (written in place: the bytes are not copied).
    mutating func finished() -> [UInt8] {
        writer.bytes.withUnsafeMutableBytes {
            $0.storeBytes(of: UInt32(count).littleEndian, toByteOffset: 0, as: UInt32.self)
        }
        return writer.bytes
    }

    private mutating func appendName(_ name: String) {
        if let previousName, previousName == name {
            writer.append(ChunkCodec.sameAsPrevious)
            return
        }
        writer.append(name)
        previousName = name
    }
}

/// Reads a chunk's jobs or outcomes in ``ChunkCodec``'s format; every read is bounds-checked, and a
/// malformed chunk throws a ``VMError`` that says which entry of how many could not be read.
struct ChunkReader {
    private var reader: WireReader
    /// The number of entries.
    let count: Int
    /// What the entries are ("jobs" or "outcomes"), for errors.
    private let what: String
    private var position = 0
    private var previousName: String?

    init(_ bytes: [UInt8], of what: String) throws(VMError) {
        self.what = what
        reader = WireReader(bytes, offset: 0)
        do throws(VMError) {
            count = Int(try reader.read(UInt32.self))
        } catch {
            throw VMError(.encoding, "a chunk's \(what) could not be read: \(bytes.count) bytes hold no count")
        }
        // Every entry takes at least 8 bytes: a count beyond that is damage, not a chunk.
        guard count <= bytes.count / 8 else {
            throw VMError(.encoding, "a chunk's \(what) could not be read: \(count) entries in \(bytes.count) bytes")
        }
    }

    mutating func nextJob() throws(VMError) -> (function: String, arguments: [UInt8]) {
        try checkNext()
        do throws(VMError) {
            let function = try readName()
            let arguments = try reader.readLengthPrefixed()
            position += 1
            return (function, arguments)
        } catch {
            throw malformed(error)
        }
    }

    mutating func nextOutcome() throws(VMError) -> ChunkRunner.Outcome {
        try checkNext()
        do throws(VMError) {
            let success = try reader.readBool()
            let typeName = try readName()
            let value = try reader.readLengthPrefixed()
            let message = try reader.readString()
            position += 1
            return ChunkRunner.Outcome(success: success, typeName: typeName, value: value, message: message)
        } catch {
            throw malformed(error)
        }
    }

    private func checkNext() throws(VMError) {
        guard position < count else {
            throw VMError(.encoding, "a chunk's \(what) could not be read: only \(count) entries")
        }
    }

    private func malformed(_ error: VMError) -> VMError {
        VMError(
            .encoding,
            "a chunk's \(what) could not be read: entry \(position + 1) of \(count) is malformed (\(error.message))"
        )
    }

    private mutating func readName() throws(VMError) -> String {
        let start = reader.offset
        if try reader.read(UInt32.self) == ChunkCodec.sameAsPrevious {
            guard let previousName else {
                throw VMError(.encoding, "the first entry repeats a name before it")
            }
            return previousName
        }
        reader.offset = start
        let name = try reader.readString()
        previousName = name
        return name
    }
}
