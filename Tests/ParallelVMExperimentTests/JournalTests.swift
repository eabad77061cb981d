import Foundation
import Glibc
import ParallelVMCodec
import Testing

@testable import ParallelVMExperiment

@Suite("Results journal: format, torn tails, corruption, reopening")
struct JournalTests {
    @Test("many records round-trip, in order, with every field")
    func roundTrip() throws {
        let folder = try TemporaryFolder()
        let path = folder.sub("journal")
        var policy = JournalWriter.Policy()
        policy.maxRecords = 100
        let writer = try JournalWriter(path: path, experiment: "t", policy: policy)
        let records = (0..<5000).map {
            Support.record($0, success: $0 % 7 != 0, value: Array(repeating: UInt8($0 & 0xFF), count: $0 % 50))
        }
        for record in records.prefix(2500) { try writer.append(record) }
        try writer.append(contentsOf: records.dropFirst(2500))
        try writer.close()
        #expect(writer.statistics.records == 5000)
        #expect(writer.statistics.writes >= 50)

        let contents = try JournalReader(path: path).read()
        #expect(contents.problem == nil)
        #expect(contents.ignoredBytes == 0)
        #expect(contents.validLength == Support.fileSize(path))
        #expect(contents.records == records)
    }

    /// Adds `record` to `batch`: a success as a group entry, a failure on its own.
    static func add(_ record: JournalRecord, to batch: inout JournalBatch) {
        switch record.outcome {
        case .success(let typeName, let value):
            let added = batch.addSuccess(
                index: record.index,
                key: record.key,
                attempts: record.attempts,
                typeName: typeName,
                value: value,
                host: record.host,
                task: record.task,
                started: record.started,
                ended: record.ended
            )
            #expect(added)
        case .failure:
            let added = batch.add(record)
            #expect(added)
        }
    }

    @Test("groups of a chunk's successes round-trip with singles between them, one header per group")
    func groups() throws {
        let folder = try TemporaryFolder()
        let path = folder.sub("journal")
        let writer = try JournalWriter(path: path, experiment: "t")
        // Three chunks of 40 jobs, each from its own task with shared times; every 9th job failed.
        var expected: [JournalRecord] = []
        for chunk in 0..<3 {
            var batch = JournalBatch()
            for offset in 0..<40 {
                let index = chunk * 40 + offset
                var record = Support.record(index, success: index % 9 != 4, task: "1:\(chunk)")
                record.started = Date(timeIntervalSince1970: 1_700_000_000 + Double(chunk))
                record.ended = Date(timeIntervalSince1970: 1_700_000_001.25 + Double(chunk))
                record.attempts = 1 + chunk
                Self.add(record, to: &batch)
                expected.append(record)
            }
            #expect(batch.jobs == 40)
            try writer.append(batch)
        }
        try writer.close()
        #expect(writer.statistics.records == 120)
        let contents = try JournalReader(path: path).read()
        #expect(contents.problem == nil)
        #expect(contents.records == expected)
        // Far smaller than a record per job: the shared fields are written once per group.
        let singles = try TemporaryFolder()
        let single = try JournalWriter(path: singles.sub("journal"), experiment: "t")
        try single.append(contentsOf: expected)
        try single.close()
        #expect(Support.fileSize(path) * 3 < Support.fileSize(singles.sub("journal")) * 2)
    }

    @Test("one batch emptied by each append and filled again journals every record, growing as it must")
    func reusedBatch() throws {
        let folder = try TemporaryFolder()
        let path = folder.sub("journal")
        let writer = try JournalWriter(path: path, experiment: "t")
        var batch = JournalBatch()
        var expected: [JournalRecord] = []
        // Rounds of growing values (past the batch's first 4 KiB, then past what earlier rounds needed),
        // every round continuing the task of the round before: the group is closed by the append, not
        // carried into the next batch.
        for round in 0..<6 {
            let size = [1, 300, 5000, 2, 70_000, 8][round]
            for offset in 0..<12 {
                let index = round * 12 + offset
                var record = Support.record(index, success: offset != 7, task: "1:\(round / 2)")
                if case .success(let typeName, _) = record.outcome {
                    record.outcome = .success(typeName: typeName, value: (0..<size).map { UInt8(($0 + index) % 251) })
                }
                record.started = Date(timeIntervalSince1970: 1_700_000_000)
                record.ended = Date(timeIntervalSince1970: 1_700_000_001)
                Self.add(record, to: &batch)
                expected.append(record)
            }
            #expect(batch.jobs == 12)
            try writer.append(emptying: &batch)
            #expect(batch.isEmpty)
            #expect(batch.jobs == 0)
        }
        // An empty batch appends nothing.
        try writer.append(emptying: &batch)
        try writer.close()
        #expect(writer.statistics.records == 72)
        let contents = try JournalReader(path: path).read()
        #expect(contents.problem == nil)
        #expect(contents.records == expected)
    }

