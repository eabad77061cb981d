import Foundation
import Testing

/// The dispatcher and Farm under mpirun with 2, 3 and 5 ranks, and without mpirun and without local slots
/// (1 rank: jobs run in the process; `OneProcessTests` has the local slots). Each run has a time limit, so a
/// hang fails.
@Suite(.serialized)
struct DispatchTests {
    static let ranks = [1, 2, 3, 5]

    /// Runs a dispatch scenario and checks that it ended cleanly.
    private func run(_ name: String, ranks: Int, _ arguments: [String] = [], timeout: Double = 90) throws -> RunOutput {
        let output = try MPIRun.scenario(
            name,
            ranks: ranks,
            arguments: arguments,
            environment: ranks == 1 ? ["PARALLELVM_LOCAL_SLOTS": "0"] : [:],
            timeout: timeout
        )
        #expect(output.status == 0, "\(output)")
        #expect(!output.timedOut, "\(output)")
        return output
    }

    private func placement(_ ranks: Int) -> String { ranks == 1 ? "local" : "remote" }

    @Test(arguments: ranks)
    func resultsComeInJobOrderAndTheCollectorSeesEachJobOnce(ranks: Int) throws {
        let output = try run("dispatch-order", ranks: ranks, ["100", "1", "1"])
        #expect(output.value("count") == "100")
        #expect(output.value("ordered") == "true")
        #expect(output.value("extrasKept") == "true")
        #expect(output.value("collectorSawEachOnce") == "true")
        #expect(output.value("placement") == placement(ranks))
        #expect(output.value("freeAtEnd") == "\(ranks - 1)")
    }

    @Test(arguments: ranks)
    func autoChunksKeepJobOrderAndTheCollectorSeesEachJobOnce(ranks: Int) throws {
        let output = try run("dispatch-order", ranks: ranks, ["2000", "auto", "1"])
        #expect(output.value("count") == "2000")
        #expect(output.value("ordered") == "true")
        #expect(output.value("extrasKept") == "true")
        #expect(output.value("collectorSawEachOnce") == "true")
        #expect(output.value("freeAtEnd") == "\(ranks - 1)")
    }

    @Test(arguments: ranks)
    func autoChunksJoinTinyJobsWithoutACollector(ranks: Int) throws {
        let output = try run("dispatch-many", ranks: ranks, ["5000", "auto"], timeout: 120)
        #expect(output.value("ordered") == "true")
        #expect(output.value("freeAtEnd") == "\(ranks - 1)")
        if ranks > 1 {
            // Tiny jobs travel in chunks: fewer tasks than jobs.
            let tasks = Int(output.value("tasks") ?? "") ?? 0
            #expect(tasks > 0 && tasks < 5000, "\(tasks) tasks")
        }
    }

    /// `dispatch-stop` uses the default chunk size, `.auto`: with a collector it takes jobs no further ahead
    /// than with chunks of 1, so the jobs after the stop stay few.
    @Test(arguments: ranks)
    func theCollectorStopsAnEndlessGenerator(ranks: Int) throws {
        let output = try run("dispatch-stop", ranks: ranks)
        #expect(output.value("ordered") == "true")
        #expect(output.value("reached") == "true")
        #expect(output.value("collectorSawReturned") == "true")
        // 76 jobs reach 150; the jobs already running or queued when it came are few.
        let count = Int(output.value("count") ?? "") ?? 0
        #expect(count >= 76 && count <= 76 + 2 * max(ranks - 1, 2) + 2, "\(count)")
        #expect(output.value("freeAtEnd") == "\(ranks - 1)")
    }

    @Test(arguments: ranks)
    func failingJobsAreNamedResultsAndFailFastThrows(ranks: Int) throws {
        let output = try run("dispatch-fail", ranks: ranks)
        #expect(output.value("count") == "20")
        #expect(output.value("failedIndices") == "3,8,13,18")
        #expect(output.value("successesCorrect") == "true")
        #expect(output.value("errorJob") == "dispatch.check(3)")
        #expect(output.value("errorCode") == "failed")
        #expect(output.value("errorType") == "vm_scenarios.DispatchFailure")
        #expect(output.value("errorMessage") == "no good: 3")
        // Fail-fast throws the first failure to complete: any failing job (index 3 mod 5), never a success.
        let failFast = output.value("failFast") ?? ""
        let failedIndex = Int(failFast.dropFirst("dispatch.check(".count).dropLast()) ?? -1
        #expect(failFast.hasPrefix("dispatch.check(") && failedIndex % 5 == 3, "\(failFast)")
        #expect(output.value("unknownCode") == "unknownFunction")
        #expect(output.value("unknownMessage")?.contains("function 'dispatch.unregistered' is not registered") == true)
        #expect(output.value("afterUnknown") == "4")
        #expect(output.value("single") == "42")
        #expect(output.value("singleError") == "dispatch.check(8)")
        #expect(output.value("freeAtEnd") == "\(ranks - 1)")
    }

    @Test(arguments: ranks)
    func chunkedAndLocalDispatchGiveTheSameResults(ranks: Int) throws {
        let output = try run("dispatch-chunk", ranks: ranks, ["500"])
        #expect(output.value("count") == "500")
        #expect(output.value("chunkedEqual") == "true")
        #expect(output.value("localEqual") == "true")
        #expect(output.value("plainPlacement") == placement(ranks))
        #expect(output.value("localPlacement") == "local")
        if ranks > 1 {
            // 500 jobs in chunks of 7 are 72 tasks.
            #expect(output.value("chunkedTasks") == "72")
        }
    }

    @Test(arguments: ranks)
    func asyncSequencesThatProduceSlowlyOrFromResults(ranks: Int) throws {
        let output = try run("dispatch-async-sequence", ranks: ranks)
        #expect(output.value("slowOrdered") == "true")
        #expect(output.value("fedOrdered") == "true")
    }

    @Test(arguments: ranks)
    func thousandsOfTinyJobsDoNotHang(ranks: Int) throws {
        for chunk in ["1", "100"] {
            let output = try run("dispatch-many", ranks: ranks, ["5000", chunk], timeout: 120)
            #expect(output.value("ordered") == "true", "chunk \(chunk)")
            #expect(output.value("freeAtEnd") == "\(ranks - 1)")
        }
    }

    @Test(arguments: ranks)
    func anAsyncLoopOnAFarmStopsAndJoinsTheRest(ranks: Int) throws {
        let output = try run("dispatch-asyncloop", ranks: ranks)
        #expect(output.value("reached") == "true")
        #expect(output.value("joinedAll") == "true")
        #expect(output.value("correct") == "true")
        let slots = Int(output.value("slots") ?? "") ?? 0
        if ranks > 1 { #expect(slots == ranks - 1) }
        #expect(Int(output.value("maxRunning") ?? "") ?? 0 <= slots)
        #expect(output.value("freeAtEnd") == "\(ranks - 1)")
    }

    @Test(arguments: [1, 3])
    func asyncFunctionsRunConcurrentlyInProcessAndOnWorkers(ranks: Int) throws {
        let output = try run("dispatch-local-async", ranks: ranks)
        #expect(output.value("ordered") == "true")
        #expect(output.value("placement") == "local")
        #expect(output.value("concurrent") == "true")
        #expect(output.value("remoteAsync") == "42")
    }

    @Test(arguments: [2, 3])
    func userMessagesDuringADispatchStayForReceiveMessage(ranks: Int) throws {
        let output = try run("dispatch-messages", ranks: ranks)
        #expect(output.value("results") == "0,1,2,3,4")
        #expect(output.value("notes") == "note 0,note 1,note 2,note 3,note 4")
    }
}
