import Testing

@testable import ParallelVM
@testable import ParallelVMStorage

/// Each wire message read back as written, without MPI: the frame a rank sends is the frame its peer parses.
@Suite struct WireMessageTests {
    /// What the receiving transport makes of a frame and its payload (appended, as for small payloads).
    private func received(_ frame: WireWriter, payload: [UInt8] = [], from rank: Int = 1) throws -> Envelope {
        try Envelope(sourceRank: rank, frame: frame.bytes + payload, payload: nil)
    }

    @Test func spawnRequestRoundTrips() throws {
        let request = SpawnRequest(
            task: 42,
            sendBack: true,
            knownTasks: 43,
            function: "double",
            settings: [1, 2, 3],
            arguments: [9, 8, 7, 6]
        )
        let envelope = try received(request.header(), payload: request.arguments, from: 0)
        #expect(envelope.kind == .spawn)
        #expect(envelope.destinationTask == 42)
        let read = try SpawnRequest(envelope)
        #expect(read.task == 42)
        #expect(read.sendBack)
        #expect(read.knownTasks == 43)
        #expect(read.function == "double")
        #expect(read.settings == [1, 2, 3])
        #expect(read.arguments == [9, 8, 7, 6])
    }

    @Test func spawnRequestWithALargeSeparatePayload() throws {
        let request = SpawnRequest(
            task: 1,
            sendBack: false,
            knownTasks: 2,
            function: "f",
            settings: [],
            arguments: Array(repeating: 5, count: 70_000)
        )
        let envelope = try Envelope(sourceRank: 0, frame: request.header().bytes, payload: request.arguments)
        #expect(try SpawnRequest(envelope).arguments == request.arguments)
    }

    @Test func resultEndsItsTaskAndCarriesItsValue() throws {
        let (frame, payload) = TaskEnd.resultFrame(
            task: 7,
            function: "double",
            .value(type: "Swift.Int", bytes: [1, 2])
        )
        let envelope = try received(frame, payload: payload)
        #expect(TaskEnd.endsTask(envelope))
        #expect(TaskEnd.sentAt(envelope).map { $0 > 0 } == true)
        let result = try TaskEnd.result(from: envelope, host: "node1")
        #expect(result.success)
        #expect(result.function == "double")
        #expect(result.valueType == "Swift.Int")
        #expect(result.valueBytes == [1, 2])
    }

    @Test func aStorageErrorArrivesAsAStorageError() throws {
        let storage = StorageError(
            .ioFailure,
            path: "/scratch/x",
            reason: "could not be created: No space left on device"
        )
        let failure = TaskFailure(storage)
        let (frame, payload) = TaskEnd.resultFrame(task: 3, function: "sim", .failure(failure))
        let result = try TaskEnd.result(from: try received(frame, payload: payload, from: 2), host: "node2")
        let error = try #require(result.error)
        #expect(error.task == TaskID(slot: 2, number: 3))
        #expect(error.host == "node2")
        #expect(error.typeName == "ParallelVMStorage.StorageError")
        #expect(error.underlying as? StorageError == storage)
    }

    @Test func aVMErrorArrivesWithItsCode() throws {
        let failure = TaskFailure(VMError(.unknownFunction, "function 'x' is not registered"))
        let (frame, _) = TaskEnd.resultFrame(task: 3, function: "x", .failure(failure))
        let error = try #require(try TaskEnd.result(from: try received(frame), host: "h").error)
        #expect((error.underlying as? VMError)?.code == .unknownFunction)
        #expect(error.message == "function 'x' is not registered")
    }

    @Test func otherErrorsArriveAsTypeAndText() throws {
        struct Odd: Error, CustomStringConvertible { var description: String { "odd input 3" } }
        let (frame, _) = TaskEnd.resultFrame(task: 3, function: "x", .failure(TaskFailure(Odd())))
        let error = try #require(try TaskEnd.result(from: try received(frame), host: "h").error)
        #expect(error.typeName.hasSuffix("Odd"))
        #expect(error.message == "odd input 3")
        #expect(error.underlying == nil ? true : false)
    }

