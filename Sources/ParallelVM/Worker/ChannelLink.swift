import Glibc
import ParallelVMProcess
import Synchronization

/// A task process's link to the VM: the channel to the worker rank that supervises it. Frames go out
/// with the rank they are for, and the worker forwards them over MPI; frames for the task process come in
/// with the rank that sent them. To the ``Worker`` that serves tasks here it looks like MPI.
final class ChannelLink: FrameLink {
    let channel: MessageChannel
    let rank: Int
    let size: Int
    let waitPolicy: WaitPolicy
    private let pending = Mutex<[Envelope]>([])

    init(channel: MessageChannel, rank: Int, size: Int, waitPolicy: WaitPolicy) {
        self.channel = channel
        self.rank = rank
        self.size = size
        self.waitPolicy = waitPolicy
    }

    /// The worker rank rings the spawner's doorbell for its task process.
    var quietSinceSpawner: Double { 0 }

    func send(_ frame: [UInt8], payload: [UInt8]?, to rank: Int) throws(VMError) {
        guard rank >= 0, rank < size else {
            throw VMError(.invalidDestination, "rank \(rank) does not exist (the VM has ranks 0...\(size - 1))")
        }
        do {
            try channel.send(Relay.encode(peer: rank, frame: frame, payload: payload))
        } catch {
            throw VMError(.mpi, "sending to rank \(rank) through the worker failed: \(error)", underlying: error)
        }
    }

    /// Reads one frame from the channel, waiting up to `seconds` (nil: without end).
    ///
    /// It looks without blocking for the spin time first, as the ranks do: waking a process blocked in the
    /// kernel costs tens of microseconds, more than a trivial task.
    private func read(waiting seconds: Double?) throws(VMError) -> Envelope? {
        let bytes: [UInt8]?
        do {
            var found: [UInt8]? = nil
            if seconds.map({ $0 > 0 }) ?? true, !waitPolicy.spin.isZero {
                let spinUntil =
                    monotonicSeconds() + min(waitPolicy.spin.isInfinite ? 0.002 : waitPolicy.spin, seconds ?? .infinity)
                var polls = 0
                while found == nil {
                    found = try channel.receive(timeout: .zero)
                    polls += 1
                    if polls & 15 == 0, monotonicSeconds() >= spinUntil { break }
                    if found == nil { sched_yield() }
                }
            }
            if let found {
                bytes = found
            } else {
                bytes = try channel.receive(timeout: seconds.map { .nanoseconds(Int64($0 * 1e9)) })
            }
        } catch {
            throw VMError(.mpi, "the worker rank supervising this task process is gone: \(error)", underlying: error)
        }
        guard let bytes else { return nil }
        let (peer, frame, payload) = try Relay.decode(bytes)
        return try Envelope(sourceRank: peer, frame: frame, payload: payload)
    }

    func receive(
        until deadline: Deadline,
        matching: (Envelope) -> Bool,
        idleWait: (() -> Bool)?
    ) throws(VMError) -> Envelope? {
        if let queued = pending.withLock({ queue -> Envelope? in
            guard let index = queue.firstIndex(where: matching) else { return nil }
            return queue.remove(at: index)
        }) {
            return queued
        }
        while true {
            guard let envelope = try read(waiting: deadline.remaining) else { return nil }
            if matching(envelope) { return envelope }
            pending.withLock { $0.append(envelope) }
            if deadline.hasPassed { return nil }
        }
    }

    func hasIncoming(matching: (Envelope) -> Bool) throws(VMError) -> Bool {
        while let envelope = try read(waiting: 0) { pending.withLock { $0.append(envelope) } }
        return pending.withLock { $0.contains(where: matching) }
    }

    @discardableResult
    func removePending(where predicate: (Envelope) -> Bool) -> Int {
        pending.withLock { queue in
            let before = queue.count
            queue.removeAll(where: predicate)
            return before - queue.count
        }
    }
}
