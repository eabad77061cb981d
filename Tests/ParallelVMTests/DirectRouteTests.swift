import Foundation
import Testing

/// The direct route under mpirun on one host: the spawner's spawn requests, messages and results reach
/// task processes through shared memory, not through their worker ranks. The fault, timeout, kill and
/// lost-worker tests run on this route too, since it is the default on the spawner's host.
@Suite(.serialized)
struct DirectRouteTests {
    private func run(isolation: String) throws -> RunOutput {
        let output = try MPIRun.scenario(
            "direct-route",
            ranks: 3,
            environment: ["SCENARIO_DEBUG": "2", "SCENARIO_ISOLATION": isolation],
            timeout: 120
        )
        #expect(output.status == 0, "\(output)")
        #expect(!output.timedOut, "\(output)")
        #expect(output.value("sum") == String(2 * 299 * 300 / 2), "\(output)")
        #expect(
            output.value("echoed") == "0,1,1000,61440,70000,200000,300000,2000000,5,100,count 10",
            "messages of every size come back whole and in order: \(output)"
        )
        if isolation == "process" {
            // The reader sleeps 3 s before it reads: the spawner did not wait for it (an in-process task's
            // worker rank does not take in messages while the task runs).
            #expect((Double(output.value("sendingSeconds") ?? "") ?? 99) < 2, "\(output)")
        }
        #expect(
            output.value("readerGot") == (0..<12).map { String(50_000 + $0) }.joined(separator: ","),
            "\(output)"
        )
        #expect(output.value("crossedToSpawner") == "3000000", "\(output)")
        #expect(output.value("crossedToTask") == "3000000", "\(output)")
        return output
    }

    private func directSpawns(_ output: RunOutput) -> Int {
        (output.stdout + output.stderr).components(separatedBy: "(directly to its task process)").count - 1
    }

    @Test func underProcessIsolationTasksGoDirectlyAndLeaveNoNameBehind() throws {
        let output = try run(isolation: "process")
        // 2 probes, 300 spawns one by one, the echo task, the reader and the crossing task.
        #expect(directSpawns(output) == 305, "\(output)")
        let workers = (output.value("workers") ?? "").split(separator: ",").compactMap { Int32($0) }
        #expect(workers.count == 2, "\(output)")
        #expect(output.value("namesDuringRun") == "", "the spawner left a segment's name in /dev/shm: \(output)")
        let left = ((try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? []).filter { name in
            workers.contains { name.hasPrefix("parallelvm-direct-\($0)-") }
        }
        #expect(left.isEmpty, "left in /dev/shm: \(left)")
    }

    @Test func inProcessTasksGoThroughTheirWorkerRanks() throws {
        let output = try run(isolation: "inProcess")
        #expect(directSpawns(output) == 0, "\(output)")
    }

    @Test func aTaskKilledMidMessageLeavesNoTornMessageForTheNext() throws {
        let output = try MPIRun.scenario("direct-torn", ranks: 2, timeout: 90)
        #expect(output.status == 0, "\(output)")
        #expect(output.value("flood") == "killed", "\(output)")
        #expect(output.value("sameSlot") == "true", "\(output)")
        #expect(output.value("greeting") == "hello", "\(output)")
        #expect(output.value("greeterValue") == "42", "\(output)")
    }
}