    @Test func exitRoundTrips() throws {
        let envelope = try received(TaskEnd.exitFrame(task: 9))
        #expect(envelope.kind == .taskExit)
        #expect(envelope.sourceID == TaskID(slot: 1, number: 9))
        #expect(TaskEnd.sentAt(envelope) != nil)
        #expect(!TaskEnd.endsTask(envelope))
    }

    @Test func userValueRoundTripsWithItsMark() throws {
        let (frame, payload) = try UserFrame.frame([1.5, 2.5], from: 4, to: TaskID(slot: 3, number: 5), knownTasks: 6)
        #expect(payload == nil)
        let envelope = try Envelope(sourceRank: 2, frame: frame, payload: nil)
        #expect(envelope.destinationTask == 5)
        #expect(UserFrame.knownTasks(envelope) == 6)
        let message = try UserFrame.message(from: envelope)
        #expect(try message.decode(as: [Double].self) == [1.5, 2.5])
        #expect(!message.holds(Int.self))
    }

    @Test func rawBytesTravelAsThey() throws {
        let (frame, payload) = try UserFrame.frame(
            [UInt8]([0, 255]),
            from: 0,
            to: TaskID(slot: 1, number: 1),
            knownTasks: 2
        )
        #expect(payload == nil)
        #expect(Array(frame.suffix(2)) == [0, 255])
        let envelope = try Envelope(sourceRank: 1, frame: frame, payload: nil)
        #expect(try UserFrame.message(from: envelope).decode(as: [UInt8].self) == [0, 255])
    }

    @Test func aLargeValueTravelsApartFromItsFrame() throws {
        let bytes = [UInt8](repeating: 7, count: Wire.separatePayloadThreshold)
        let (frame, payload) = try UserFrame.frame(bytes, from: 2, to: TaskID(slot: 1, number: 3), knownTasks: 4)
        #expect(payload == bytes)
        let envelope = try Envelope(sourceRank: 2, frame: frame, payload: payload)
        #expect(envelope.flags & Wire.flagSeparatePayload != 0)
        #expect(envelope.sourceTask == 2 && envelope.destinationTask == 3)
        #expect(UserFrame.knownTasks(envelope) == 4)
        #expect(try UserFrame.message(from: envelope).decode(as: [UInt8].self) == bytes)
        // The same layout as the fields WireWriter appends.
        var writer = WireWriter(kind: .user, flags: Wire.flagSeparatePayload, sourceTask: 2, destinationTask: 3)
        writer.append("")
        writer.append(true)
        writer.append(Int64(4))
        #expect(writer.bytes == frame)
    }

    @Test func logRecordKeepsItsMetadata() throws {
        let record = LogRecord(level: .notice, text: "evaluated", metadata: ["point": "7", "stage": "2"])
        let read = try LogRecord(try received(record.frame(from: 4)))
        #expect(read.level == .notice)
        #expect(read.text == "evaluated")
        #expect(read.metadata == ["point": "7", "stage": "2"])
    }

    @Test func helloAndWelcomeRoundTrip() throws {
        let hello = try Hello(try received(Hello(host: "node3", cpus: 64, pid: 4242, doorbell: 99).frame()))
        #expect(hello.host == "node3")
        #expect(hello.cpus == 64)
        #expect(hello.pid == 4242)
        #expect(hello.doorbell == 99)
        let welcome = try Welcome(try received(Welcome(host: "login", pid: 1, doorbell: 0).frame(), from: 0))
        #expect(welcome.host == "login")
        #expect(welcome.pid == 1)
        #expect(welcome.doorbell == 0)
        let bell = NetworkBell(port: 40123, addresses: [0x0100_007F, 0x0A00_D50A])
        let ringable = try Hello(
            try received(Hello(host: "node2", cpus: 2, pid: 7, doorbell: 5, bell: bell).frame())
        )
        #expect(ringable.bell.port == 40123)
        #expect(ringable.bell.addresses == [0x0100_007F, 0x0A00_D50A])
        let spawner = try Welcome(
            try received(Welcome(host: "node1", pid: 9, doorbell: 3, bell: bell).frame(), from: 0)
        )
        #expect(spawner.bell.port == 40123)
        #expect(spawner.bell.addresses.count == 2)
    }

