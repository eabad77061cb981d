package import Foundation

/// Records to journal together, framed as the journal keeps them and built outside the writer's lock:
/// single records, and groups of successful jobs that one task ran (a chunk), which share one header and
/// one checksum (see ``JournalFormat``).
package struct JournalBatch: Sendable {
    /// The framed records in `bytes[..<used]`; the last group is sealed by ``sealed()``. The storage is
    /// grown ahead, zero-filled, so that a job's entry is stored in place: appending its few fields one
    /// by one cost a chunk of tiny jobs more than the rest of journaling.
    private var bytes: [UInt8] = []
    private var used = 0
    /// Jobs in the batch.
    package private(set) var jobs = 0

    /// The group being filled, `groupStart` < 0 when none: where it starts and what its jobs share (kept
    /// as fields, so that comparing a job with them copies nothing).
    private var groupStart = -1
    private var groupCount: UInt32 = 0
    private var groupTypeName = ""
    private var groupHost = ""
    private var groupTask = ""
    private var groupStarted = 0.0
    private var groupEnded = 0.0

    /// An entry's fields before its value, little-endian, in the format's order and without padding.
    private struct EntryFixedFields {
        var index: Int64
        var key: UInt64
        var attempts: UInt32
        var length: UInt32
    }

    /// Jobs in one group at most (a chunk is rarely larger).
    static let maxGroupJobs: UInt32 = 4096

    package init() {}

    package var isEmpty: Bool { jobs == 0 }

    /// Adds a job that returned `value` (its `BinaryEncoder` bytes, of type `typeName`): to the open
    /// group when the job shares its type, host, task and times with the group's jobs, else to a new one.
    /// False, with the batch unchanged, when a field exceeds the format's limits.
    package mutating func addSuccess(
        index: Int,
        key: JobKey,
        attempts: Int,
        typeName: String,
        value: [UInt8],
        host: String,
        task: String,
        started: Date,
        ended: Date
    ) -> Bool {
        guard let attempts = UInt32(exactly: max(attempts, 0)), value.count <= JournalFormat.maxBodyLength / 2 else {
            return false
        }
        let startedSeconds = started.timeIntervalSince1970
        let endedSeconds = ended.timeIntervalSince1970
        let entrySize = MemoryLayout<EntryFixedFields>.size + value.count
        let fits =
            groupStart >= 0 && groupCount < Self.maxGroupJobs && groupTask == task && groupHost == host
            && groupStarted == startedSeconds && groupEnded == endedSeconds && groupTypeName == typeName
            && used - groupStart - JournalFormat.recordHeaderSize + entrySize <= JournalFormat.maxBodyLength
        if !fits {
            guard typeName.utf8.count + host.utf8.count + task.utf8.count <= JournalFormat.maxBodyLength / 4 else {
                return false
            }
            sealGroup()
            let start = used
            var header: [UInt8] = []
            header.reserveCapacity(JournalFormat.recordHeaderSize + JournalFormat.groupFixedSize + 64)
            header.append(contentsOf: repeatElement(0, count: JournalFormat.recordHeaderSize))
            header.append(JournalFormat.groupVersion)
            header.append(1)
            JournalFormat.putInteger(UInt32(0), &header)  // the count, filled in when sealed
            JournalFormat.putInteger(startedSeconds.bitPattern, &header)
            JournalFormat.putInteger(endedSeconds.bitPattern, &header)
            _ = JournalFormat.putString(typeName, &header)
            _ = JournalFormat.putString(host, &header)
            _ = JournalFormat.putString(task, &header)
            header.withUnsafeBytes { store($0) }
            groupStart = start
            groupCount = 0
            groupTypeName = typeName
            groupHost = host
            groupTask = task
            groupStarted = startedSeconds
            groupEnded = endedSeconds
        }
        reserve(entrySize)
        let fixed = EntryFixedFields(
            index: Int64(index).littleEndian,
            key: key.value.littleEndian,
            attempts: attempts.littleEndian,
            length: UInt32(value.count).littleEndian
        )
        let at = used
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: fixed, toByteOffset: at, as: EntryFixedFields.self)
            value.withUnsafeBytes { value in
                guard let source = value.baseAddress else { return }
                (raw.baseAddress! + at + MemoryLayout<EntryFixedFields>.size).copyMemory(
                    from: source,
                    byteCount: value.count
                )
            }
        }
        used += entrySize
        groupCount += 1
        jobs += 1
        return true
    }

    /// Adds one record on its own (a failure, or a value this process encoded). False, with the batch
    /// unchanged, when a field exceeds the format's limits.
    package mutating func add(_ record: JournalRecord) -> Bool {
        var framed: [UInt8] = []
        guard JournalFormat.append(record, to: &framed) else { return false }
        sealGroup()
        framed.withUnsafeBytes { store($0) }
        jobs += 1
        return true
    }

    /// The batch's bytes, every record sealed.
    mutating func sealed() -> [UInt8] { Array(sealedSlice()) }

    /// The batch's bytes, every record sealed, sharing the batch's storage: drop the slice before the
    /// batch is changed again, or the change copies the storage.
    mutating func sealedSlice() -> ArraySlice<UInt8> {
        sealGroup()
        return bytes[..<used]
    }

    /// Empties the batch and keeps its storage, so that the next results are framed without allocating.
    package mutating func removeAll() {
        groupStart = -1
        used = 0
        jobs = 0
    }

    /// Makes room for `count` more bytes after `used`, growing the zero-filled storage ahead by doubling.
    private mutating func reserve(_ count: Int) {
        let needed = used + count
        guard needed > bytes.count else { return }
        let grown = Swift.max(needed, bytes.count * 2, 4096)
        bytes.append(contentsOf: repeatElement(0, count: grown - bytes.count))
    }

    /// Stores `source` at `used`, and moves `used` past it.
    private mutating func store(_ source: UnsafeRawBufferPointer) {
        reserve(source.count)
        let at = used
        bytes.withUnsafeMutableBytes { raw in
            guard let base = source.baseAddress else { return }
            (raw.baseAddress! + at).copyMemory(from: base, byteCount: source.count)
        }
        used += source.count
    }

    private mutating func sealGroup() {
        guard groupStart >= 0 else { return }
        let start = groupStart
        let count = groupCount
        groupStart = -1
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(
                of: count.littleEndian,
                toByteOffset: start + JournalFormat.recordHeaderSize + 2,
                as: UInt32.self
            )
        }
        JournalFormat.seal(recordAt: start, end: used, in: &bytes)
    }
}
