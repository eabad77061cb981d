import Foundation
import Glibc
import ParallelVMProcess
import Synchronization
import Testing

/// A channel whose small frames pass through rings in shared memory, as between a worker rank and its task
/// process: order across the ring and the socket, wake-ups of a blocked receiver, a full ring, the peer's end.
@Suite("Message channel with shared-memory rings", .timeLimit(.minutes(1)))
struct SharedRingChannelTests {
    @Test func smallFramesGoThroughTheRingAndLargeOnesKeepTheirPlace() throws {
        let (left, right) = try MessageChannel.pair(sharedMemory: true)
        #expect(left.hasSharedMemory && right.hasSharedMemory)
        // Ring, socket (over the ring's largest frame), ring, empty (a ring frame, not a wake-up), socket.
        let frames: [[UInt8]] = [
            [1, 2, 3], Array((0..<70_000).map { UInt8($0 % 251) }), [4], [], Array(repeating: 5, count: 3_000_000),
            Array(repeating: 6, count: 65_536),
        ]
        let sender = Thread { for frame in frames { try? left.send(frame) } }
        sender.start()
        for (index, frame) in frames.enumerated() {
            let received = try right.receive(timeout: .seconds(20))
            #expect(received == frame, "frame \(index) of \(frame.count) bytes")
        }
        #expect(try right.receive(timeout: .milliseconds(20)) == nil)
    }

    @Test func aReceiverBlockedInTheKernelIsWokenByAFrameInTheRing() throws {
        let (left, right) = try MessageChannel.pair(sharedMemory: true)
        let received = Mutex<[[UInt8]]>([])
        let receiver = Thread {
            // Long past the spin of a receive: this one blocks in poll, and only a wake-up ends it in time.
            for _ in 0..<3 {
                if let frame = try? right.receive(timeout: .seconds(20)) { received.withLock { $0.append(frame) } }
            }
        }
        receiver.start()
        for value in [UInt8(10), 11, 12] {
            usleep(100_000)
            try left.send([value])
        }
        let deadline = Date().addingTimeInterval(20)
        while received.withLock({ $0.count }) < 3, Date() < deadline { usleep(1_000) }
        #expect(received.withLock { $0 } == [[10], [11], [12]])
    }

    @Test func aSenderWaitsForRoomWhenTheRingIsFull() throws {
        let (left, right) = try MessageChannel.pair(sharedMemory: true)
        // 8 MB in frames of 4000 bytes: many times the ring, so the sender must wait for the receiver.
        let count = 2_000
        let sender = Thread {
            for index in 0..<count { try? left.send(Array(repeating: UInt8(index % 256), count: 4_000)) }
        }
        sender.start()
        usleep(50_000)
        for index in 0..<count {
            let frame = try #require(try right.receive(timeout: .seconds(20)), "frame \(index) did not come")
            #expect(frame.count == 4_000 && frame.first == UInt8(index % 256), "frame \(index)")
        }
    }

    @Test func framesSentBeforeThePeerClosedArriveThenThePeerIsGone() throws {
        let (left, right) = try MessageChannel.pair(sharedMemory: true)
        try left.send([1])
        try left.send(Array(repeating: 2, count: 100_000))
        try left.send([3])
        left.close()
        #expect(try right.receive(timeout: .seconds(5)) == [1])
        #expect(try right.receive(timeout: .seconds(5)) == Array(repeating: 2, count: 100_000))
        #expect(try right.receive(timeout: .seconds(5)) == [3])
        let error = #expect(throws: ProcessError.self) { try right.receive(timeout: .seconds(5)) }
        #expect(error?.code == .peerGone)
        let sendError = #expect(throws: ProcessError.self) { try right.send([4]) }
        #expect(sendError?.code == .peerGone)
    }

    @Test func aPeerThatClosesWhileTheReceiverSpinsIsNoticedByPollsWithoutWaiting() throws {
        let (left, right) = try MessageChannel.pair(sharedMemory: true)
        #expect(try right.receive(timeout: .zero) == nil)
        left.close()
        // Polls that do not wait look at the socket every so often, so a closed peer shows within a few.
        var failure: ProcessError?
        for _ in 0..<1_000 where failure == nil {
            do { _ = try right.receive(timeout: .zero) } catch { failure = error }
        }
        #expect(failure?.code == .peerGone)
    }

    @Test func aSenderFacingAFullRingOfAGonePeerIsToldSo() throws {
        let (left, right) = try MessageChannel.pair(sharedMemory: true)
        right.close()
        var failure: ProcessError?
        // The ring holds 256 KiB: this fills it, then the sender must find the peer gone instead of waiting.
        for _ in 0..<200 where failure == nil {
            do { try left.send(Array(repeating: 1, count: 4_000)) } catch { failure = error }
        }
        #expect(failure?.code == .peerGone)
    }

    @Test func aCallerPollingTheDescriptorSeesAFrameWrittenIntoTheRing() throws {
        let (left, right) = try MessageChannel.pair(sharedMemory: true)
        try left.send([1])
        #expect(right.prepareToBlock() == false, "a frame is waiting, so the caller must not block")
        #expect(try right.receive(timeout: .zero) == [1])
        #expect(right.prepareToBlock())
        var request = pollfd(fd: right.fileDescriptor, events: Int16(POLLIN), revents: 0)
        #expect(poll(&request, 1, 0) == 0)
        try left.send([2])
        #expect(poll(&request, 1, 5_000) == 1, "the frame in the ring did not make the descriptor readable")
        right.finishBlocking()
        #expect(try right.receive(timeout: .seconds(5)) == [2])
        #expect(try right.receive(timeout: .milliseconds(20)) == nil)
    }
}