    /// A doorbell rung over UDP (as from another host) wakes a waiter at once, and a wait without a ring
    /// returns false after its time.
    @Test func aNetworkRingWakesTheWaiter() throws {
        let waiter = try #require(Doorbell())
        let ringer = try #require(Doorbell())
        #expect(waiter.networkPort != 0)
        #expect(!waiter.wait(milliseconds: 1))
        let loopback = UInt32(0x7F00_0001).bigEndian
        ringer.ring(.network(NetworkBellTarget(address: loopback, port: waiter.networkPort)))
        #expect(waiter.wait(milliseconds: 5000))
        // Emptied: the next wait has nothing.
        #expect(!waiter.wait(milliseconds: 1))
    }

    @Test func clearReportRoundTrips() throws {
        let report = ClearReport(host: "node1", removed: ["/tmp/a"], failures: ["/tmp/b": "in use"])
        #expect(try ClearStorageReport.report(from: try received(ClearStorageReport.frame(report))) == report)
    }

    @Test func truncatedFramesAreErrorsNotCrashes() throws {
        let (frame, _) = TaskEnd.resultFrame(task: 1, function: "double", .value(type: "Swift.Int", bytes: []))
        let cut = Array(frame.bytes.prefix(frame.bytes.count - 3))
        let envelope = try Envelope(sourceRank: 1, frame: cut, payload: nil)
        #expect(throws: VMError.self) { try TaskEnd.result(from: envelope, host: "h") }
        #expect(throws: VMError.self) { try Envelope(sourceRank: 1, frame: [3, 0, 1], payload: nil) }
    }
}

/// The farm's bookkeeping, without threads or MPI.
@Suite struct FarmQueueTests {
    typealias Queue = FarmQueue<String, Int>

    @Test func unitsStartInOrderAndIndicesCountJobs() {
        var queue = Queue(
            slots: 2,
            lookaheadPerSlot: 0,
            unjoinedLimitPerSlot: nil,
            inputOpen: false,
            splitsUnits: false
        )
        #expect(queue.submit(["a", "b", "c"]) == 0)
        #expect(queue.submit(["d"]) == 3)
        #expect(queue.outstanding == 4)
        #expect(queue.unitsInFlight == 2)
        #expect(!queue.hasRoom)
        #expect(queue.nextUnit()?.map(\.index) == [0, 1, 2])
        #expect(queue.nextUnit()?.map(\.item) == ["d"])
        #expect(queue.nextUnit() == nil)
    }

    @Test func splittingGivesEveryJobItsOwnUnit() {
        var queue = Queue(slots: 4, lookaheadPerSlot: 0, unjoinedLimitPerSlot: nil, inputOpen: false, splitsUnits: true)
        _ = queue.submit(["a", "b", "c"])
        #expect(queue.unitsInFlight == 3)
        #expect(queue.nextUnit()?.count == 1)
    }

    @Test func roomFollowsLookaheadAndTheUnjoinedLimit() {
        var queue = Queue(slots: 2, lookaheadPerSlot: 1, unjoinedLimitPerSlot: 2, inputOpen: false, splitsUnits: false)
        for _ in 0..<3 { _ = queue.submit(["x"]) }
        #expect(queue.hasRoom)
        _ = queue.submit(["x"])
        #expect(!queue.hasRoom)
        // Finished but unjoined jobs still count against the unjoined limit (2 per slot = 4).
        for _ in 0..<4 {
            _ = queue.nextUnit()
            queue.complete([1], unitFinished: true)
        }
        #expect(queue.unitsInFlight == 0)
        #expect(!queue.hasRoom)
        #expect(queue.popFinished() == 1)
        #expect(queue.hasRoom)
    }

