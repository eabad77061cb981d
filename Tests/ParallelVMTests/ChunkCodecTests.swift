import Testing

@testable import ParallelVM

/// A chunk's jobs and outcomes read back as written, and damaged chunks refused with an error that says
/// which entry could not be read.
@Suite struct ChunkCodecTests {
    @Test func jobsRoundTripAndRepeatedNamesAreWrittenOnce() throws {
        var writer = ChunkWriter(capacity: 0)
        let jobs: [(String, [UInt8])] = [
            ("double", [1, 2, 3]),
            ("double", []),
            ("Module.Ünïcode", Array(repeating: 7, count: 300)),
            ("double", [9]),
            ("", [5]),
        ]
        for (function, arguments) in jobs { try writer.appendJob(function: function, arguments: arguments) }
        let bytes = writer.finished()
        var reader = try ChunkReader(bytes, of: "jobs")
        #expect(reader.count == jobs.count)
        for (function, arguments) in jobs {
            let read = try reader.nextJob()
            #expect(read.function == function)
            #expect(read.arguments == arguments)
        }
        // One more than it holds is an error, not a crash.
        #expect(throws: VMError.self) { try reader.nextJob() }
        // The second "double" repeats the first: 4 bytes for it instead of 4 + 6.
        var spelled = ChunkWriter(capacity: 0)
        try spelled.appendJob(function: "double", arguments: [])
        try spelled.appendJob(function: "triple", arguments: [])
        var repeated = ChunkWriter(capacity: 0)
        try repeated.appendJob(function: "double", arguments: [])
        try repeated.appendJob(function: "double", arguments: [])
        #expect(spelled.finished().count - repeated.finished().count == 6)
    }

    @Test func outcomesRoundTrip() throws {
        var writer = ChunkWriter(capacity: 0)
        writer.appendOutcome(success: true, typeName: "Swift.Int", value: [1, 0, 0, 0, 0, 0, 0, 0], message: "")
        writer.appendOutcome(success: true, typeName: "Swift.Int", value: [2], message: "")
        writer.appendOutcome(success: false, typeName: "Demo.Failure", value: [], message: "bad input: ∞")
        writer.appendOutcome(success: true, typeName: "Swift.Int", value: [], message: "")
        var reader = try ChunkReader(writer.finished(), of: "outcomes")
        #expect(reader.count == 4)
        let first = try reader.nextOutcome()
        #expect(first.success && first.typeName == "Swift.Int" && first.value == [1, 0, 0, 0, 0, 0, 0, 0])
        let second = try reader.nextOutcome()
        #expect(second.success && second.typeName == "Swift.Int" && second.value == [2])
        let third = try reader.nextOutcome()
        #expect(!third.success && third.typeName == "Demo.Failure" && third.message == "bad input: ∞")
        let fourth = try reader.nextOutcome()
        #expect(fourth.success && fourth.typeName == "Swift.Int" && fourth.value.isEmpty)
    }

    @Test func anEmptyChunkHoldsNoEntries() throws {
        var empty = ChunkWriter(capacity: 0)
        let reader = try ChunkReader(empty.finished(), of: "jobs")
        #expect(reader.count == 0)
    }

    @Test func damagedChunksAreRefusedWithTheEntryNamed() throws {
        var writer = ChunkWriter(capacity: 0)
        try writer.appendJob(function: "double", arguments: [1, 2, 3, 4])
        try writer.appendJob(function: "double", arguments: [5, 6, 7, 8])
        let bytes = writer.finished()

        // Cut inside the second job: the first still reads, the second is named as malformed.
        var cut = try ChunkReader(Array(bytes.dropLast(2)), of: "jobs")
        #expect(try cut.nextJob().arguments == [1, 2, 3, 4])
        let error = #expect(throws: VMError.self) { try cut.nextJob() }
        #expect(error?.code == .encoding)
        #expect(error?.message.contains("jobs") == true)
        #expect(error?.message.contains("entry 2 of 2") == true)

        // No count at all.
        #expect(throws: VMError.self) { try ChunkReader([1, 2], of: "jobs") }
        // A count far beyond what the bytes can hold.
        let huge = #expect(throws: VMError.self) { try ChunkReader([0xFF, 0xFF, 0, 0, 1, 2, 3, 4], of: "outcomes") }
        #expect(huge?.message.contains("65535 entries in 8 bytes") == true)
        // A first entry that repeats a name before it.
        var noPrevious: [UInt8] = [1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]
        var reader = try ChunkReader(noPrevious, of: "jobs")
        let repeatError = #expect(throws: VMError.self) { try reader.nextJob() }
        #expect(repeatError?.message.contains("repeats a name") == true)
        // A length past the end.
        noPrevious = [1, 0, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0]
        reader = try ChunkReader(noPrevious, of: "jobs")
        #expect(throws: VMError.self) { try reader.nextJob() }
    }
}
