import Foundation
import Glibc
import ParallelVMProcess
import Testing

@Suite("Message channel framing within one process", .timeLimit(.minutes(1)))
struct MessageChannelTests {
    @Test func framesKeepTheirBoundaries() throws {
        let (left, right) = try MessageChannel.pair()
        try left.send([])
        try left.send([7])
        try left.send(Array(repeating: 9, count: 70_000))
        #expect(try right.receive(timeout: .seconds(5)) == [])
        #expect(try right.receive(timeout: .seconds(5)) == [7])
        #expect(try right.receive(timeout: .seconds(5)) == Array(repeating: 9, count: 70_000))
        #expect(try right.receive(timeout: .milliseconds(20)) == nil)
    }

    @Test func aFrameArrivingInPartsIsCompletedByTheNextReceive() throws {
        let (left, right) = try MessageChannel.pair()
        // Little-endian 5, then the payload in two writes.
        try writeRaw(left.fileDescriptor, [5, 0, 0, 0, 1, 2])
        #expect(try right.receive(timeout: .milliseconds(20)) == nil)
        try writeRaw(left.fileDescriptor, [3, 4, 5])
        #expect(try right.receive(timeout: .seconds(5)) == [1, 2, 3, 4, 5])
    }

    @Test func anOversizedLengthIsACorruptFrame() throws {
        let (left, right) = try MessageChannel.pair()
        try writeRaw(left.fileDescriptor, [0xff, 0xff, 0xff, 0xff])
        let error = #expect(throws: ProcessError.self) { try right.receive(timeout: .seconds(5)) }
        #expect(error?.code == .corruptFrame)
    }

    @Test func closingIsSeenAsThePeerGoneEvenInTheMiddleOfAFrame() throws {
        let (left, right) = try MessageChannel.pair()
        try writeRaw(left.fileDescriptor, [9, 0, 0, 0, 1])
        left.close()
        let error = #expect(throws: ProcessError.self) { try right.receive(timeout: .seconds(5)) }
        #expect(error?.code == .peerGone)
        #expect(error?.message.contains("middle of a frame") == true)
        let sendError = #expect(throws: ProcessError.self) { try right.send([1]) }
        #expect(sendError?.code == .peerGone)
    }

    @Test func framesWrittenInOddPiecesArriveWholeAndInOrderAndLeaveNothingBuffered() throws {
        let (left, right) = try MessageChannel.pair()
        // Small frames, one larger than the read buffer, and small ones after it, as one byte stream.
        let frames: [[UInt8]] =
            (0..<300).map { Array(repeating: UInt8($0 & 0xFF), count: $0 % 37) }
            + [Array((0..<200_000).map { UInt8($0 % 251) })]
            + (0..<50).map { [UInt8($0), 1, 2] }
        var stream: [UInt8] = []
        for frame in frames {
            let length = UInt32(frame.count)
            stream += [0, 8, 16, 24].map { UInt8(truncatingIfNeeded: length >> $0) } + frame
        }
        let bytes = stream
        let writer = Thread {
            // Pieces of 1 to 9000 bytes, so that headers and frames are split everywhere.
            var offset = 0
            var piece = 1
            while offset < bytes.count {
                let end = min(bytes.count, offset + piece)
                _ = bytes[offset..<end].withUnsafeBytes { write(left.fileDescriptor, $0.baseAddress, $0.count) }
                offset = end
                piece = piece * 7 % 9001 + 1
            }
        }
        writer.start()
        for (index, frame) in frames.enumerated() {
            // Blocking and timed receives in turn.
            let received = index % 2 == 0 ? try right.receive() : try right.receive(timeout: .seconds(10))
            #expect(received == frame, "frame \(index)")
        }
        #expect(try right.receive(timeout: .zero) == nil)
        var request = pollfd(fd: right.fileDescriptor, events: Int16(POLLIN), revents: 0)
        #expect(poll(&request, 1, 0) == 0, "the descriptor polls readable with nothing left to receive")
    }

    private func writeRaw(_ fd: Int32, _ bytes: [UInt8]) throws {
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        try #require(written == bytes.count)
    }
}

@Suite("Signals, process ends and standard error tails as values")
struct ProcessValueTests {
    @Test func signalsHaveNamesAndNumbers() {
        let expected: [(Signal, String)] = [
            (.segmentationFault, "SIGSEGV (11)"), (.illegalInstruction, "SIGILL (4)"), (.trap, "SIGTRAP (5)"),
            (.abort, "SIGABRT (6)"), (.floatingPointException, "SIGFPE (8)"), (.busError, "SIGBUS (7)"),
            (.kill, "SIGKILL (9)"), (.terminate, "SIGTERM (15)"), (.interrupt, "SIGINT (2)"),
        ]
        for (signal, text) in expected { #expect(signal.description == text) }
        #expect(Signal(rawValue: Int32(__libc_current_sigrtmin()) + 2).name == "SIGRTMIN+2")
    }

    @Test func descriptionsExplainOutOfMemory() {
        #expect(
            ProcessEnd(cause: .signaled(.kill)).description
                == "was killed by signal SIGKILL (9), possibly by the kernel's out-of-memory killer"
        )
        #expect(
            ProcessEnd(
                cause: .signaled(.illegalInstruction),
                outOfMemoryLine: "Fatal error: Could not allocate memory."
            )
            .description == "ran out of memory and was killed by signal SIGILL (4)"
        )
        #expect(ProcessEnd(cause: .exited(status: 0)).description == "exited with status 0")
        #expect(ProcessEnd(cause: .exited(status: 2)).descriptionBeforeResult == "exited with status 2")
    }

    @Test func tailIsBoundedAndKeepsTheLinesThatExplainACrash() {
        var tail = StandardErrorTail(lineLimit: 3, byteLimit: 100)
        tail.append(Array("Fatal error: failed to allocate 64 bytes of memory with alignment 8\n".utf8))
        tail.append(Array("Fatal error: boom\n".utf8))
        for index in 0..<10 { tail.append(Array("noise \(index)\n".utf8)) }
        tail.append(Array("part".utf8))
        tail.append(Array("ial".utf8))
        #expect(tail.lines == ["noise 7", "noise 8", "noise 9", "partial"])
        #expect(tail.fatalErrorLine == "Fatal error: boom")
        #expect(tail.outOfMemoryLine?.hasPrefix("Fatal error: failed to allocate 64 bytes") == true)
    }

    @Test func tailBreaksLinesLongerThanItsByteBound() {
        var tail = StandardErrorTail(lineLimit: 10, byteLimit: 10)
        tail.append(Array(repeating: UInt8(ascii: "x"), count: 25) + [UInt8(ascii: "\n")])
        #expect(tail.lines == ["xxxxx"], "pieces of ten bytes, of which the bytes bound keeps the last")
        #expect(StandardErrorTail.saysOutOfMemory("Fatal error: Could not allocate memory."))
        #expect(!StandardErrorTail.saysOutOfMemory("Fatal error: Index out of range"))
    }
}