    @Test func finishedResultsComeOutInCompletionOrder() {
        var queue = Queue(
            slots: 1,
            lookaheadPerSlot: 0,
            unjoinedLimitPerSlot: nil,
            inputOpen: false,
            splitsUnits: false
        )
        _ = queue.submit(["a", "b"])
        _ = queue.nextUnit()
        queue.complete([20, 10], unitFinished: true)
        #expect(queue.popFinished() == 20)
        #expect(queue.popFinished() == 10)
        #expect(queue.popFinished() == nil)
        #expect(queue.isDrained)
    }

    @Test func putBackKeepsOrderUnlessStopped() {
        var queue = Queue(
            slots: 2,
            lookaheadPerSlot: 0,
            unjoinedLimitPerSlot: nil,
            inputOpen: false,
            splitsUnits: false
        )
        _ = queue.submit(["a"])
        _ = queue.submit(["b"])
        let first = queue.nextUnit()!
        queue.putBack([first])
        #expect(queue.nextUnit()?.first?.item == "a")
        queue.stop(closing: false)
        queue.putBack([first])
        #expect(queue.outstanding == 0)
        #expect(queue.unitsInFlight == 0)
        #expect(queue.submit(["c"]) == nil)
    }

    @Test func openInputIsNotDrainedUntilFinished() {
        var queue = Queue(slots: 1, lookaheadPerSlot: 0, unjoinedLimitPerSlot: nil, inputOpen: true, splitsUnits: false)
        #expect(!queue.isDrained)
        queue.finishInput()
        #expect(queue.isDrained)
    }

    @Test func stopDropsQueuedUnits() {
        var queue = Queue(
            slots: 1,
            lookaheadPerSlot: 3,
            unjoinedLimitPerSlot: nil,
            inputOpen: false,
            splitsUnits: false
        )
        _ = queue.submit(["a"])
        _ = queue.submit(["b", "c"])
        _ = queue.nextUnit()
        queue.stop(closing: true)
        #expect(queue.closing)
        #expect(queue.outstanding == 1)
        #expect(queue.unitsInFlight == 1)
        #expect(!queue.hasQueuedUnits)
    }

    // MARK: - Automatic chunks

    private func autoQueue(slots: Int, inputOpen: Bool = true) -> Queue {
        Queue(
            slots: slots,
            lookaheadPerSlot: 2,
            unjoinedLimitPerSlot: nil,
            inputOpen: inputOpen,
            splitsUnits: false,
            chunker: AutoChunker(targetSeconds: 0.002, maxJobs: 256),
            lookaheadInChunks: true
        )
    }

    @Test func autoChunksFollowTheMeasuredJobTimes() {
        var queue = autoQueue(slots: 2)
        for _ in 0..<2000 { _ = queue.submit(["x"]) }
        // Nothing measured yet: one job.
        #expect(queue.nextUnit()?.count == 1)
        // 10 µs per job: 200 jobs run for the 2 ms target.
        queue.recordUnit(jobs: 1, seconds: 10e-6)
        #expect(queue.nextUnit()?.count == 200)
        // Tinier still: the largest chunk.
        for _ in 0..<4 { queue.recordUnit(jobs: 200, seconds: 200 * 1e-7) }
        #expect(queue.nextUnit()?.count == 256)
        // Long jobs: one at a time within a few units.
        for _ in 0..<4 { queue.recordUnit(jobs: 1, seconds: 0.5) }
        #expect(queue.nextUnit()?.count == 1)
        // The indices stay in submission order across chunks.
        #expect(queue.nextUnit()?.first?.index == 1 + 200 + 256 + 1)
    }

