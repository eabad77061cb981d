/// What a resumed dispatch may take from the journal instead of running a job again.
///
/// A job is identified by its index and its key (the hash of its function and arguments): a record is
/// reused only for the same index with the same key, so a job whose input changed runs again. When the
/// journal holds several records for one index (a job that failed and was run again, or inputs that
/// changed between runs), the last one appended wins.
package struct ResumeTable: Sendable {
    private var latest: [Int: JournalRecord] = [:]

    /// The table of `records`, in the order they were appended.
    package init<Records: Sequence<JournalRecord>>(_ records: Records) {
        for record in records { latest[record.index] = record }
    }

    /// The empty table.
    package init() {}

    /// Adds a record appended after the table was built (it wins over older ones for its index).
    package mutating func add(_ record: JournalRecord) { latest[record.index] = record }

    /// The record to return instead of running job `index` with key `key`, or nil when it must run:
    /// no record for the index, a record with another key, or a failure when `includeFailed` is false.
    package func reusable(index: Int, key: JobKey, includeFailed: Bool = false) -> JournalRecord? {
        guard let record = latest[index], record.key == key else { return nil }
        return record.succeeded || includeFailed ? record : nil
    }

    /// The last record of every index.
    package var count: Int { latest.count }

    /// The last record for `index`, whatever its key.
    package func latestRecord(index: Int) -> JournalRecord? { latest[index] }
}
