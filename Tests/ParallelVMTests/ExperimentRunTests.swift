import Foundation
import Glibc
import ParallelVM
import Synchronization
import Testing

/// Dispatch with an experiment under mpirun (and without it): resume after kill -9, changed arguments,
/// the lock between two runs. Every run has a time limit, so a hang fails.
@Suite(.serialized)
struct ExperimentRunTests {
    /// A fresh folder for the experiments of one test.
    private func makeRoot() throws -> String {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("parallelvm-exp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        return root.path
    }

    private func sweep(
        _ root: String,
        _ id: String,
        jobs: Int,
        milliseconds: Int,
        changedFrom: Int? = nil,
        ranks: Int = 3,
        form: String = "sequence"
    ) throws -> RunOutput {
        let arguments = [root, id, String(jobs), String(milliseconds)] + (changedFrom.map { [String($0)] } ?? [])
        let output = try MPIRun.scenario(
            "experiment-sweep",
            ranks: ranks,
            arguments: arguments,
            environment: ["SWEEP_FORM": form],
            timeout: 90
        )
        #expect(output.status == 0, "\(output)")
        #expect(!output.timedOut, "\(output)")
        return output
    }

    private func csv(_ root: String, _ id: String) -> String? {
        try? String(
            contentsOfFile: URL(fileURLWithPath: root).appendingPathComponent("\(id).csv").path,
            encoding: .utf8
        )
    }

    private func journalIndices(_ root: String, _ id: String) throws -> [Int] {
        let path = URL(fileURLWithPath: root).appendingPathComponent(id).appendingPathComponent("journal").path
        return try JournalReader(path: path, experiment: id).read().records.map(\.index)
    }

    /// `sequence`: the jobs as an array; `fed`: an AsyncSequence that the collector feeds, one job per result.
    @Test(.timeLimit(.minutes(3)), arguments: ["sequence", "fed"])
    func aSweepKilledWithMinusNineResumesWithoutLosingOrRepeatingJobs(form: String) throws {
        let root = try makeRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let jobs = 40
        let clean = try sweep(root, "clean", jobs: jobs, milliseconds: 150, form: form)
        #expect(clean.value("ran") == "\(jobs)" && clean.value("reused") == "0", "\(clean)")

        // The first run is killed with SIGKILL (mpirun's process group, and each rank's) once K jobs have finished.
        let minimumDone = 10
        let killedAfter = Mutex(-1)
        let survivors = Mutex(0)
        let finished = DispatchSemaphore(value: 0)
        let script = MPIRun.packageRoot.appendingPathComponent("scripts/mpirun.sh").path
        let killed = try MPIRun.run(
            script,
            [
                "-n", "3", "-x", "SWEEP_FORM=\(form)", MPIRun.scenarios, "experiment-sweep", root, "resumed",
                String(jobs), "150",
            ],
            timeout: 90,
            during: { pid, marker, stdout in
                // run() removes the output file as soon as the script ends: count before the kill.
                let deadline = Date().addingTimeInterval(60)
                var done = 0
                while Date() < deadline && done < minimumDone {
                    let text = (try? String(contentsOf: stdout, encoding: .utf8)) ?? ""
                    done = text.split(separator: "\n").filter({ $0.hasPrefix("done=") }).count
                    usleep(10_000)
                }
                killedAfter.withLock { $0 = done }
                // scripts/mpirun.sh starts mpirun as a job of its own, so mpirun leads its own process group.
                guard let mpirun = MPIRun.childProcesses(of: pid).first(where: { getpgid($0) == $0 }),
                    getpgid(mpirun) != getpgid(0)
                else {
                    finished.signal()
                    return
                }
                // Open MPI starts each rank in a process group of its own: kill those groups too, at once, as a
                // scheduler ending the job does.
                let ranks = MPIRun.childProcesses(of: mpirun).filter { getpgid($0) == $0 }
                kill(-mpirun, SIGKILL)
                for rank in ranks { kill(-rank, SIGKILL) }
                // Wait until every process of the run is gone, so the journal is read only once nothing can
                // write it.
                let gone = Date().addingTimeInterval(10)
                while Date() < gone && MPIRun.processes(marked: marker).contains(where: { $0 != pid }) {
                    usleep(10_000)
                }
                survivors.withLock { $0 = MPIRun.processes(marked: marker).filter { $0 != pid }.count }
                MPIRun.killProcesses(marked: marker)
                finished.signal()
            }
        )
        // The script ends with mpirun, possibly before the callback saw every rank gone.
        #expect(finished.wait(timeout: .now() + 80) == .success)
        let doneBeforeKill = killedAfter.withLock { $0 }
        #expect(survivors.withLock { $0 } == 0, "processes of the run outlived the kill of mpirun's group")
        #expect(doneBeforeKill >= minimumDone, "the run was not killed mid-sweep: \(killed)")
        #expect(killed.value("ran") == nil, "the run finished before it was killed: \(killed)")
        let journaledBeforeKill = try journalIndices(root, "resumed")
        #expect(journaledBeforeKill.count >= doneBeforeKill)
        #expect(journaledBeforeKill.count < jobs, "every job finished before the kill")

        let resumed = try sweep(root, "resumed", jobs: jobs, milliseconds: 150, form: form)
        let ran = Int(resumed.value("ran") ?? "") ?? -1
        let reused = Int(resumed.value("reused") ?? "") ?? -1
        // Nothing journaled is lost, nothing journaled runs again, nothing is left out.
        #expect(reused == journaledBeforeKill.count, "\(resumed)")
        #expect(reused >= doneBeforeKill)
        #expect(ran + reused == jobs, "\(resumed)")
        #expect(resumed.values("done").count == ran)
        #expect(resumed.value("reusedFlagged") == "\(reused)" && resumed.value("reusedSeen") == "\(reused)")
        #expect(resumed.value("ordered") == "true")
        let indices = try journalIndices(root, "resumed")
        #expect(indices.count == jobs && Set(indices) == Set(0..<jobs), "journal indices: \(indices)")
        #expect(csv(root, "resumed") != nil && csv(root, "resumed") == csv(root, "clean"))
    }

    @Test(.timeLimit(.minutes(2)))
    func anInterruptedSweepHasJournaledEveryJobItReportedDone() throws {
        let root = try makeRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let script = MPIRun.packageRoot.appendingPathComponent("scripts/mpirun.sh").path
        let doneAtSignal = Mutex(-1)
        let interrupted = try MPIRun.run(
            script,
            ["-n", "3", MPIRun.scenarios, "experiment-sweep", root, "interrupted", "400", "20"],
            timeout: 90,
            during: { pid, _, stdout in
                var done = 0
                let deadline = Date().addingTimeInterval(60)
                while Date() < deadline && done < 30 {
                    let text = (try? String(contentsOf: stdout, encoding: .utf8)) ?? ""
                    done = text.split(separator: "\n").filter({ $0.hasPrefix("done=") }).count
                    usleep(2_000)
                }
                doneAtSignal.withLock { $0 = done }
                kill(pid, SIGTERM)
            }
        )
        #expect(interrupted.status == 143, "\(interrupted)")
        #expect(interrupted.value("ran") == nil, "the sweep finished before the signal: \(interrupted)")
        #expect(doneAtSignal.withLock { $0 } >= 30)
        // Every job the collector saw finish was journaled, the last few milliseconds' included.
        let reported = Set(interrupted.values("done").compactMap(Int.init))
        let journaled = Set(try journalIndices(root, "interrupted"))
        #expect(reported.count >= 30 && reported.isSubset(of: journaled), "\(reported.subtracting(journaled))")
        let log = try String(contentsOfFile: "\(root)/interrupted/experiment.log", encoding: .utf8)
        #expect(log.contains("run interrupted by SIGTERM; the journal is synced"), "\(log)")
    }

    /// A stopped run's manifest names the inputs of every job it took, those that did not run included:
    /// an array's jobs are read again from it for their keys, a lazy collection's are kept; both agree.
    /// Whether a taken job is still unstarted when the stop comes is a race, so the run is repeated (up to
    /// four times) until one stops with jobs that did not run; every run's identities must agree.
    @Test(.timeLimit(.minutes(3)))
    func aStoppedRunsManifestKeysTheJobsThatDidNotRun() throws {
        var stoppedEarly = false
        for _ in 0..<4 where !stoppedEarly {
            let root = try makeRoot()
            defer { try? FileManager.default.removeItem(atPath: root) }
            let output = try MPIRun.scenario("experiment-stop-inputs", ranks: 3, arguments: [root], timeout: 90)
            #expect(output.status == 0 && !output.timedOut, "\(output)")
            #expect(output.value("full.jobs") == "24" && output.value("full.journaled") == "24", "\(output)")
            let taken = try #require(output.value("array.jobs").flatMap(Int.init), "\(output)")
            let ran = try #require(output.value("array.journaled").flatMap(Int.init), "\(output)")
            #expect(ran <= taken && taken < 24, "\(output)")
            #expect(output.value("lazy.jobs") == "\(taken)", "\(output)")
            let inputs = try #require(output.value("array.inputs"), "\(output)")
            #expect(inputs.count == 16 && inputs == output.value("lazy.inputs"), "\(output)")
            #expect(inputs != output.value("full.inputs"), "\(output)")
            stoppedEarly = ran < taken
        }
        #expect(stoppedEarly, "no run stopped with taken jobs that did not run")
    }

    @Test(.timeLimit(.minutes(2)))
    func jobsWithChangedArgumentsRunAgain() throws {
        let root = try makeRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let first = try sweep(root, "sweep", jobs: 12, milliseconds: 10)
        #expect(first.value("ran") == "12" && first.value("reused") == "0", "\(first)")
        let again = try sweep(root, "sweep", jobs: 12, milliseconds: 10)
        #expect(again.value("ran") == "0" && again.value("reused") == "12", "\(again)")
        #expect(csv(root, "sweep")?.contains("\n11,122\n") == true)
        // Jobs 8 to 11 get other arguments: only they run, with their new values.
        let changed = try sweep(root, "sweep", jobs: 12, milliseconds: 10, changedFrom: 8)
        #expect(changed.value("ran") == "4" && changed.value("reused") == "8", "\(changed)")
        #expect(changed.values("done").sorted() == ["10", "11", "8", "9"])
        #expect(csv(root, "sweep")?.contains("\n7,50\n8,66\n") == true, "\(csv(root, "sweep") ?? "")")
    }

    @Test(.timeLimit(.minutes(2)))
    func aSecondRunOfAnOpenExperimentGetsTheLockError() throws {
        let root = try makeRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let second = Mutex<RunOutput?>(nil)
        let first = try MPIRun.run(
            MPIRun.packageRoot.appendingPathComponent("scripts/mpirun.sh").path,
            ["-n", "3", MPIRun.scenarios, "experiment-sweep", root, "shared", "20", "200"],
            timeout: 90,
            during: { _, _, stdout in
                guard MPIRun.waitForLine("done=", in: stdout, timeout: 60) != nil else { return }
                let output = try? MPIRun.scenario(
                    "experiment-sweep",
                    ranks: 1,
                    arguments: [root, "shared", "20", "200"],
                    timeout: 60
                )
                second.withLock { $0 = output }
            }
        )
        #expect(first.status == 0 && first.value("ran") == "20", "\(first)")
        let output = try #require(second.withLock { $0 }, "the second run did not start")
        #expect(output.value("error") == "inUse", "\(output)")
        #expect(output.value("message")?.contains("is open in another run") == true, "\(output)")
        #expect(output.value("ran") == nil)
    }

    @Test(.timeLimit(.minutes(2)))
    func withoutMPIRunTheJobsRunInTaskProcessesAndResume() throws {
        let root = try makeRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let first = try sweep(root, "local", jobs: 10, milliseconds: 5, ranks: 1)
        #expect(first.value("ran") == "10" && first.value("reused") == "0", "\(first)")
        // They ran in local slots (task processes, with a log each in the experiment), not in the spawner.
        let logs = (try? FileManager.default.contentsOfDirectory(atPath: "\(root)/local/tasks")) ?? []
        #expect(!logs.isEmpty && logs.allSatisfy { !$0.hasPrefix("0:") }, "\(logs)")
        let clean = csv(root, "local")
        let again = try sweep(root, "local", jobs: 10, milliseconds: 5, ranks: 1)
        #expect(again.value("ran") == "0" && again.value("reused") == "10", "\(again)")
        #expect(again.value("ordered") == "true")
        #expect(clean != nil && csv(root, "local") == clean)
        #expect(try journalIndices(root, "local").sorted() == Array(0..<10))
        // The AsyncSequence form reads the same journal: two more jobs at the end, and only they run.
        let fed = try sweep(root, "local", jobs: 12, milliseconds: 5, ranks: 1, form: "fed")
        #expect(fed.value("ran") == "2" && fed.value("reused") == "10", "\(fed)")
        #expect(fed.value("reusedSeen") == "10" && fed.value("ordered") == "true", "\(fed)")
        #expect(try journalIndices(root, "local").sorted() == Array(0..<12))
        let log = try String(contentsOfFile: "\(root)/local/experiment.log", encoding: .utf8)
        #expect(log.contains("run started: jobs produced as it goes (an AsyncSequence)"), "\(log)")
    }

    @Test(.timeLimit(.minutes(2)))
    func aJournaledFailureRunsAgainUnlessRerunFailedIsFalse() throws {
        let root = try makeRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let arguments = [root, "failing", "6", "5"]
        let first = try MPIRun.scenario(
            "experiment-sweep",
            ranks: 1,
            arguments: arguments,
            environment: ["SWEEP_FAIL_INDEX": "3"],
            timeout: 60
        )
        #expect(first.value("ran") == "6" && first.value("failed") == "1", "\(first)")
        let failure = try #require(first.value("failure"), "\(first)")
        #expect(failure.hasPrefix("3 failed ") && failure.hasSuffix("SweepFailure: point 3 fails on purpose"))
        // Kept as it is: the journaled failure comes back with its type and message, and nothing runs.
        let kept = try MPIRun.scenario(
            "experiment-sweep",
            ranks: 1,
            arguments: arguments,
            environment: ["SWEEP_RERUN_FAILED": "0"],
            timeout: 60
        )
        #expect(kept.value("ran") == "0" && kept.value("reused") == "6", "\(kept)")
        #expect(kept.value("failure") == failure, "\(kept)")
        // By default the failed job runs again (and now succeeds); the others are reused.
        let rerun = try MPIRun.scenario("experiment-sweep", ranks: 1, arguments: arguments, timeout: 60)
        #expect(rerun.value("ran") == "1" && rerun.value("reused") == "5", "\(rerun)")
        #expect(rerun.values("done") == ["3"] && rerun.value("failure") == nil, "\(rerun)")
        #expect(csv(root, "failing")?.contains("\n3,10\n") == true)
    }
}