    @Test("a torn group at the end loses its jobs, and only those; a damaged group before the end is corruption")
    func tornGroup() throws {
        let folder = try TemporaryFolder()
        let path = folder.sub("journal")
        let writer = try JournalWriter(path: path, experiment: "t")
        // Jobs of one chunk: one task, one start and end.
        func record(_ index: Int) -> JournalRecord {
            var record = Support.record(index, task: "1:1")
            record.started = Date(timeIntervalSince1970: 1_700_000_000)
            record.ended = Date(timeIntervalSince1970: 1_700_000_002)
            return record
        }
        var first = JournalBatch()
        for index in 0..<10 { Self.add(record(index), to: &first) }
        try writer.append(first)
        try writer.close()
        let goodLength = Support.fileSize(path)
        var second = JournalBatch()
        for index in 10..<20 { Self.add(record(index), to: &second) }
        let group = second.sealed()
        for cut in [1, 13, group.count / 2, group.count - 1] {
            try Support.writeBytes(
                path,
                Array(try Support.readBytes(path).prefix(goodLength)) + Array(group.prefix(cut))
            )
            let contents = try JournalReader(path: path).read()
            if case .tornTail? = contents.problem {} else { Issue.record("cut at \(cut): no torn tail reported") }
            #expect(contents.records.map(\.index) == Array(0..<10))
            #expect(contents.validLength == goodLength)
        }
        // A flipped byte inside the first group, with the second complete after it.
        var bytes = Array(try Support.readBytes(path).prefix(goodLength)) + group
        bytes[JournalFormat.fileHeader.count + JournalFormat.recordHeaderSize + 30] ^= 0xFF
        try Support.writeBytes(path, bytes)
        let damaged = try JournalReader(path: path).read()
        if case .corruption? = damaged.problem {} else { Issue.record("no corruption reported") }
        #expect(damaged.records.isEmpty)
        #expect(throws: ExperimentError.self) { try JournalWriter(path: path, experiment: "t") }
    }

    @Test("a record appended while the writer waits to sync reaches the file within the flush interval")
    func flushWhileASyncIsPending() throws {
        let folder = try TemporaryFolder()
        let path = folder.sub("journal")
        var policy = JournalWriter.Policy()
        policy.syncInterval = .seconds(30)
        let writer = try JournalWriter(path: path, experiment: "t", policy: policy)
        defer { try? writer.close() }
        try writer.append(Support.record(0))
        #expect(Support.eventually(within: 5) { (try? JournalReader(path: path).read().records.count) == 1 })
        // The background thread now waits for the sync, 30 s away; the next record must not wait with it.
        var batch = JournalBatch()
        Self.add(Support.record(1), to: &batch)
        try writer.append(batch)
        #expect(Support.eventually(within: 5) { (try? JournalReader(path: path).read().records.count) == 2 })
    }

    @Test("a decoded value comes back through value(as:); a failure or another type throws")
    func values() throws {
        let folder = try TemporaryFolder()
        let path = folder.sub("journal")
        let writer = try JournalWriter(path: path, experiment: "t")
        let encoded = try BinaryEncoder.encode(42)
        var ok = Support.record(0, value: encoded)
        ok.outcome = .success(typeName: _typeName(Int.self, qualified: true), value: encoded)
        try writer.append(ok)
        try writer.append(Support.record(1, success: false))
        try writer.close()
        let records = try JournalReader(path: path).read().records
        #expect(try records[0].value(as: Int.self) == 42)
        #expect(throws: JournalValueError.self) { try records[0].value(as: String.self) }
        let failure = try #require(throws: JournalValueError.self) { try records[1].value(as: Int.self) }
        #expect(failure.description.contains("Demo.Failure: job 1 failed"))
    }

