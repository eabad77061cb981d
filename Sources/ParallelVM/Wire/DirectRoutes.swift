import Foundation
import Glibc
import ParallelVMProcess
import Synchronization

/// The spawner's direct routes to the task processes of the worker ranks on its host (see
/// ``DirectSegment``): a spawn request and the frames for that task go into the task process's ring
/// instead of through MPI and its worker rank, and what the task sends the spawner comes back the same
/// way. ``Transport`` takes frames from these rings as it takes them from MPI.
final class DirectRoutes: Sendable {
    final class Route: FrameLink, @unchecked Sendable {
        // Invariant for @unchecked Sendable: writes go through `sending`'s lock, reads through `Transport`'s.
        let segment: DirectSegment
        /// The rank whose task process is at the other end.
        let peer: Int
        /// The frames sent here are the spawner's.
        var rank: Int { 0 }
        let size: Int
        let waitPolicy: WaitPolicy
        let doorbell: Doorbell?
        /// How a frame goes when the ring has no room for it: through the task process's worker rank.
        let fallback: @Sendable ([UInt8], [UInt8]?) throws(VMError) -> Void
        private let sending = Mutex(())
        /// The task whose frames go this way now (0: none).
        let task = Atomic<Int>(0)

        init(
            segment: DirectSegment,
            peer: Int,
            size: Int,
            waitPolicy: WaitPolicy,
            doorbell: Doorbell?,
            fallback: @escaping @Sendable ([UInt8], [UInt8]?) throws(VMError) -> Void
        ) {
            self.segment = segment
            self.fallback = fallback
            self.peer = peer
            self.size = size
            self.waitPolicy = waitPolicy
            self.doorbell = doorbell
        }

        var quietSinceSpawner: Double { 0 }

        /// Writes a frame for the task process when the ring has room for it, and wakes the task process
        /// when it sleeps. When the ring stays full (the task does not read its messages, or the frame is
        /// longer than the ring), the frame goes through the worker rank instead, as does every later
        /// frame for this task: they must not overtake it, and the worker rank takes in whatever comes,
        /// so that the spawner never waits for a busy task.
        func send(_ frame: [UInt8], payload: [UInt8]?, to rank: Int) throws(VMError) {
            let bytes = Relay.encode(peer: 0, frame: frame, payload: payload)
            let written = sending.withLock { _ in
                if segment.writeIfRoom(bytes) { return true }
                guard bytes.count < Int(DirectSegment.capacity) / 2 else { return false }
                // Room may come within a moment: the task process may be reading.
                let until = monotonicSeconds() + 0.0005
                repeat {
                    wakeTaskProcess()
                    receiving.withLock { queued in
                        while let envelope = decode(segment.receive()) { queued.append(envelope) }
                    }
                    sched_yield()
                    if segment.writeIfRoom(bytes) { return true }
                } while monotonicSeconds() < until
                return false
            }
            if written {
                wakeTaskProcess()
                return
            }
            task.store(0, ordering: .releasing)
            try fallback(frame, payload)
        }

        private func wakeTaskProcess() {
            if segment.takePeerWaiting(), let doorbell, let bell = segment.peerBell {
                doorbell.ring(pid: bell.pid, token: bell.token)
            }
        }

        func receive(
            until deadline: Deadline,
            matching: (Envelope) -> Bool,
            idleWait: (() -> Bool)?
        ) throws(VMError) -> Envelope? { nil }

        func hasIncoming(matching: (Envelope) -> Bool) throws(VMError) -> Bool { false }

        func removePending(where predicate: (Envelope) -> Bool) -> Int { 0 }

        /// Frames taken in while a send waited, in arrival order.
        private let receiving = Mutex<[Envelope]>([])

        /// The next frame from the task process, as if it came over MPI from its worker rank.
        func take() -> Envelope? {
            receiving.withLock { queued in
                if !queued.isEmpty { return queued.removeFirst() }
                return decode(segment.receive())
            }
        }

        private func decode(_ bytes: [UInt8]?) -> Envelope? {
            guard let bytes else { return nil }
            do {
                let (_, frame, payload) = try Relay.decode(bytes)
                return try Envelope(sourceRank: peer, frame: frame, payload: payload)
            } catch {
                FileHandle.standardError.write(
                    Data("ParallelVM: dropped a frame from rank \(peer)'s task process: \(error)\n".utf8)
                )
                return nil
            }
        }
    }

    /// The routes by rank, once opened; nil for a rank that has none (or whose segment could not be opened).
    private let routes = Mutex<[Int: Route?]>([:])
    /// The opened routes, for polling.
    private let open = Mutex<[Route]>([])
    /// Where the next poll starts, so that no task process is served before the others every time.
    private let next = Atomic<Int>(0)

    /// The route to the task process of `rank`, through the segment its worker rank made at `path`;
    /// opened on first use (`path` and `fallback` are made only then: this is on every spawn's way).
    func route(
        rank: Int,
        path: @autoclosure () -> String,
        size: Int,
        waitPolicy: WaitPolicy,
        doorbell: Doorbell?,
        fallback: @autoclosure () -> @Sendable ([UInt8], [UInt8]?) throws(VMError) -> Void
    ) -> Route? {
        routes.withLock { routes in
            if let known = routes[rank] { return known }
            var route: Route?
            if let segment = try? DirectSegment.open(path: path(), as: .spawner) {
                // Its worker rank and task processes hold it by descriptor: nothing stays in /dev/shm.
                segment.unlinkName()
                if let doorbell { segment.publishBell(pid: getpid(), token: doorbell.token) }
                route = Route(
                    segment: segment,
                    peer: rank,
                    size: size,
                    waitPolicy: waitPolicy,
                    doorbell: doorbell,
                    fallback: fallback()
                )
                open.withLock { $0.append(route!) }
            }
            routes[rank] = route
            return route
        }
    }

    /// A frame from some task process, if one is waiting.
    func poll() -> Envelope? {
        let routes = open.withLock { $0 }
        guard !routes.isEmpty else { return nil }
        let start = next.add(1, ordering: .relaxed).oldValue
        for offset in 0..<routes.count {
            if let envelope = routes[(start &+ offset) % routes.count].take() { return envelope }
        }
        return nil
    }
}
