import Dispatch
import Glibc
import ParallelVMProcess
import Testing

@Suite("Child processes: spawning, exit reports, standard error", .serialized, .timeLimit(.minutes(1)))
struct ChildProcessTests {
    @Test func segmentationFaultIsReportedByNameAndNumber() throws {
        let end = try Support.end(of: Support.shell("kill -SEGV $$"))
        #expect(end.cause == .signaled(.segmentationFault))
        #expect(end.signal?.rawValue == 11)
        #expect(end.description == "was killed by signal SIGSEGV (11)")
    }

    @Test func exitStatusIsReported() throws {
        let end = try Support.end(of: Support.shell("exit 3"))
        #expect(end.cause == .exited(status: 3))
        #expect(end.description == "exited with status 3")
        let clean = try Support.end(of: Support.shell("exit 0"))
        #expect(clean.descriptionBeforeResult == "exited with status 0 before reporting a result")
    }

    @Test func laterWaitsReturnTheSameEnd() throws {
        let child = try Support.shell("exit 5")
        let first = try Support.end(of: child)
        #expect(try child.wait() == first)
        #expect(try child.waitNonBlocking() == first)
        #expect(!child.isRunning)
        #expect(!child.signalGroup(.kill), "a reaped child's ID may belong to someone else by now")
    }

    @Test func waitNonBlockingReturnsNilWhileRunning() throws {
        let child = try Support.shell("sleep 5")
        #expect(try child.waitNonBlocking() == nil)
        #expect(try child.wait(timeout: .milliseconds(50)) == nil)
        child.killGroup()
        let end = try Support.end(of: child)
        #expect(end.cause == .signaled(.kill))
        #expect(end.description == "was killed by signal SIGKILL (9), sent by its supervisor")
    }

    @Test func standardErrorTailKeepsTheLastLinesAndIsBounded() throws {
        let script = #"i=1; while [ $i -le 100 ]; do echo "line $i" >&2; i=$((i+1)); done"#
        let end = try Support.end(of: Support.shell(script))
        #expect(end.cause == .exited(status: 0))
        #expect(end.standardErrorTail.count == StandardErrorTail.defaultLineLimit)
        #expect(end.standardErrorTail.first == "line 81")
        #expect(end.standardErrorTail.last == "line 100")
    }

    @Test func standardErrorTailIsBoundedInBytes() throws {
        // 50 lines of 1000 bytes: the 4 KiB bound, not the line bound, decides.
        let script = #"i=0; while [ $i -lt 50 ]; do printf "%01000d\n" $i >&2; i=$((i+1)); done; printf "last" >&2"#
        let end = try Support.end(of: Support.shell(script))
        let bytes = end.standardErrorTail.reduce(0) { $0 + $1.utf8.count }
        #expect(bytes <= StandardErrorTail.defaultByteLimit + 4)
        #expect(end.standardErrorTail.count < 10)
        #expect(end.standardErrorTail.last == "last")
    }

    @Test func standardOutputCanBeAPipeAndWorkingDirectoryIsSet() throws {
        let child = try Support.shell("pwd; echo hello", standardOutput: .pipe, workingDirectory: "/")
        let fd = try #require(child.standardOutput)
        #expect(try Support.readLine(from: fd) == "/")
        #expect(try Support.readLine(from: fd) == "hello")
        #expect(try Support.end(of: child).cause == .exited(status: 0))
    }

    @Test func missingExecutableFailsToSpawn() throws {
        let error = #expect(throws: ProcessError.self) {
            try ChildProcess.spawn(
                executable: "/nonexistent/vm-process-probe",
                environment: [:],
                channelVariable: "X"
            )
        }
        #expect(error?.code == .spawnFailed)
        #expect(error?.errno == ENOENT)
    }

    @Test func terminateEndsAShellAndItsBackgroundSleep() throws {
        let child = try Support.shell("sleep 25 & wait")
        #expect(Support.eventually { Support.liveMembers(ofGroup: child.pid).contains { $0.command == "sleep" } })
        let members = Support.liveMembers(ofGroup: child.pid).map(\.pid)
        let start = ContinuousClock.now
        let end = try child.terminate(grace: .seconds(1))
        #expect(ContinuousClock.now - start < .seconds(3))
        #expect(end.cause == .signaled(.terminate))
        #expect(end.signalWasSentBySupervisor)
        #expect(Support.eventually(within: .seconds(2)) { members.allSatisfy(Support.isGone) })
    }

    @Test func terminateEscalatesToKillWhenTermIsIgnored() throws {
        let child = try Support.shell("trap '' TERM; sleep 25 & wait")
        #expect(Support.eventually { Support.liveMembers(ofGroup: child.pid).contains { $0.command == "sleep" } })
        let members = Support.liveMembers(ofGroup: child.pid).map(\.pid)
        let start = ContinuousClock.now
        let end = try child.terminate(grace: .milliseconds(300))
        #expect(ContinuousClock.now - start < .seconds(3))
        #expect(end.cause == .signaled(.kill))
        #expect(end.description == "was killed by signal SIGKILL (9), sent by its supervisor")
        #expect(Support.eventually(within: .seconds(2)) { members.allSatisfy(Support.isGone) })
    }

    @Test func endingTheLeaderKillsTheRestOfItsGroup() throws {
        let child = try Support.shell("sleep 25 & exit 0")
        let end = try Support.end(of: child)
        #expect(end.cause == .exited(status: 0))
        #expect(Support.eventually(within: .seconds(2)) { Support.liveMembers(ofGroup: child.pid).isEmpty })
    }

    @Test func concurrentWaitersGetTheSameEnd() throws {
        let child = try Support.shell("sleep 0.2; exit 4")
        let group = DispatchGroup()
        let ends = Locked<[ProcessEnd]>([])
        for _ in 0..<3 {
            DispatchQueue.global().async(group: group) {
                if let end = try? child.wait() { ends.withLock { $0.append(end) } }
            }
        }
        #expect(group.wait(timeout: .now() + 20) == .success)
        #expect(ends.withLock { $0 } == Array(repeating: ProcessEnd(cause: .exited(status: 4)), count: 3))
    }

    @Test func aFloodOnStandardErrorNeitherBlocksTheChildNorGrowsTheTail() throws {
        let end = try Support.end(of: Support.shell("head -c 10000000 /dev/zero | tr '\\0' x >&2; exit 0"))
        #expect(end.cause == .exited(status: 0))
        #expect(end.standardErrorTail.reduce(0) { $0 + $1.utf8.count } <= 2 * StandardErrorTail.defaultByteLimit)
    }

    @Test func spawningLeavesNoDescriptorBehind() throws {
        let before = ChildProcess.openDescriptors().count
        for _ in 0..<20 {
            let child = try Support.shell("exit 0", standardOutput: .pipe)
            _ = try Support.end(of: child)
        }
        let running = try Support.shell("sleep 10")
        _ = running.channel
        // Dropping a running child kills and reaps it.
        _ = consume running
        #expect(ChildProcess.openDescriptors().count == before)
    }
}
