import Glibc
import ParallelVMStorage

/// What went wrong at the end of, or inside, a journal.
public enum JournalProblem: Sendable, Hashable, CustomStringConvertible {
    /// The last record is incomplete or fails its checksum (a write cut short by a crash); it was ignored.
    case tornTail(offset: Int, reason: String)
    /// Damage before the last record; reading stopped there, and the records after it were not read.
    case corruption(offset: Int, reason: String)

    /// Where the problem starts, in bytes from the start of the file.
    public var offset: Int {
        switch self {
        case .tornTail(let offset, _), .corruption(let offset, _): return offset
        }
    }

    public var description: String {
        switch self {
        case .tornTail(let offset, let reason): return "torn last record at byte \(offset) ignored: \(reason)"
        case .corruption(let offset, let reason): return "damaged record at byte \(offset), reading stopped: \(reason)"
        }
    }
}

/// Everything a journal holds that can be trusted.
public struct JournalContents: Sendable, Hashable {
    /// Every complete record before the first problem, in the order they were appended.
    public var records: [JournalRecord]
    /// Bytes of the file that hold the header and those records; an appender continues from here.
    public var validLength: Int
    /// Bytes after `validLength` that were not read (0 when there is no problem).
    public var ignoredBytes: Int
    /// The torn tail or the damage, or nil when the whole file was read.
    public var problem: JournalProblem?
}

/// Reads a results journal, for resuming or for inspecting what a run that crashed had finished.
///
/// A crash can leave at most the last record half written (or, after a power loss on some file systems,
/// followed by zeros); such a tail is ignored and reported as `.tornTail`. Damage anywhere else is not a
/// crash's doing: reading stops there and it is reported as `.corruption`. Which of the two a bad record
/// is gets decided by looking for any valid record after it.
public struct JournalReader: Sendable {
    /// The journal file.
    public let path: String
    /// The experiment it belongs to, for error messages.
    public let experiment: String

    /// A reader of the journal at `path`; `experiment` names it in errors.
    public init(path: String, experiment: String = "") {
        self.path = path
        self.experiment = experiment
    }

    /// Reads every trustworthy record; throws only when the file cannot be read at all.
    public func read() throws(ExperimentError) -> JournalContents {
        let fd = try SystemCall.value("open") { open(path, O_RDONLY | O_CLOEXEC) }
            .get("opened", experiment: experiment, path: path, subject: "journal")
        defer { SystemCall.close(fd) }
        var st = stat()
        _ = try SystemCall.value("fstat") { fstat(fd, &st) }
            .get("examined", experiment: experiment, path: path, subject: "journal")
        let bytes = try SystemCall.readAll(fd, sizeHint: Int(st.st_size))
            .get("read", experiment: experiment, path: path, subject: "journal")
        return bytes.withUnsafeBytes { Self.parse($0) }
    }

    /// Parses a journal's bytes.
    static func parse(_ bytes: UnsafeRawBufferPointer) -> JournalContents {
        let header = JournalFormat.fileHeader
        var contents = JournalContents(records: [], validLength: 0, ignoredBytes: 0, problem: nil)
        if bytes.count < header.count {
            // A header cut short is an empty journal whose creation was interrupted.
            if bytes.elementsEqual(header.prefix(bytes.count)) {
                if !bytes.isEmpty {
                    contents.problem = .tornTail(offset: 0, reason: "the file header is incomplete")
                    contents.ignoredBytes = bytes.count
                }
            } else {
                contents.problem = .corruption(offset: 0, reason: "the file does not start with a journal header")
                contents.ignoredBytes = bytes.count
            }
            return contents
        }
        guard bytes.prefix(header.count).elementsEqual(header) else {
            contents.problem = .corruption(offset: 0, reason: "the file does not start with a journal header")
            contents.ignoredBytes = bytes.count
            return contents
        }
        var offset = header.count
        contents.validLength = offset
        while offset < bytes.count {
            switch record(at: offset, in: bytes, into: &contents.records) {
            case .valid(let end):
                offset = end
                contents.validLength = end
            case .invalid(let reason):
                contents.ignoredBytes = bytes.count - offset
                contents.problem =
                    validRecordExists(after: offset, in: bytes)
                    ? .corruption(offset: offset, reason: reason) : .tornTail(offset: offset, reason: reason)
                return contents
            }
        }
        return contents
    }

    private enum Examined {
        case valid(end: Int)
        case invalid(String)
    }

    /// Appends the record starting at `offset` (one job's, or a group's jobs) to `records`, or says why
    /// there is none.
    private static func record(
        at offset: Int,
        in bytes: UnsafeRawBufferPointer,
        into records: inout [JournalRecord]
    ) -> Examined {
        let headerSize = JournalFormat.recordHeaderSize
        let left = bytes.count - offset
        guard left >= headerSize else { return .invalid("only \(left) of a record header's \(headerSize) bytes") }
        let magic = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
        guard magic == JournalFormat.recordMagic else { return .invalid("no record magic") }
        let length = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)))
        guard length <= JournalFormat.maxBodyLength else { return .invalid("impossible record length \(length)") }
        guard left - headerSize >= length else {
            return .invalid("only \(left - headerSize) of the record's \(length) body bytes")
        }
        let crc = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self))
        let body = UnsafeRawBufferPointer(rebasing: bytes[(offset + headerSize)..<(offset + headerSize + length)])
        guard CRC32.checksum(body) == crc else { return .invalid("the body fails its CRC-32 checksum") }
        guard JournalFormat.decodeBody(body, into: &records) else { return .invalid("the body's layout is wrong") }
        return .valid(end: offset + headerSize + length)
    }

    /// True when a complete, valid record starts anywhere after `offset`: then the bad record at `offset`
    /// is not the last one.
    private static func validRecordExists(after offset: Int, in bytes: UnsafeRawBufferPointer) -> Bool {
        let magic = withUnsafeBytes(of: JournalFormat.recordMagic.littleEndian) { Array($0) }
        var position = offset + 1
        var scratch: [JournalRecord] = []
        while position + JournalFormat.recordHeaderSize <= bytes.count {
            if bytes[position] == magic[0], bytes[position + 1] == magic[1], bytes[position + 2] == magic[2],
                bytes[position + 3] == magic[3], case .valid = record(at: position, in: bytes, into: &scratch)
            {
                return true
            }
            position += 1
        }
        return false
    }
}
