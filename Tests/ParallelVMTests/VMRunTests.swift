import Foundation
import Testing

/// Real multi-rank runs of the VM under mpirun (2, 3 and 5 ranks, oversubscribed), each with a time limit.
@Suite(.serialized)
struct VMRunTests {
    @Test(arguments: [2, 3, 5])
    func slotAccountingAndCleanExit(ranks: Int) throws {
        let run = try MPIRun.scenario("slots", ranks: ranks)
        #expect(run.status == 0, "\(run)")
        #expect(!run.timedOut)
        #expect(run.value("slots") == "\(ranks)")
        #expect(run.value("free") == "\(ranks - 1)")
        #expect(run.value("freeSet") == (1..<ranks).map(String.init).joined(separator: ","))
        #expect(run.value("taskID") == "0:0")
        #expect(run.value("parent") == "none")
        #expect(run.value("spawned") == "\(ranks - 1)")
        #expect(run.value("freeAfterSpawn") == "0")
        #expect(run.value("hostsWithFreeAfterSpawn") == "0")
        #expect(run.value("moreSpawned") == "0")
        // Each TaskExit has freed its slot before it is returned: the free count rises one by one.
        #expect(run.values("freeAfterExit") == (1..<ranks).map(String.init))
        #expect(run.value("freeAtEnd") == "\(ranks - 1)")
        #expect(run.value("config") == "Hosts: 1, slots: \(ranks), free: \(ranks - 1)")
    }

    @Test(arguments: [2, 3, 5])
    func resultsArriveBeforeExitsAndAreCorrect(ranks: Int) throws {
        let run = try MPIRun.scenario("results", ranks: ranks, arguments: ["60"])
        #expect(run.status == 0, "\(run)")
        #expect(run.value("count") == "60")
        #expect(run.value("correct") == "true")
        #expect(run.value("orderViolations") == "0")
        #expect(run.value("freeAtEnd") == "\(ranks - 1)")
    }

    @Test func throwingTaskIsReportedAndWorkerKeepsServing() throws {
        let run = try MPIRun.scenario("throwing", ranks: 2)
        #expect(run.status == 0, "\(run)")
        #expect(run.value("success") == "false")
        #expect(run.value("errorType") == "vm_scenarios.Failure")
        #expect(run.value("errorMessage") == "failure: boom")
        #expect(run.value("errorFunction") == "failing")
        #expect(run.value("valueThrows") == "true")
        #expect(run.value("sameSlot") == "true")
        #expect(run.value("after") == "42")
    }

