package import Foundation

/// Records to journal together, framed as the journal keeps them and built outside the writer's lock:
/// single records, and groups of successful jobs that one task ran (a chunk), which share one header and
/// one checksum (see ``JournalFormat``).
package struct JournalBatch: Sendable {
    /// The framed records; the last group is sealed by ``sealed()``.
    private var bytes: [UInt8] = []
    /// Jobs in the batch.
    package private(set) var jobs = 0
    private var group: OpenGroup?

    /// The group being filled: where it starts and what its jobs share.
    private struct OpenGroup {
        let start: Int
        var count: UInt32 = 0
        let typeName: String
        let host: String
        let task: String
        let started: Double
        let ended: Double
    }

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
        let entrySize = 8 + 8 + 4 + 4 + value.count
        if let open = group, open.count < Self.maxGroupJobs, open.task == task, open.host == host,
            open.started == startedSeconds, open.ended == endedSeconds, open.typeName == typeName,
            bytes.count - open.start - JournalFormat.recordHeaderSize + entrySize <= JournalFormat.maxBodyLength
        {
        } else {
            guard typeName.utf8.count + host.utf8.count + task.utf8.count <= JournalFormat.maxBodyLength / 4 else {
                return false
            }
            sealGroup()
            let start = bytes.count
            bytes.append(contentsOf: repeatElement(0, count: JournalFormat.recordHeaderSize))
            bytes.append(JournalFormat.groupVersion)
            bytes.append(1)
            JournalFormat.putInteger(UInt32(0), &bytes)  // the count, filled in when sealed
            JournalFormat.putInteger(startedSeconds.bitPattern, &bytes)
            JournalFormat.putInteger(endedSeconds.bitPattern, &bytes)
            _ = JournalFormat.putString(typeName, &bytes)
            _ = JournalFormat.putString(host, &bytes)
            _ = JournalFormat.putString(task, &bytes)
            group = OpenGroup(
                start: start,
                typeName: typeName,
                host: host,
                task: task,
                started: startedSeconds,
                ended: endedSeconds
            )
        }
        // The entry's fixed fields in one append, then the value's bytes: five small appends cost a
        // chunk of tiny jobs more than the rest of journaling.
        var fixed = EntryFixedFields(
            index: Int64(index).littleEndian,
            key: key.value.littleEndian,
            attempts: attempts.littleEndian,
            length: UInt32(value.count).littleEndian
        )
        withUnsafeBytes(of: &fixed) { bytes.append(contentsOf: $0) }
        bytes += value
        group!.count += 1
        jobs += 1
        return true
    }

    /// Adds one record on its own (a failure, or a value this process encoded). False, with the batch
    /// unchanged, when a field exceeds the format's limits.
    package mutating func add(_ record: JournalRecord) -> Bool {
        sealGroup()
        guard JournalFormat.append(record, to: &bytes) else { return false }
        jobs += 1
        return true
    }

    /// The batch's bytes, every record sealed.
    mutating func sealed() -> [UInt8] {
        sealGroup()
        return bytes
    }

    private mutating func sealGroup() {
        guard let open = group else { return }
        group = nil
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(
                of: open.count.littleEndian,
                toByteOffset: open.start + JournalFormat.recordHeaderSize + 2,
                as: UInt32.self
            )
        }
        JournalFormat.seal(recordAt: open.start, in: &bytes)
    }
}
