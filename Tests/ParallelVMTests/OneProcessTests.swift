import Foundation
import Glibc
import Testing

/// A VM that runs as one process (started without mpirun, or with `mpirun -n 1`): jobs run in local slots,
/// task processes of the program, with the task folders, mirroring and crash reports of a cluster run.
@Suite(.serialized)
struct OneProcessTests {
    /// Each job runs in a task folder of its own, holding the mirrored files, in one of two task processes
    /// at once; the launch folder is left as it was, and no task folder is left afterwards.
    @Test(.timeLimit(.minutes(3)), arguments: ["plain", "mpirun -n 1"])
    func dispatchRunsInTaskProcessesInMirroredTaskFolders(launcher: String) throws {
        let fixture = try StorageFixture()
        defer { fixture.remove() }
        let launch = fixture.root.appendingPathComponent("launch")
        try FileManager.default.createDirectory(at: launch, withIntermediateDirectories: true)
        try Data("keep".utf8).write(to: launch.appendingPathComponent("launch-file"))
        let environment = [
            "PARALLEL_MIRRORED_STORAGE": fixture.shareA,
            "PARALLEL_LOCAL_STORAGE": fixture.local(0),
            "PARALLELVM_LOCAL_SLOTS": "2",
        ]
        let arguments = ["local-dispatch", fixture.shareA + "/data", "6", "0.5"]
        let run: RunOutput
        if launcher == "plain" {
            run = try MPIRun.run(
                MPIRun.scenarios,
                arguments,
                environment: environment,
                timeout: 90,
                currentDirectory: launch
            )
        } else {
            let script = MPIRun.packageRoot.appendingPathComponent("scripts/mpirun.sh").path
            run = try MPIRun.run(
                script,
                ["-n", "1", MPIRun.scenarios] + arguments,
                environment: environment,
                timeout: 90,
                currentDirectory: launch
            )
        }
        #expect(run.status == 0, "\(run)")
        #expect(run.value("slots") == "3", "\(run)")
        #expect(run.value("distributed") == (launcher == "plain" ? "false" : "true"), "\(run)")
        let spawner = try #require(run.value("spawnerPID"), "\(run)")
        let pids = (run.value("pids") ?? "").split(separator: ",").map(String.init)
        #expect(pids.count == 2 && !pids.contains(spawner), "\(run)")
        #expect(run.value("parents") == spawner, "\(run)")
        #expect(run.value("concurrent") == "true", "\(run)")
        let slots = Set((run.value("tasks") ?? "").split(separator: ",").map { $0.split(separator: ":").first ?? "" })
        #expect(slots == ["1", "2"], "\(run)")

        let root = URL(fileURLWithPath: fixture.local(0)).resolvingSymlinksInPath().path
        let folders = (run.value("folders") ?? "").split(separator: ",").map(String.init)
        #expect(folders.count == 6, "\(run)")
        for folder in folders { #expect(folder.hasPrefix(root + "/"), "\(folder) is not in local storage") }
        // Every job found the mirrored files, and none found the file an earlier job left: a fresh folder each.
        let entries = (run.value("entries") ?? "").split(separator: "|", omittingEmptySubsequences: false)
        #expect(entries.count == 6, "\(run)")
        for entry in entries {
            let names = Set(entry.split(separator: ";").map(String.init))
            #expect(names.isSuperset(of: ["a.txt", "b.txt", "link", "sub", "sub/c.bin", "which-mount"]), "\(names)")
            #expect(!names.contains("written-by-job"), "\(names)")
        }

        #expect(run.value("launchFolder") == launch.path, "\(run)")
        #expect(run.value("launchUnchanged") == "true", "\(run)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: launch.path) == ["launch-file"])
        #expect(run.value("freeAtEnd") == "2", "\(run)")
        expectNoTaskFolder(in: fixture.local(0))
    }

    /// A job whose task process traps is a failed result naming its task and function; the other jobs'
    /// results come back, and the slot serves again with a fresh task process.
    @Test(.timeLimit(.minutes(2)))
    func aJobThatTrapsFailsAloneAndTheRunGoesOn() throws {
        let run = try MPIRun.scenario(
            "local-crash",
            ranks: 1,
            environment: ["PARALLELVM_LOCAL_SLOTS": "2"],
            timeout: 90
        )
        #expect(run.status == 0, "\(run)")
        #expect(run.value("codes") == "ok,crashed,ok,ok", "\(run)")
        let task = try #require(run.value("crashTask"), "\(run)")
        #expect(task != "none" && !task.hasPrefix("0:"), "\(run)")
        let crash = run.value("crash") ?? ""
        #expect(crash.contains("task \(task)") && crash.contains("'local.run'"), "\(run)")
        #expect(crash.contains("SIGILL") || crash.contains("SIGTRAP"), "\(run)")
        #expect(run.value("values") == "3", "\(run)")
        #expect(run.value("again") == "3", "\(run)")
        #expect(run.value("freeAtEnd") == "2", "\(run)")
    }

    /// Messages between the spawner and tasks in local slots arrive in order and intact at every size,
    /// and an automatically chunked dispatch keeps job order.
    @Test(.timeLimit(.minutes(2)))
    func messagesAndChunkedDispatchWorkInLocalSlots() throws {
        let slots = ["PARALLELVM_LOCAL_SLOTS": "2"]
        let messaging = try MPIRun.scenario("messaging", ranks: 1, arguments: ["500"], environment: slots)
        #expect(messaging.status == 0, "\(messaging)")
        #expect(messaging.value("received") == "500" && messaging.value("inOrder") == "true", "\(messaging)")
        let sizes = ["0", "1", "8", "1000", "32767", "32768", "100000", "3000000"]
        let bounce = try MPIRun.scenario("bounce", ranks: 1, arguments: sizes, environment: slots)
        #expect(bounce.status == 0, "\(bounce)")
        #expect(bounce.value("echoed") == "8", "\(bounce)")
        let order = try MPIRun.scenario(
            "dispatch-order",
            ranks: 1,
            arguments: ["2000", "auto", "1"],
            environment: slots
        )
        #expect(order.status == 0, "\(order)")
        #expect(order.value("ordered") == "true" && order.value("collectorSawEachOnce") == "true", "\(order)")
        #expect(order.value("placement") == "remote" && order.value("freeAtEnd") == "2", "\(order)")
    }

    /// Timeouts, kill and the setup function behave in local slots as on worker ranks.
    @Test(.timeLimit(.minutes(2)))
    func timeoutsKillAndSetupWorkInLocalSlots() throws {
        func run(_ name: String) throws -> RunOutput {
            let output = try MPIRun.scenario(
                name,
                ranks: 1,
                environment: ["PARALLELVM_LOCAL_SLOTS": "2"],
                timeout: 60
            )
            #expect(output.status == 0 && !output.timedOut, "\(output)")
            return output
        }
        let timeout = try run("timeout")
        #expect(
            timeout.value("timedOut")?.hasPrefix("timedOut(seconds: 0.5)|timed out after 0.5 s") == true,
            "\(timeout)"
        )
        #expect((Double(timeout.value("seconds") ?? "") ?? 99) < 10)
        #expect(timeout.value("after") == "4", "\(timeout)")
        #expect(timeout.value("dispatchCodes") == "timedOut,ok", "\(timeout)")
        let kill = try run("kill")
        #expect(kill.value("killed")?.hasPrefix("killed|was killed on request") == true, "\(kill)")
        #expect((Double(kill.value("seconds") ?? "") ?? 99) < 10)
        let setup = try run("setup")
        #expect(setup.value("runs") == "1,1,1,1", "\(setup)")
        #expect(setup.value("samePidBeforeCrash") == "true", "\(setup)")
        #expect(setup.value("newPidAfterCrash") == "true", "\(setup)")
    }