    @Test func unknownFunctionsAndBadArgumentsFailClearly() throws {
        let run = try MPIRun.scenario("unknown", ranks: 2)
        #expect(run.status == 0, "\(run)")
        #expect(run.value("unknownSuccess") == "false")
        #expect(run.value("unknownMessage")?.contains("'no-such-function' is not registered on rank 1") == true)
        #expect(run.value("decodeSuccess") == "false")
        #expect(
            run.value("decodeMessage")?.contains("function 'double' could not decode its arguments as Swift.Int")
                == true
        )
        #expect(run.value("scaled") == "3,6,9")
        #expect(
            run.value("wrongResultType")
                == "the result of 'vm_scenarios.Scaler' is a Swift.Array<Swift.Int>, not a Swift.String"
        )
    }

    @Test(arguments: [3, 5])
    func messagesBetweenTasksArriveInOrder(ranks: Int) throws {
        let run = try MPIRun.scenario("messaging", ranks: ranks, arguments: ["500"])
        #expect(run.status == 0, "\(run)")
        #expect(run.value("received") == "500")
        #expect(run.value("inOrder") == "true")
    }

    @Test func bytesSurviveTheRoundTripAtEverySize() throws {
        let run = try MPIRun.scenario(
            "bounce",
            ranks: 2,
            arguments: ["0", "1", "8", "1000", "32767", "32768", "100000", "3000000"]
        )
        #expect(run.status == 0, "\(run)")
        for size in [0, 1, 8, 1000, 32767, 32768, 100_000, 3_000_000] {
            #expect(run.value("echo\(size)") == "true", "size \(size)")
        }
    }

    @Test func largeMessagesCrossingEachOtherDoNotDeadlock() throws {
        let run = try MPIRun.scenario("crossing", ranks: 2, timeout: 60)
        #expect(run.status == 0, "\(run)")
        #expect(run.value("gotFromTask") == "4000000")
        #expect(run.value("taskGot") == "4000000")
    }

    @Test func receiveTimeoutSemantics() throws {
        let run = try MPIRun.scenario("timeouts", ranks: 2)
        #expect(run.status == 0, "\(run)")
        for key in [
            "pollEmpty", "pollSeconds", "timedEmpty", "timedWaited", "blockingGot", "blockingWaited", "sawExit",
            "afterGone",
        ] {
            #expect(run.value(key) == "true", "\(key)")
        }
        #expect(run.value("incomingBefore") == "false")
    }

    @Test func badInputGivesClearErrors() throws {
        let run = try MPIRun.scenario("bad-input", ranks: 2)
        #expect(run.status == 0, "\(run)")
        #expect(run.value("countZero")?.contains("count must be positive or nil, not 0") == true)
        #expect(run.value("countNegative")?.contains("not -2") == true)
        #expect(run.value("unknownHost")?.contains("unknown host(s) no-such-host") == true)
        #expect(run.value("invalidRank")?.contains("task 99:1") == true)
        #expect(run.value("neverSpawned")?.contains("slot 1 is free") == true)
        #expect(run.value("finished")?.contains("cannot send to task 1:1: it is not running") == true)
        #expect(run.value("unencodable")?.contains("cannot encode a message of type vm_scenarios.Unencodable") == true)
        #expect(
            run.value("unencodableArgs")?.contains("cannot encode arguments of type vm_scenarios.Unencodable") == true
        )
        #expect(run.value("freeAtEnd") == "1")
    }

    @Test func apiEdgesGiveClearErrors() throws {
        let run = try MPIRun.scenario("api-edges", ranks: 2)
        #expect(run.status == 0, "\(run)")
        #expect(run.value("nanTimeout")?.contains("receiveMessage: timeout must be a number of seconds") == true)
        #expect(run.value("nanTimeout")?.contains("NaN") == true)
        #expect(run.value("nanClear")?.contains("clearLocalStorage: timeout must be") == true)
        #expect(run.value("emptyTargets")?.contains("targets is empty") == true, "\(run)")
        #expect(run.value("blankHosts")?.contains(#"unknown host(s) "", " ""#) == true, "\(run)")
        #expect(run.value("negativeTask")?.contains("task IDs are never negative") == true)
        #expect(run.value("futureTask")?.contains("no task number 1000000 has been spawned yet") == true)
        #expect(run.value("parsedNegative") == "nil")
        #expect(run.value("infinityGotResult") == "true")
        #expect(run.value("infinityReturnedNil") == nil)
        #expect(run.value("task_nan")?.contains("TaskContext.receiveMessage: timeout must be") == true, "\(run)")
        #expect(run.value("task_future")?.contains("does not exist: no task number") == true, "\(run)")
        #expect(run.value("task_negative")?.contains("task IDs are never negative") == true)
        #expect(run.value("freeAtEnd") == "1")
    }

    @Test func messageForAFinishedTaskIsNotGivenToItsSuccessor() throws {
        let run = try MPIRun.scenario("stale", ranks: 3)
        #expect(run.status == 0, "\(run)")
        #expect(run.value("sameSlot") == "true")
        #expect(run.value("successorGot") == "42")
    }

    @Test func workerDiagnosticsReachTheSpawnerLogWithHostAndTask() throws {
        let run = try MPIRun.scenario("debug", ranks: 2, environment: ["SCENARIO_DEBUG": "2"])
        #expect(run.status == 0, "\(run)")
        let host = try #require(run.value("host"))
        let task = try #require(run.value("task"))
        // The default handler is swift-log's: standard error.
        let lines = (run.stdout + run.stderr).split(separator: "\n")
        #expect(lines.contains { $0.contains("host=\(host) task=\(task)") && $0.contains("chatty info") })
        #expect(lines.contains { $0.contains("host=\(host) task=\(task)") && $0.contains("chatty debug") })
    }

    @Test(arguments: [1, 2])
    func theProgramsLogHandlerGetsTaskLinesWithTheirMetadata(ranks: Int) throws {
        let run = try MPIRun.scenario("log-capture", ranks: ranks, environment: ["SCENARIO_LOG_CAPTURE": "1"])
        #expect(run.status == 0, "\(run)")
        let lines = run.values("log")
        if ranks > 1 {
            let task = try #require(run.value("task"))
            #expect(
                lines.contains {
                    $0.hasPrefix("warning|evaluated|") && $0.contains("point=7") && $0.contains("task=\(task)")
                        && $0.contains("host=")
                },
                "\(lines)"
            )
        }
        // A job run in the spawner's process logs too, tagged as the spawner's task.
        #expect(run.value("localValue") == "8")
        #expect(
            lines.contains { $0.hasPrefix("warning|evaluated|") && $0.contains("point=8") && $0.contains("task=0:0") },
            "\(lines)"
        )
    }

    @Test func debugZeroKeepsWorkerDiagnosticsQuiet() throws {
        let run = try MPIRun.scenario("debug", ranks: 2)
        #expect(run.status == 0, "\(run)")
        #expect(!(run.stdout + run.stderr).contains("chatty info"))
    }

    @Test(arguments: ["adaptive", "busy", "3000,100"])
    func idleWorkersServeRequestsOfAnySizeUnderEveryWaitPolicy(policy: String) throws {
        let run = try MPIRun.scenario("after-idle", ranks: 3, environment: ["PARALLELVM_WAIT": policy])
        #expect(run.status == 0, "\(run)")
        #expect(run.value("spawned") == "2")
        #expect(run.value("correct") == "2")
        #expect(run.value("again") == "8,8")
    }

    @Test func creatingAVMInsideATaskIsRefusedClearly() throws {
        let run = try MPIRun.scenario("vm-in-task", ranks: 2)
        #expect(run.status == 0, "\(run)")
        #expect(
            run.value("nested")
                == "a VM cannot be created inside a task on rank 1; use the TaskContext the function receives"
        )
        #expect(run.value("freeAtEnd") == "1")
    }

    @Test func programThatForgetsToFinalizeStillExitsCleanly() throws {
        let run = try MPIRun.scenario(
            "forget-finalize",
            ranks: 3,
            environment: ["SCENARIO_SKIP_FINALIZE": "1"],
            timeout: 30
        )
        #expect(!run.timedOut)
        #expect(run.status == 0, "\(run)")
        #expect(run.value("done") == "true")
    }

    @Test func mainThatThrowsEndsTheRunInsteadOfHanging() throws {
        let run = try MPIRun.scenario("main-throws", ranks: 3, timeout: 30)
        #expect(!run.timedOut, "\(run)")
        #expect(run.status != 0)
        #expect(run.value("throwing") == "true")
    }

    @Test func withoutMPIItIsOneProcessWithLocalSlots() throws {
        let run = try MPIRun.scenario("slots", ranks: 1, environment: ["PARALLELVM_LOCAL_SLOTS": "2"])
        #expect(run.status == 0, "\(run)")
        #expect(run.value("slots") == "3", "\(run)")
        #expect(run.value("free") == "2")
        #expect(run.value("spawned") == "2")
        #expect(run.value("exits") == "2")
        #expect(run.value("freeAtEnd") == "2")
    }

    @Test func withoutMPIAndWithoutLocalSlotsItIsOneProcessWithNoWorkers() throws {
        let run = try MPIRun.scenario("slots", ranks: 1, environment: ["PARALLELVM_LOCAL_SLOTS": "0"])
        #expect(run.status == 0, "\(run)")
        #expect(run.value("slots") == "1")
        #expect(run.value("free") == "0")
        #expect(run.value("spawned") == "0")
        #expect(run.value("exits") == "0")
        let refused = try MPIRun.scenario("slots", ranks: 1, environment: ["PARALLELVM_LOCAL_SLOTS": "many"])
        #expect(refused.status != 0, "\(refused)")
        #expect(refused.stderr.contains("PARALLELVM_LOCAL_SLOTS=many"), "\(refused)")
    }
}
