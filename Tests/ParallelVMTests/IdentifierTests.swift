import Glibc
import Testing

@testable import ParallelVM
@testable import ParallelVMCodec

@Suite struct IdentifierTests {
    @Test func taskIDPrintsAndParsesAsSlotColonNumber() {
        let id = TaskID(slot: 3, number: 17)
        #expect(id.description == "3:17")
        #expect(TaskID("3:17") == id)
        #expect(TaskID.spawner.description == "0:0")
        for bad in ["", "3", "3:", ":4", "a:b", "1:2:3", "-1:2"] {
            #expect(TaskID(bad) == nil, "\(bad)")
        }
    }

    @Test func taskIDsOrderByNumber() {
        #expect(TaskID(slot: 5, number: 1) < TaskID(slot: 1, number: 2))
    }

    @Test func taskIDRoundTripsThroughTheCodec() throws {
        let id = TaskID(slot: 2, number: 99)
        #expect(try BinaryDecoder.decode(TaskID.self, from: BinaryEncoder.encode(id)) == id)
    }
}

@Suite struct SlotBookTests {
    func book() -> SlotBook {
        SlotBook(slots: [
            .init(host: "a", cpus: 2, pid: 10, task: nil),
            .init(host: "a", cpus: 2, pid: 11, task: nil),
            .init(host: "b", cpus: 4, pid: 12, task: nil),
            .init(host: "b", cpus: 4, pid: 13, task: nil),
        ])
    }

    @Test func slotZeroIsTheSpawnersAndNeverFree() {
        let book = book()
        #expect(book.task(in: 0) == 0)
        #expect(book.freeSlots() == [1, 2, 3])
        #expect(book.hosts == ["a", "b"])
    }

    @Test func occupyAndReleaseTrackTaskNumbers() {
        var book = book()
        let first = book.occupy(2)
        let second = book.occupy(1)
        #expect(first == TaskID(slot: 2, number: 1))
        #expect(second == TaskID(slot: 1, number: 2))
        #expect(book.freeSlots() == [3])
        #expect(book.isRunning(first))
        // A stale exit (wrong number) does not free a slot that now runs another task.
        let staleReleased = book.release(TaskID(slot: 2, number: 7))
        #expect(!staleReleased)
        let released = book.release(first)
        let releasedTwice = book.release(first)
        #expect(released && !releasedTwice)
        #expect(book.freeSlots() == [2, 3])
        let spawnerReleased = book.release(.spawner)
        #expect(!spawnerReleased)
    }

    @Test func freeSlotsCanBeRestrictedToHosts() {
        var book = book()
        _ = book.occupy(2)
        #expect(book.freeSlots(on: ["b"]) == [3])
        #expect(book.freeSlots(on: ["a"]) == [1])
        #expect(book.freeSlots(on: ["c"]) == [])
    }

    @Test func formattedTableListsHostsAndSlots() {
        var book = book()
        _ = book.occupy(3)
        let text = book.formatted()
        #expect(text.contains("Hosts: 2, slots: 4, free: 2"))
        #expect(text.contains("a: 2 slot(s), 1 free, 2 CPU(s)"))
        #expect(text.contains("slot 3: pid 13, busy (task 3:1)"))
        #expect(text.contains("slot 0: pid 10, spawner (task 0:0)"))
    }
}

@Suite struct WireTests {
    @Test func frameHeaderAndFieldsRoundTrip() throws {
        var writer = WireWriter(kind: .taskResult, sourceTask: 12, destinationTask: 3)
        writer.append("double")
        writer.append(true)
        writer.append(Int32(-5))
        writer.append(lengthPrefixed: [1, 2, 3])
        writer.bytes.append(contentsOf: [9, 9])
        let envelope = try Envelope(sourceRank: 4, frame: writer.bytes, payload: nil)
        #expect(envelope.kind == .taskResult)
        #expect(envelope.sourceID == TaskID(slot: 4, number: 12))
        #expect(envelope.destinationTask == 3)
        var reader = envelope.reader
        #expect(try reader.readString() == "double")
        #expect(try reader.readBool())
        #expect(try reader.read(Int32.self) == -5)
        #expect(try reader.readLengthPrefixed() == [1, 2, 3])
        #expect(envelope.payload(after: &reader) == [9, 9])
    }

    @Test func truncatedFramesThrowInsteadOfTrapping() throws {
        var writer = WireWriter(kind: .user, sourceTask: 1, destinationTask: 2)
        writer.append("a type name")
        for length in 0..<writer.bytes.count {
            let prefix = Array(writer.bytes.prefix(length))
            if length < Wire.headerSize {
                #expect(throws: VMError.self) { try Envelope(sourceRank: 1, frame: prefix, payload: nil) }
            } else {
                #expect(throws: VMError.self) {
                    var reader = WireReader(prefix)
                    _ = try reader.readString()
                }
            }
        }
        #expect(throws: VMError.self) {
            try Envelope(sourceRank: 1, frame: [200] + Array(repeating: 0, count: 20), payload: nil)
        }
    }

    @Test func waitPolicyIsReadFromTheEnvironment() throws {
        #expect(try WaitPolicy.fromEnvironment([:]) == .adaptive)
        #expect(try WaitPolicy.fromEnvironment(["PARALLELVM_WAIT": "busy"]) == .busy)
        #expect(
            try WaitPolicy.fromEnvironment(["PARALLELVM_WAIT": "100,20"]) == WaitPolicy(spin: 0.0001, sleep: 0.00002)
        )
        #expect(throws: VMError.self) { try WaitPolicy.fromEnvironment(["PARALLELVM_WAIT": "fast"]) }
    }

    @Test func functionTableRefusesOneNameWithTwoSignatures() throws {
        var table = FunctionTable()
        try table.register(RemoteFunction("f") { (x: Int, _: TaskContext) in x }.erased)
        try table.register(RemoteFunction("f") { (x: Int, _: TaskContext) in x + 1 }.erased)
        #expect(throws: VMError.self) {
            try table.register(RemoteFunction("f") { (x: String, _: TaskContext) in x }.erased)
        }
        #expect(table.names == ["f"])
    }
}

@Suite struct DoorbellTests {
    @Test func ringingWakesTheWaiterAndWaitingAloneTimesOut() throws {
        let bell = try #require(Doorbell())
        #expect(!bell.wait(milliseconds: 1))
        bell.ring(pid: getpid(), token: bell.token)
        bell.ring(pid: getpid(), token: bell.token)
        #expect(bell.wait(milliseconds: 1000))
        // Both rings were emptied by one wait.
        #expect(!bell.wait(milliseconds: 1))
    }

    @Test func aRingForAnotherTokenDoesNotWakeUs() throws {
        let bell = try #require(Doorbell())
        bell.ring(pid: getpid(), token: bell.token &+ 1)
        #expect(!bell.wait(milliseconds: 5))
    }
}