    @Test("a record is in the file within the flush interval without any further append")
    func backgroundFlush() throws {
        let folder = try TemporaryFolder()
        let path = folder.sub("journal")
        let writer = try JournalWriter(path: path, experiment: "t")
        defer { try? writer.close() }
        let empty = Support.fileSize(path)
        try writer.append(Support.record(0))
        #expect(Support.eventually(within: 2) { Support.fileSize(path) > empty })
        #expect(try JournalReader(path: path).read().records.count == 1)
        #expect(Support.eventually(within: 2) { writer.statistics.syncs >= 1 })
    }

    @Test("startSync syncs on the writer's thread; close syncs again only what was written after it")
    func startSyncThenClose() throws {
        let folder = try TemporaryFolder()
        let path = folder.sub("journal")
        // No periodic sync in the test's time: only the ones asked for.
        var policy = JournalWriter.Policy()
        policy.syncInterval = .seconds(600)
        let writer = try JournalWriter(path: path, experiment: "t", policy: policy)
        try writer.append(Support.record(0, success: true, value: [1, 2, 3]))
        try writer.startSync()
        // The record is written at once; the sync follows on the writer's thread.
        #expect(try JournalReader(path: path).read().records.count == 1)
        #expect(Support.eventually(within: 2) { writer.statistics.syncs == 1 })
        try writer.close()
        #expect(writer.statistics.syncs == 1)

        let second = try JournalWriter(path: path, experiment: "t", policy: policy)
        try second.startSync()  // nothing written since it was opened: nothing to sync
        try second.append(Support.record(1, success: true, value: [4]))
        try second.startSync()
        #expect(Support.eventually(within: 2) { second.statistics.syncs == 1 })
        try second.append(Support.record(2, success: false, value: []))
        try second.close()
        #expect(second.statistics.syncs == 2)
        #expect(try JournalReader(path: path).read().records.map(\.index) == [0, 1, 2])
    }

    @Test("a torn last record (the file cut mid-record) is ignored and the rest read")
    func tornTail() throws {
        let folder = try TemporaryFolder()
        let path = folder.sub("journal")
        let writer = try JournalWriter(path: path, experiment: "t")
        for index in 0..<10 { try writer.append(Support.record(index)) }
        try writer.close()
        let full = Support.fileSize(path)
        #expect(try JournalReader(path: path).read().records.count == 10)
        for cut in [1, 5, 11, 12, 20] {
            try Support.writeBytes(folder.sub("cut"), Array(try Support.readBytes(path).prefix(full - cut)))
            let contents = try JournalReader(path: folder.sub("cut")).read()
            #expect(contents.records.count == 9, "cut \(cut)")
            #expect(contents.records == (0..<9).map { Support.record($0) })
            guard case .tornTail? = contents.problem else {
                Issue.record("cut \(cut): \(String(describing: contents.problem))")
                continue
            }
            #expect(contents.ignoredBytes > 0)
            #expect(contents.validLength + contents.ignoredBytes == full - cut)
        }
        // Zeros after the last record (a file system's crash artifact) are a torn tail too.
        try Support.writeBytes(folder.sub("zeros"), try Support.readBytes(path) + [UInt8](repeating: 0, count: 4096))
        let zeros = try JournalReader(path: folder.sub("zeros")).read()
        #expect(zeros.records.count == 10)
        #expect(zeros.ignoredBytes == 4096)
        if case .tornTail? = zeros.problem {} else { Issue.record("\(String(describing: zeros.problem))") }
    }

