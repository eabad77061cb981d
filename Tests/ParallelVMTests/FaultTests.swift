import Foundation
import Testing

/// Faults caused for real in tasks under mpirun (3 ranks: a faulty task and a slow one side by side). Each
/// run has a time limit, so a fault that hangs the run fails the test.
@Suite(.serialized)
struct FaultTests {
    private func run(
        _ name: String,
        _ arguments: [String] = [],
        environment: [String: String] = [:]
    ) throws -> RunOutput {
        let output = try MPIRun.scenario(name, ranks: 3, arguments: arguments, environment: environment, timeout: 90)
        #expect(output.status == 0, "\(output)")
        #expect(!output.timedOut, "\(output)")
        return output
    }

    /// Each fault, and what its report must say about how the task ended.
    static let faults: [(kind: String, termination: String, text: String?)] = [
        ("fatalError", #"signal(name: "SIGILL", number: 4)"#, "Fatal error: bad input in the fault test"),
        ("forceUnwrap", #"signal(name: "SIGILL", number: 4)"#, "Unexpectedly found nil"),
        ("divideByZero", #"signal(name: "SIGILL", number: 4)"#, "Division by zero"),
        ("overflow", #"signal(name: "SIGILL", number: 4)"#, nil),
        ("badPointer", #"signal(name: "SIGSEGV", number: 11)"#, nil),
        ("abort", #"signal(name: "SIGABRT", number: 6)"#, nil),
        ("exit3", "exited(status: 3)", nil),
        ("exit0", "exited(status: 0)", "before reporting a result"),
        ("stackOverflow", #"signal(name: "SIGSEGV", number: 11)"#, nil),
        ("outOfMemory", "outOfMemory", "failed to allocate"),
    ]

    @Test(arguments: FaultTests.faults.map(\.kind))
    func aFaultyTaskIsReportedAndTheRunGoesOn(kind: String) throws {
        let fault = try #require(FaultTests.faults.first { $0.kind == kind })
        // A memory limit makes the runaway allocation fail in the task, not in the host's OOM killer.
        let output = try run("fault", [kind], environment: ["SCENARIO_MEMORY_LIMIT": String(3 << 30)])
        #expect(output.value("badSuccess") == "false")
        #expect(output.value("badType") == "ParallelVM.TaskTermination")
        let termination = output.value("badTermination") ?? ""
        #expect(termination.hasPrefix(fault.termination + "|"), "\(termination)")
        // The report names the task, the function and the host.
        #expect(termination.contains("|fault.run|"), "\(termination)")
        let message = output.value("badMessage") ?? ""
        #expect(message.contains("running 'fault.run' on "), "\(message)")
        if let text = fault.text { #expect(message.contains(text) || termination.contains(text), "\(message)") }
        // The other task's result still arrives, and the faulty task's slot serves again.
        #expect(output.value("slowValue")?.hasPrefix("2:") == true, "\(output)")
        #expect(output.value("badSlotServesAgain") == "true")
        #expect(output.value("freeAtEnd") == "2")
    }

    @Test func faultsInADispatchAreFailedResultsWithTheirOwnCodes() throws {
        let output = try run("fault-dispatch")
        #expect(output.value("codes") == "failed,crashed,failed,crashed,failed,crashed,failed", "\(output)")
        let terminations = output.value("terminations") ?? ""
        #expect(
            terminations.contains("SIGABRT") && terminations.contains("SIGSEGV")
                && terminations.contains("exited(status: 3)")
        )
        #expect(output.value("freeAtEnd") == "2")
    }

    @Test func aTaskOverItsTimeoutIsKilledAndTheSlotServesAgain() throws {
        let output = try run("timeout")
        #expect(
            output.value("timedOut")?.hasPrefix("timedOut(seconds: 0.5)|timed out after 0.5 s") == true,
            "\(output)"
        )
        #expect((Double(output.value("seconds") ?? "") ?? 99) < 10)
        #expect(output.value("after") == "4")
        #expect(output.value("dispatchCodes") == "timedOut,ok", "\(output)")
    }

    @Test func killEndsARunningTask() throws {
        let output = try run("kill")
        #expect(output.value("killed")?.hasPrefix("killed|was killed on request") == true, "\(output)")
        #expect((Double(output.value("seconds") ?? "") ?? 99) < 10)
        #expect(output.value("killAgain")?.contains("it is not running") == true)
    }

    @Test func childrenATaskLeavesBehindAreEndedAndTheRunEndsOnTime() throws {
        let started = Date()
        let output = try run("orphans")
        #expect(output.value("returned") == "true")
        // The task left `sleep 25` and a detached `sleep 26`: the run must not wait for them.
        #expect(Date().timeIntervalSince(started) < 20, "\(output)")
        #expect(!MPIRun.processesRunning(commandLine: ["sleep", "25"]), "a sleep 25 is still running")
        #expect(!MPIRun.processesRunning(commandLine: ["sleep", "26"]), "a sleep 26 is still running")
    }

    @Test func eachTaskStartsInTheWorkersFolder() throws {
        let output = try run("chdir")
        #expect(output.value("starts") == "same", "\(output)")
    }

    @Test func finalizeWithATimeoutKillsWhatStillRuns() throws {
        let output = try run("finalize-timeout")
        #expect(output.value("killed") == output.value("task"), "\(output)")
        #expect((Double(output.value("seconds") ?? "") ?? 99) < 15, "\(output)")
    }

    @Test func retriesStartACrashedJobAgainAndCountTheAttempts() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent(
            "parallelvm-retries-\(UUID().uuidString)"
        )
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: root) }
        let output = try run("retries", [root.path])
        #expect(output.value("values") == "2,crashed,1", "\(output)")
        #expect(output.value("attempts") == "2,3,1", "\(output)")
        #expect(output.value("withoutRetries") == "crashed/1", "\(output)")
    }

    @Test func cancellingADispatchKillsItsRunningJobs() throws {
        let output = try run("cancel-dispatch")
        #expect(output.value("outcome") == "cancelled", "\(output)")
        #expect((Double(output.value("seconds") ?? "") ?? 99) < 10, "\(output)")
        #expect(output.value("servedAfter") == "2", "\(output)")
    }

    @Test func aLostWorkerRankIsReportedAndTheRunGoesOnWithoutIt() throws {
        // Open MPI's recovery is on by default in scripts/mpirun.sh.
        let output = try run("lost-worker")
        #expect(output.value("lost")?.hasPrefix("workerLost|was lost with its worker rank") == true, "\(output)")
        // Noticed within the documented bound (the spawner looks every 0.5 s).
        #expect((Double(output.value("lostAfter") ?? "") ?? 99) < 5, "\(output)")
        #expect(output.value("otherValue")?.hasPrefix("") == true && output.value("otherValue") != "failed")
        #expect(output.value("freeAfterLoss") == "1", "\(output)")
        #expect(output.value("dispatchAfterLoss") == "0,2,4,6,8,10", "\(output)")
        #expect(output.value("config") == "true")
    }

    @Test func aJobRunsOnceOnEverySlotOrOnEveryHost() throws {
        let output = try run("everywhere")
        #expect(output.value("slots") == "1,2", "\(output)")
        #expect(output.value("distinct") == "2")
        #expect(output.value("hosts") == "1")
        #expect(output.value("whileBusy")?.contains("are busy") == true, "\(output)")
    }

    @Test func setupRunsOncePerTaskProcessAndAgainAfterACrash() throws {
        let output = try run("setup")
        #expect(output.value("runs") == "1,1,1,1", "\(output)")
        #expect(output.value("samePidBeforeCrash") == "true")
        #expect(output.value("newPidAfterCrash") == "true")
    }
}

/// Interrupts sent for real to the spawner, to mpirun and to the whole process group, while tasks with
/// storage folders run: the run ends within 10 s with 128 + the signal, nothing is left running, and no
/// task folder is left.
@Suite(.serialized)
struct InterruptTests {
    /// Where the signal goes: the spawner rank; the launcher `scripts/mpirun.sh` the user started; the
    /// mpirun process itself (which passes SIGTERM on); the launcher's process group.
    static let cases = [
        "spawner:INT", "spawner:TERM", "launcher:INT", "launcher:TERM", "mpirun:INT", "mpirun:TERM", "group:INT",
        "group:TERM",
    ]

    @Test(arguments: InterruptTests.cases)
    func anInterruptEndsTheRunCleanly(target: String) throws {
        let parts = target.split(separator: ":")
        let signal = parts[1] == "INT" ? SIGINT : SIGTERM
        let root = FileManager.default.temporaryDirectory.appendingPathComponent(
            "parallelvm-interrupt-\(UUID().uuidString)"
        )
        let share = root.appendingPathComponent("share")
        let source = share.appendingPathComponent("input")
        let local = root.appendingPathComponent("local")
        try FileManager.default.createDirectory(at: source, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: local, withIntermediateDirectories: true)
        try Data("data".utf8).write(to: source.appendingPathComponent("a.txt"))
        defer { try? FileManager.default.removeItem(at: root) }

        let observed = Observed()
        let script = MPIRun.packageRoot.appendingPathComponent("scripts/mpirun.sh").path
        let output = try MPIRun.run(
            script,
            ["-n", "3", MPIRun.scenarios, "interrupt", source.path],
            environment: ["PARALLEL_MIRRORED_STORAGE": share.path, "PARALLEL_LOCAL_STORAGE": local.path],
            timeout: 60
        ) { mpirun, marker, stdout in
            guard let pidText = MPIRun.waitForLine("pid=", in: stdout, timeout: 30),
                MPIRun.waitForLine("ready=", in: stdout, timeout: 30) != nil, let spawner = Int32(pidText)
            else { return }
            switch parts[0] {
            case "spawner": kill(spawner, signal)
            case "launcher": kill(mpirun, signal)
            case "mpirun":
                guard let real = MPIRun.childProcesses(of: mpirun).first else { return }
                kill(real, signal)
            default:
                // The launcher runs mpirun in a process group of its own; never signal the test's own group.
                let group = getpgid(mpirun)
                guard group > 0, group != getpgid(0) else { return }
                kill(-group, signal)
            }
            observed.set(marker: marker, sent: Date())
        }
        let (marker, sent) = observed.get()
        let sentAt = try #require(sent, "the scenario never got ready: \(output)")
        #expect(!output.timedOut, "\(output)")
        // mpirun passes SIGTERM on to the ranks for both signals; scripts/mpirun.sh then exits with the
        // status the spawner recorded (a plain mpirun exits 1: Open MPI's choice).
        #expect(output.status == (parts[0] == "mpirun" ? 128 + SIGTERM : 128 + signal), "\(output)")
        #expect(Date().timeIntervalSince(sentAt) < 10, "\(output)")
        #expect(output.value("tasks") == "2", "\(output)")
        #expect(output.value("notInterrupted") == nil)
        // The program observed the interrupt before the VM ended it (mpirun passes SIGTERM on for both).
        let observedSignal =
            parts[0] == "spawner" || signal == SIGTERM ? (signal == SIGINT ? "SIGINT" : "SIGTERM") : nil
        if let observedSignal { #expect(output.value("interrupted") == observedSignal, "\(output)") }
        #expect(output.value("interrupted") != nil, "\(output)")
        // Nothing of the run is left: no rank, no task process, no sleeper.
        usleep(300_000)
        #expect(
            MPIRun.processes(marked: marker ?? "").isEmpty,
            "left running: \(MPIRun.processes(marked: marker ?? ""))"
        )
        // No task folder is left in local storage.
        let users = (try? FileManager.default.contentsOfDirectory(atPath: local.path)) ?? []
        for user in users {
            let left =
                (try? FileManager.default.contentsOfDirectory(atPath: local.appendingPathComponent(user).path)) ?? []
            #expect(left.isEmpty, "left in local storage: \(left)")
        }
    }
}

/// Under Open MPI's recovery (on by default in `scripts/mpirun.sh`) mpirun exits 0 whatever its ranks do;
/// the launcher must still exit with the spawner's status: its exit status, 128 + the signal of a crash,
/// 137 for a kill -9, and the status of a program that fails before its VM exists.
@Suite(.serialized)
struct LauncherStatusTests {
    /// Runs the `spawner-end` scenario with a TMPDIR of its own, and checks that the launcher's status file
    /// is gone afterwards.
    private func run(
        _ arguments: [String],
        during: (@Sendable (_ pid: Int32, _ marker: String, _ stdout: URL) -> Void)? = nil
    ) throws -> RunOutput {
        let temporary = FileManager.default.temporaryDirectory.appendingPathComponent(
            "parallelvm-status-\(UUID().uuidString)"
        )
        try FileManager.default.createDirectory(at: temporary, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: temporary) }
        let script = MPIRun.packageRoot.appendingPathComponent("scripts/mpirun.sh").path
        let output = try MPIRun.run(
            script,
            ["-n", "3", MPIRun.scenarios] + arguments,
            environment: ["TMPDIR": temporary.path],
            timeout: 60,
            during: during
        )
        #expect(!output.timedOut, "\(output)")
        let left = (try? FileManager.default.contentsOfDirectory(atPath: temporary.path)) ?? []
        #expect(!left.contains { $0.hasPrefix("parallelvm-status") }, "left behind: \(left)")
        return output
    }

    @Test func aNormalEndIsZero() throws {
        let output = try run(["spawner-end", "ok"])
        #expect(output.status == 0, "\(output)")
        #expect(output.value("pid") != nil)
    }

    @Test func theSpawnersExitStatusIsTheLaunchersStatus() throws {
        let output = try run(["spawner-end", "exit", "3"])
        #expect(output.status == 3, "\(output)")
        #expect(output.value("pid") != nil, "\(output)")
    }

    @Test func aSpawnerThatTrapsGivesTheSignalsStatus() throws {
        let output = try run(["spawner-end", "trap"])
        #expect(output.status == 128 + SIGILL, "\(output)")
        #expect(output.stderr.contains("rank 0 ended on signal 4"), "\(output)")
        // The Swift runtime's own crash report still runs after the status is written.
        #expect(output.stderr.contains("Unexpectedly found nil"), "\(output)")
    }

    @Test func aSpawnerKilledWithSIGKILLGives137() throws {
        let output = try run(["spawner-end", "kill"]) { _, _, stdout in
            guard let pidText = MPIRun.waitForLine("pid=", in: stdout, timeout: 30), let pid = Int32(pidText) else {
                return
            }
            kill(pid, SIGKILL)
        }
        #expect(output.status == 137, "\(output)")
        #expect(output.stderr.contains("killed with SIGKILL"), "\(output)")
        #expect(output.seconds < 30, "\(output)")
    }

    @Test func aRankThatEndsBeforeStartingMPIEndsTheRunWithinTheStartLimit() throws {
        // Under recovery the other ranks would wait in MPI's start for ever; the start limit ends them.
        let script = MPIRun.packageRoot.appendingPathComponent("scripts/mpirun.sh").path
        let output = try MPIRun.run(
            script,
            ["-n", "2", MPIRun.scenarios, "spawner-end", "ok", ":", "-n", "1", "/bin/false"],
            environment: ["PARALLELVM_START_TIMEOUT": "3"],
            timeout: 60
        )
        #expect(!output.timedOut, "\(output)")
        #expect(output.status == 1, "\(output)")
        #expect(output.seconds < 20, "\(output)")
        #expect(output.stderr.contains("ParallelVM rank 0 on "), "\(output)")
        #expect(output.stderr.contains("MPI did not start"), "\(output)")
        #expect(output.stderr.contains("within 3.0 s of the start"), "\(output)")
        #expect(output.value("pid") == nil)
    }

    @Test func aProgramThatFailsBeforeItsVMExistsKeepsItsStatus() throws {
        // An unknown scenario name: the program exits 2 before it creates its VM.
        let output = try run(["no-such-scenario"])
        #expect(output.status == 2, "\(output)")
    }
}

/// What the interrupting thread saw, for the test to read after the run.
final class Observed: @unchecked Sendable {
    // Invariant for @unchecked Sendable: the fields are only touched while holding `lock`.
    private let lock = NSLock()
    private var marker: String?
    private var sent: Date?
    func set(marker: String, sent: Date) { lock.withLock { (self.marker, self.sent) = (marker, sent) } }
    func get() -> (String?, Date?) { lock.withLock { (marker, sent) } }
}