    @Test func theLookaheadGrowsWithTheChunks() {
        var queue = autoQueue(slots: 2)
        #expect(queue.capacity == 2 * (1 + 2))
        queue.recordUnit(jobs: 1, seconds: 20e-6)
        // 100 jobs per chunk: two chunks per slot may wait.
        #expect(queue.capacity == 2 * (1 + 2 * 100))
    }

    @Test func tailChunksShrinkOnceTheInputHasEnded() {
        var queue = autoQueue(slots: 2)
        for _ in 0..<1000 { _ = queue.submit(["x"]) }
        queue.recordUnit(jobs: 1, seconds: 1e-6)
        queue.finishInput()
        var sizes: [Int] = []
        while let unit = queue.nextUnit() { sizes.append(unit.count) }
        #expect(sizes.reduce(0, +) == 1000)
        // Each chunk takes at most a quarter of what is left (half a slot's share), so sizes never grow
        // and the last ones are single jobs.
        var left = 1000
        for size in sizes {
            #expect(size <= max(1, (left + 3) / 4))
            left -= size
        }
        #expect(zip(sizes, sizes.dropFirst()).allSatisfy { $0 >= $1 })
        #expect(sizes.suffix(3) == [1, 1, 1])
        #expect(sizes.count < 100)
    }

    @Test func jobsOfAFailedAutoChunkStartAlone() {
        var queue = autoQueue(slots: 1)
        for _ in 0..<10 { _ = queue.submit(["x"]) }
        queue.recordUnit(jobs: 1, seconds: 1e-5)
        let chunk = queue.nextUnit()!
        #expect(chunk.count == 10)
        queue.putBackAlone(chunk)
        #expect(queue.unitsInFlight == 10)
        #expect(queue.queuedJobs == 10)
        var sizes: [Int] = []
        while let unit = queue.nextUnit() { sizes.append(unit.count) }
        #expect(sizes == Array(repeating: 1, count: 10))
    }

    /// Runs `durations` (seconds per job) through an auto-chunking queue on `slots` simulated slots, each
    /// unit costing `overhead` on top of its jobs, and returns when each slot finished its last unit. The
    /// clock is simulated: the test looks at the schedule the queue makes, not at real time.
    private func simulate(_ durations: [Double], slots: Int, overhead: Double) -> (finish: [Double], units: Int) {
        var queue = autoQueue(slots: slots, inputOpen: true)
        for index in durations.indices { _ = queue.submit(["\(index)"]) }
        queue.finishInput()
        var freeAt = Array(repeating: 0.0, count: slots)
        var units = 0
        while true {
            let slot = freeAt.indices.min { freeAt[$0] < freeAt[$1] }!
            guard let unit = queue.nextUnit() else { break }
            let seconds = overhead + unit.reduce(0) { $0 + durations[$1.index] }
            queue.recordUnit(jobs: unit.count, seconds: seconds)
            queue.complete(unit.map { _ in 0 }, unitFinished: true)
            freeAt[slot] += seconds
            units += 1
        }
        return (freeAt, units)
    }

    @Test func mixedJobsEndBalancedAcrossSlots() {
        // 4000 jobs: mostly 50 µs, every 7th 1 ms, every 97th 20 ms, in a fixed pseudo-random order.
        var state: UInt64 = 42
        let durations = (0..<4000).map { _ -> Double in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            let draw = Int(state >> 33) % 679
            return draw % 97 == 0 ? 0.020 : draw % 7 == 0 ? 0.001 : 50e-6
        }
        let (finish, units) = simulate(durations, slots: 4, overhead: 20e-6)
        let total = durations.reduce(0, +)
        // No slot ends more than the longest job (plus the per-unit cost) after another one.
        #expect(finish.max()! - finish.min()! <= 0.020 + 0.002, "\(finish)")
        #expect(finish.max()! <= total / 4 + 0.025, "\(finish), total \(total)")
        // And the jobs did travel in chunks.
        #expect(units < durations.count / 4, "\(units) units")
    }
}