    @Test("the checksum is the standard CRC-32, bit for bit, at every length and alignment")
    func checksumIsStandardCRC32() {
        // The standard check value, and the empty input.
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum([]) == 0)
        // Against the polynomial applied bit by bit, so that journals written before keep their checksums.
        func bitwise(_ bytes: ArraySlice<UInt8>) -> UInt32 {
            var crc: UInt32 = 0xFFFF_FFFF
            for byte in bytes {
                crc ^= UInt32(byte)
                for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
            }
            return ~crc
        }
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<3000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for (start, end) in [(0, 1), (1, 8), (3, 17), (5, 100), (7, 1031), (0, 3000)] {
            let slice = bytes[start..<end]
            let crc = slice.withUnsafeBytes { CRC32.checksum($0) }
            #expect(crc == bitwise(slice), "bytes \(start)..<\(end)")
        }
    }

    @Test("a bit flip in the last record's body is caught by the checksum")
    func bitFlipInLastRecord() throws {
        let folder = try TemporaryFolder()
        let path = folder.sub("journal")
        let writer = try JournalWriter(path: path, experiment: "t")
        for index in 0..<3 { try writer.append(Support.record(index)) }
        try writer.close()
        var bytes = try Support.readBytes(path)
        bytes[bytes.count - 3] ^= 0x10
        try Support.writeBytes(path, bytes)
        let contents = try JournalReader(path: path).read()
        #expect(contents.records.map(\.index) == [0, 1])
        guard case .tornTail(_, let reason)? = contents.problem else {
            Issue.record("\(String(describing: contents.problem))")
            return
        }
        #expect(reason.contains("checksum"))
    }

    @Test("damage before the last record stops reading there and is reported as corruption")
    func corruptionInTheMiddle() throws {
        let folder = try TemporaryFolder()
        let path = folder.sub("journal")
        let writer = try JournalWriter(path: path, experiment: "t")
        for index in 0..<6 { try writer.append(Support.record(index)) }
        try writer.close()
        let third = try recordOffsets(path)[2]
        var bytes = try Support.readBytes(path)
        bytes[third + JournalFormat.recordHeaderSize + 5] ^= 0xFF
        try Support.writeBytes(path, bytes)
        let contents = try JournalReader(path: path).read()
        #expect(contents.records.map(\.index) == [0, 1])
        #expect(contents.problem == .corruption(offset: third, reason: "the body fails its CRC-32 checksum"))
        #expect(contents.validLength == third)
        // A writer refuses to append after hidden damage, saying what can be done.
        let error = try #require(throws: ExperimentError.self) { try JournalWriter(path: path, experiment: "t") }
        #expect(error.code == .corruptJournal)
        #expect(error.description.contains("damaged at byte \(third)"))
        #expect(error.description.contains("truncate it to \(third) bytes"))
    }

    @Test("reopening after a crash cuts off the torn tail, then appends cleanly")
    func reopenAfterCrash() throws {
        let folder = try TemporaryFolder()
        let path = folder.sub("journal")
        let first = try JournalWriter(path: path, experiment: "t")
        for index in 0..<4 { try first.append(Support.record(index)) }
        try first.close()
        let goodLength = Support.fileSize(path)
        // Half of a fifth record, as a crash mid-write leaves it.
        var torn: [UInt8] = []
        _ = JournalFormat.append(Support.record(4), to: &torn)
        try Support.writeBytes(path, try Support.readBytes(path) + torn.prefix(torn.count / 2))

        let second = try JournalWriter(path: path, experiment: "t")
        #expect(second.recovered.records.count == 4)
        if case .tornTail? = second.recovered.problem {} else { Issue.record("no torn tail reported") }
        #expect(Support.fileSize(path) == goodLength)
        for index in 4..<8 { try second.append(Support.record(index)) }
        try second.close()
        let contents = try JournalReader(path: path).read()
        #expect(contents.problem == nil)
        #expect(contents.records == (0..<8).map { Support.record($0) })
    }

    @Test("a journal whose header was cut short is started afresh; a foreign file is refused")
    func headers() throws {
        let folder = try TemporaryFolder()
        try Support.writeBytes(folder.sub("short"), Array(JournalFormat.fileHeader.prefix(3)))
        let writer = try JournalWriter(path: folder.sub("short"), experiment: "t")
        try writer.append(Support.record(0))
        try writer.close()
        #expect(try JournalReader(path: folder.sub("short")).read().records.count == 1)

        try Support.writeBytes(folder.sub("foreign"), Array("hello, this is not a journal".utf8))
        #expect(throws: ExperimentError.self) { try JournalWriter(path: folder.sub("foreign"), experiment: "t") }
    }

    @Test("an append after close is refused")
    func closed() throws {
        let folder = try TemporaryFolder()
        let writer = try JournalWriter(path: folder.sub("journal"), experiment: "t")
        try writer.close()
        let error = try #require(throws: ExperimentError.self) { try writer.append(Support.record(0)) }
        #expect(error.code == .notOpen)
    }

    /// Offsets of every record in a journal file.
    private func recordOffsets(_ path: String) throws -> [Int] {
        let bytes = try Support.readBytes(path)
        var offsets: [Int] = []
        var offset = JournalFormat.fileHeader.count
        while offset < bytes.count {
            offsets.append(offset)
            let length =
                Int(bytes[offset + 4]) | Int(bytes[offset + 5]) << 8 | Int(bytes[offset + 6]) << 16 | Int(
                    bytes[offset + 7]
                ) << 24
            offset += JournalFormat.recordHeaderSize + length
        }
        return offsets
    }
}
