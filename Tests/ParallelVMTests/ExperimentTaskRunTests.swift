import Foundation
import Glibc
import ParallelVM
import Testing

/// What tasks of an experiment leave in it, under mpirun: each task's log with its stdout, stderr and log
/// lines (a crashed one's too), and job outputs collected whole or not at all, a task killed mid-copy
/// included. Every run has a time limit, so a hang fails.
@Suite(.serialized)
struct ExperimentTaskRunTests {
    private func makeRoot() throws -> String {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent(
            "parallelvm-exptask-\(UUID().uuidString)"
        )
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        return root.path
    }

    /// `task=INDEX TASKID` lines: the task of each job.
    private func tasks(_ output: RunOutput) -> [Int: String] {
        var tasks: [Int: String] = [:]
        for line in output.values("task") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let index = Int(parts[0]) { tasks[index] = String(parts[1]) }
        }
        return tasks
    }

    /// The lines of `tasks/<task>.log`, without their timestamps.
    private func logLines(_ root: String, _ id: String, task: String) throws -> [String] {
        let file = task.replacingOccurrences(of: ":", with: "_") + ".log"
        let text = try String(contentsOfFile: "\(root)/\(id)/tasks/\(file)", encoding: .utf8)
        return text.split(separator: "\n").map { line in
            line.split(separator: " ", maxSplits: 1).last.map(String.init) ?? ""
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func eachTaskLogHoldsItsOwnStdoutStderrAndLogLinesAndHowACrashEnded() throws {
        let root = try makeRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let output = try MPIRun.scenario(
            "experiment-task-logs",
            ranks: 3,
            arguments: [root, "logs", "5", "1", "2"],
            timeout: 90
        )
        #expect(output.status == 0 && !output.timedOut, "\(output)")
        #expect(output.values("failure") == ["2 crashed"], "\(output)")
        let tasks = tasks(output)
        #expect(tasks.count == 5, "\(output)")
        // The task's output still reaches the mpirun terminal as well.
        #expect(output.stdout.contains("stdout of job 0 first"), "\(output)")
        for index in 0..<5 {
            let task = try #require(tasks[index], "\(output)")
            let lines = try logLines(root, "logs", task: task)
            let expected = [
                "[stdout] stdout of job \(index) first",
                "[stdout] stdout of job \(index) second",
                "[stderr] stderr of job \(index)",
                "[log] warning: log of job \(index) point=\(index)",
                "[stdout] unfinished stdout of job \(index)",
            ]
            for line in expected {
                #expect(lines.contains(line), "task \(task) of job \(index) lacks \(line): \(lines)")
            }
            let first = lines.firstIndex(of: expected[0]) ?? -1
            let second = lines.firstIndex(of: expected[1]) ?? -1
            #expect(first >= 0 && first < second, "\(lines)")
            #expect(lines.first?.hasPrefix("[session] task \(task) logged by process") == true, "\(lines)")
            // Chunks of one: a task's log holds its own job's text and nothing of another job's.
            for other in 0..<5 where other != index {
                #expect(
                    !lines.contains { $0.hasSuffix("of job \(other)") || $0.contains("of job \(other) ") },
                    "\(lines)"
                )
            }
            if index == 2 {
                #expect(
                    lines.contains { $0.hasPrefix("[stderr] ") && $0.contains("job 2 crashes on purpose") },
                    "\(lines)"
                )
                #expect(
                    lines.last?.hasPrefix("[session] task \(task) running 'experiment.chatty'") == true,
                    "\(lines)"
                )
            } else {
                #expect(lines.last == "[session] the task ended", "\(lines)")
            }
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func aChunkTaskLogHoldsEveryJobOfItsChunk() throws {
        let root = try makeRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let output = try MPIRun.scenario(
            "experiment-task-logs",
            ranks: 3,
            arguments: [root, "chunks", "6", "3"],
            timeout: 90
        )
        #expect(output.status == 0 && !output.timedOut, "\(output)")
        let tasks = tasks(output)
        #expect(tasks.count == 6 && Set(tasks.values).count == 2, "\(output)")
        for (task, indices) in Dictionary(grouping: tasks.keys, by: { tasks[$0]! }) {
            let lines = try logLines(root, "chunks", task: task)
            for index in 0..<6 {
                let present =
                    lines.contains("[stderr] stderr of job \(index)")
                    && lines.contains("[log] warning: log of job \(index) point=\(index)")
                    && lines.contains { $0.hasSuffix("stdout of job \(index) second") }
                #expect(present == indices.contains(index), "task \(task), job \(index): \(lines)")
            }
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func outputsAreCollectedWholeOrNotAtAllEvenWhenTheTaskIsKilledMidCopy() throws {
        let root = try makeRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let bytes = String(48 << 20)
        let killed = try MPIRun.scenario(
            "experiment-outputs",
            ranks: 3,
            arguments: [root, "outputs", "4", bytes, "1"],
            timeout: 120
        )
        #expect(killed.status == 0 && !killed.timedOut, "\(killed)")
        #expect(killed.value("partialSeen") == "0", "\(killed)")
        #expect(killed.value("doneBeforeCollected") == "0", "\(killed)")
        #expect(killed.values("failure") == ["1 crashed"], "\(killed)")
        // The failure names the job's own function, not the wrapper that collects.
        #expect(killed.values("failureFunction") == ["1 experiment.writer"], "\(killed)")
        #expect(killed.values("collected") == ["0", "2", "3"], "\(killed)")
        let outputs = try #require(killed.value("outputsFolder"))
        // Killed mid-copy: its staging folder is left, and no outputs/1 exists, not even in part.
        #expect(killed.value("leftovers") == "1", "\(killed)")
        #expect(!FileManager.default.fileExists(atPath: "\(outputs)/1"))

        // Run again: the failed job runs and is collected; opening the experiment removed the leftover.
        let again = try MPIRun.scenario(
            "experiment-outputs",
            ranks: 3,
            arguments: [root, "outputs", "4", bytes],
            timeout: 120
        )
        #expect(again.status == 0 && !again.timedOut, "\(again)")
        #expect(again.values("failure").isEmpty, "\(again)")
        #expect(again.values("collected") == ["0", "1", "2", "3"], "\(again)")
        #expect(again.value("leftovers") == "0" && again.value("partialSeen") == "0", "\(again)")
    }

    @Test(.timeLimit(.minutes(2)))
    func withoutMPIRunOutputsAreCollectedAndMisuseIsReported() throws {
        let root = try makeRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let local = try MPIRun.scenario(
            "experiment-outputs",
            ranks: 1,
            arguments: [root, "local", "3", "1000"],
            timeout: 60
        )
        #expect(local.status == 0 && !local.timedOut, "\(local)")
        #expect(local.values("collected") == ["0", "1", "2"], "\(local)")
        #expect(local.value("doneBeforeCollected") == "0", "\(local)")

        let misuse = try MPIRun.scenario("experiment-outputs-misuse", ranks: 1, arguments: [root], timeout: 60)
        #expect(misuse.status == 0, "\(misuse)")
        #expect(misuse.value("patternError") == "invalidPattern", "\(misuse)")
        #expect(misuse.value("patternMessage")?.contains("../escape") == true, "\(misuse)")
        let plain = try #require(misuse.value("plainFailure"), "\(misuse)")
        #expect(plain.hasPrefix("failed ") && plain.contains("only a dispatch with an experiment"), "\(misuse)")
    }
}