    /// SIGINT or SIGTERM to the program ends it with 128 plus the signal: the program sees the interrupt,
    /// the task processes and their tasks are ended, and no task folder is left.
    @Test(.timeLimit(.minutes(2)), arguments: [SIGINT, SIGTERM])
    func anInterruptEndsTheTaskProcessesAndRemovesTheirFolders(signal: Int32) throws {
        let fixture = try StorageFixture()
        defer { fixture.remove() }
        let observed = Observed()
        let output = try MPIRun.run(
            MPIRun.scenarios,
            ["interrupt", fixture.shareA + "/data"],
            environment: [
                "PARALLEL_MIRRORED_STORAGE": fixture.shareA,
                "PARALLEL_LOCAL_STORAGE": fixture.local(0),
                "PARALLELVM_LOCAL_SLOTS": "2",
            ],
            timeout: 60
        ) { program, marker, stdout in
            guard MPIRun.waitForLine("ready=", in: stdout, timeout: 30) != nil else { return }
            kill(program, signal)
            observed.set(marker: marker, sent: Date())
        }
        let (marker, sent) = observed.get()
        let sentAt = try #require(sent, "the scenario never got ready: \(output)")
        #expect(!output.timedOut, "\(output)")
        #expect(output.status == 128 + signal, "\(output)")
        #expect(Date().timeIntervalSince(sentAt) < 10, "\(output)")
        #expect(output.value("tasks") == "2", "\(output)")
        #expect(output.value("interrupted") == (signal == SIGINT ? "SIGINT" : "SIGTERM"), "\(output)")
        #expect(output.value("notInterrupted") == nil)
        usleep(300_000)
        #expect(
            MPIRun.processes(marked: marker ?? "").isEmpty,
            "left running: \(MPIRun.processes(marked: marker ?? ""))"
        )
        expectNoTaskFolder(in: fixture.local(0))
    }

    /// Nothing is left in the per-user folders of the local storage root.
    private func expectNoTaskFolder(in local: String) {
        let users = (try? FileManager.default.contentsOfDirectory(atPath: local)) ?? []
        for user in users {
            let left = (try? FileManager.default.contentsOfDirectory(atPath: local + "/" + user)) ?? []
            #expect(left.isEmpty, "left in local storage: \(left)")
        }
    }
}
