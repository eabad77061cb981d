import Glibc
import ParallelVMProcess
import Testing

@Suite("Orphans: subreaper, descendant and orphan sweeps", .serialized, .timeLimit(.minutes(1)))
struct OrphanTests {
    @Test func setsidGrandchildIsReapedByTheOrphanSweep() throws {
        try ChildProcess.enableSubreaper()
        // Other suites in this process start children by other means; orphans of theirs go to init as usual.
        defer { try? ChildProcess.disableSubreaper() }
        // setsid puts sleep in a session of its own, out of reach of the group kill; when the shell exits it
        // is re-parented to this process, the subreaper.
        // The shell waits for setsid to take effect (the group, field 5 of stat, to change) before it exits,
        // or the group kill at its end would catch sleep still in its group.
        let script = """
            setsid sleep 30 &
            echo $!
            while [ "$(cut -d ' ' -f 5 /proc/$!/stat)" = "$$" ]; do sleep 0.01; done
            exit 0
            """
        let child = try Support.shell(script, standardOutput: .pipe)
        let output = try #require(child.standardOutput)
        let grandchild = try #require(Int32(try Support.readLine(from: output)))
        #expect(try Support.end(of: child).cause == .exited(status: 0))
        #expect(Support.eventually { ProcessStatus(pid: grandchild)?.parent == getpid() })
        #expect(ProcessStatus(pid: grandchild)?.group != child.pid)
        #expect(!Support.isGone(grandchild))
        let reaped = ChildProcess.reapOrphans()
        #expect(reaped.contains(grandchild))
        #expect(ProcessStatus(pid: grandchild) == nil)
    }

    @Test func orphanSweepSparesSpawnedChildren() throws {
        try ChildProcess.enableSubreaper()
        // Other suites in this process start children by other means; orphans of theirs go to init as usual.
        defer { try? ChildProcess.disableSubreaper() }
        let child = try Support.shell("sleep 30")
        let reaped = ChildProcess.reapOrphans()
        #expect(!reaped.contains(child.pid))
        #expect(child.isRunning)
        #expect(try child.waitNonBlocking() == nil)
        _ = try child.terminate(grace: .seconds(1))
    }

    @Test func killDescendantsLeavesTheTaskProcessRunning() throws {
        let child = try Support.shell("sleep 30 & sleep 30 & wait; sleep 30")
        #expect(Support.eventually { Support.liveMembers(ofGroup: child.pid).count >= 3 })
        let sleeps = Support.liveMembers(ofGroup: child.pid).map(\.pid).filter { $0 != child.pid }
        let killed = ChildProcess.killDescendants(of: child.pid)
        #expect(Set(sleeps).isSubset(of: Set(killed)))
        #expect(Support.eventually { sleeps.allSatisfy(Support.isGone) })
        #expect(child.isRunning)
        _ = try child.terminate(grace: .seconds(1))
    }
}
