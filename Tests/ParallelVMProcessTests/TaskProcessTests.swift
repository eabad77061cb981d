import Glibc
import ParallelVMProcess
import Testing

/// The probe plays a task process: it starts through `childDidStart` and talks over the channel.
@Suite("Task processes: the probe over its channel", .serialized, .timeLimit(.minutes(1)))
struct TaskProcessTests {
    @Test func framesRoundTripThroughTheChild() throws {
        let child = try Support.probe("echo")
        // Small frames through the shared-memory rings, large ones through the socket.
        #expect(child.channel.hasSharedMemory)
        for size in [0, 1, 100_000, 10_000_000, 3] {
            let frame = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }
            try child.channel.send(frame)
            let echoed = try #require(try child.channel.receive(timeout: .seconds(20)), "no echo of \(size) bytes")
            #expect(echoed.count == size)
            #expect(echoed == frame, "the echo of \(size) bytes differs")
        }
        child.channel.close()
        #expect(try Support.end(of: child).cause == .exited(status: 0))
    }

    @Test func framesRoundTripThroughAChildWithoutSharedMemory() throws {
        let child = try Support.probe("echo", sharedMemory: false)
        #expect(!child.channel.hasSharedMemory)
        for size in [0, 3, 100_000] {
            let frame = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            try child.channel.send(frame)
            #expect(try child.channel.receive(timeout: .seconds(20)) == frame, "the echo of \(size) bytes differs")
        }
        child.channel.close()
        #expect(try Support.end(of: child).cause == .exited(status: 0))
    }

    @Test func channelReportsThePeerGoneWhenTheChildDies() throws {
        let child = try Support.probe("hold")
        #expect(try child.channel.receive(timeout: .milliseconds(100)) == nil)
        child.killGroup()
        let error = #expect(throws: ProcessError.self) { try child.channel.receive(timeout: .seconds(10)) }
        #expect(error?.code == .peerGone)
        #expect(try Support.end(of: child).cause == .signaled(.kill))
        let sendError = #expect(throws: ProcessError.self) { try child.channel.send([1, 2, 3]) }
        #expect(sendError?.code == .peerGone)
    }

    @Test func channelNumberArrivesInTheEnvironmentAndIsRemovedAfterStart() throws {
        let child = try Support.probe("environment")
        let report = try #require(try child.channel.receive(timeout: .seconds(10)))
        #expect(String(decoding: report, as: UTF8.self) == "\(ChildProcess.channelDescriptor) <unset>")
        #expect(try Support.end(of: child).cause == .exited(status: 0))
    }

    @Test func noParentDescriptorLeaksIntoTheChild() throws {
        // dup gives a descriptor without close-on-exec, as MPI's often are.
        let leaky = dup(STDERR_FILENO)
        #expect(leaky > 3)
        defer { close(leaky) }
        let child = try Support.probe("descriptors")
        let report = try #require(try child.channel.receive(timeout: .seconds(10)))
        #expect(String(decoding: report, as: UTF8.self) == "0 1 2 3")
        #expect(try Support.end(of: child).cause == .exited(status: 0))
    }

    @Test func trapIsReportedWithTheFatalErrorLine() throws {
        let end = try Support.end(of: Support.probe("trap"))
        #expect(end.signal == .illegalInstruction || end.signal == .trap, "\(end)")
        #expect(end.fatalErrorLine?.contains("the probe was told to trap") == true)
        #expect(!end.ranOutOfMemory)
    }

    @Test func abortIsReported() throws {
        let end = try Support.end(of: Support.probe("abort"))
        #expect(end.cause == .signaled(.abort))
        #expect(end.description == "was killed by signal SIGABRT (6)")
    }

    @Test func exitStatusOfTheProbe() throws {
        #expect(try Support.end(of: Support.probe("exit", "7")).cause == .exited(status: 7))
    }

    @Test func memoryLimitedChildRunsOutOfMemoryAndTheParentGoesOn() throws {
        let end = try Support.end(of: Support.probe("allocate", memoryLimit: 256 << 20), within: .seconds(40))
        #expect(
            end.ranOutOfMemory || (end.signal == .kill && !end.signalWasSentBySupervisor),
            "\(end): \(end.standardErrorTail)"
        )
        #expect(end.description.contains("ran out of memory") || end.description.contains("out-of-memory killer"))
        // The limit was the child's own: this process can still allocate what the child could not.
        let block = [UInt8](repeating: 1, count: 300 << 20)
        #expect(block.count == 300 << 20)
    }

    @Test func childWhoseParentIsNotTheSupervisorExits() throws {
        // The probe runs as the shell's child, so its parent is not the one the environment names.
        let end = try Support.end(of: Support.shell("\"\(Support.probe)\" hold; exit $?"))
        #expect(end.cause == .exited(status: ChildProcess.parentGoneExitStatus))
    }

    @Test func childDiesWithItsParent() throws {
        // The shell names itself as the parent, starts the probe in a session of its own (out of reach of
        // the group kill), reports its ID, and is killed: only the kernel's parent-death signal, asked for in
        // childDidStart, then ends the probe.
        let script = """
            \(ChildProcess.parentProcessVariable)=$$ setsid "\(Support.probe)" hold &
            echo $!
            sleep 0.5
            kill -KILL $$
            """
        let child = try Support.shell(script, standardOutput: .pipe)
        let output = try #require(child.standardOutput)
        let probePID = try #require(Int32(try Support.readLine(from: output)))
        #expect(Support.eventually { ProcessStatus(pid: probePID)?.group == probePID })
        _ = try Support.end(of: child)
        #expect(Support.eventually(within: .seconds(5)) { Support.isGone(probePID) })
    }
}
