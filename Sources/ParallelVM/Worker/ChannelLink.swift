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
    /// The shared memory through which the spawner on this host sends tasks here directly, and this
    /// process's doorbell, which the spawner rings when it wrote there while this process slept.
    private let direct: DirectSegment?
    private let doorbell: Doorbell?
    /// Whether the task running now came through `direct`: what it sends the spawner goes back that way.
    private let replyDirect = Atomic<Bool>(false)
    /// When the last frame came through `direct` (monotonic seconds).
    private let directArrival = Mutex<Double>(0)
    /// Held while reading `direct` (a message in pieces is put together there).
    private let directReading = Mutex(())

    init(
        channel: MessageChannel,
        rank: Int,
        size: Int,
        waitPolicy: WaitPolicy,
        direct: DirectSegment? = nil,
        doorbell: Doorbell? = nil
    ) {
        self.channel = channel
        self.rank = rank
        self.size = size
        self.waitPolicy = waitPolicy
        self.direct = direct
        self.doorbell = doorbell
    }

    /// The worker rank rings the spawner's doorbell for its task process.
    var quietSinceSpawner: Double { 0 }

    func send(_ frame: [UInt8], payload: [UInt8]?, to rank: Int) throws(VMError) {
        guard rank >= 0, rank < size else {
            throw VMError(.invalidDestination, "rank \(rank) does not exist (the VM has ranks 0...\(size - 1))")
        }
        // The worker rank keeps the task's folder note: it removes the folder should this process die.
        if rank == 0, let direct, replyDirect.load(ordering: .relaxed), frame.first != MessageKind.taskFolder.rawValue {
            var rang = 0.0
            let written = direct.write(Relay.encode(peer: 0, frame: frame, payload: payload)) {
                // A full ring: the spawner must read (ring it now and then: it may sleep again before this
                // message is all written), and may be writing to this process too (take in what it wrote).
                let now = monotonicSeconds()
                if now - rang > 0.001 {
                    rang = now
                    ringSpawner(direct)
                    if direct.peerEnded { return false }
                }
                if let envelope = try? takeDirect(direct) { pending.withLock { $0.append(envelope) } }
                sched_yield()
                return true
            }
            guard written else {
                throw VMError(.mpi, "the spawner's process ended while this task was sending it a message")
            }
            // The spawner may have gone to sleep on its doorbell meanwhile.
            if monotonicSeconds() - directArrival.withLock({ $0 }) > waitPolicy.spin / 2 { ringSpawner(direct) }
            return
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
        guard let direct else { return try readChannel(waiting: seconds) }
        let spinUntil =
            monotonicSeconds() + min(waitPolicy.spin.isInfinite ? 0.002 : waitPolicy.spin, seconds ?? .infinity)
        let deadline = seconds.map { monotonicSeconds() + $0 }
        var polls = 0
        while true {
            if let envelope = try takeDirect(direct) { return envelope }
            if let envelope = try readChannel(waiting: 0) { return envelope }
            polls += 1
            let now = polls & 15 == 0 ? monotonicSeconds() : 0
            if let deadline, now >= deadline { return nil }
            if now < spinUntil {
                sched_yield()
                continue
            }
            // Sleep on this process's doorbell (the spawner rings it) and the worker's channel at once.
            direct.setWaiting(true)
            defer { direct.setWaiting(false) }
            if direct.hasIncoming { continue }
            guard channel.prepareToBlock() else { continue }
            let milliseconds = deadline.map { Int32(max(1, min(10, ($0 - now) * 1000))) } ?? 10
            if let doorbell {
                _ = doorbell.wait(milliseconds: milliseconds, orReadable: channel.fileDescriptor)
            } else {
                var request = pollfd(fd: channel.fileDescriptor, events: Int16(POLLIN), revents: 0)
                _ = poll(&request, 1, milliseconds)
            }
            channel.finishBlocking()
        }
    }

    private func ringSpawner(_ direct: DirectSegment) {
        if let doorbell, let bell = direct.peerBell { doorbell.ring(pid: bell.pid, token: bell.token) }
    }

    /// Called as task `number` starts: when it came through the direct route, says so in the shared
    /// memory, where the worker rank finds what it needs to time the task out, kill it or report its
    /// crash, and returns true.
    func directTaskBegins(_ number: Int, function: String, sendBack: Bool, timeout: Double) -> Bool {
        guard let direct, replyDirect.load(ordering: .relaxed) else { return false }
        direct.beginTask(number, function: function, sendBack: sendBack, timeout: timeout, now: monotonicSeconds())
        return true
    }

    /// Called as a task that came through the direct route ends, before its end is sent: false when the
    /// worker rank is ending it (then it reports the task, and nothing may be sent for it).
    func directTaskEnds(_ number: Int) -> Bool {
        direct?.endTask(number) ?? true
    }

    private func takeDirect(_ direct: DirectSegment) throws(VMError) -> Envelope? {
        guard let bytes = directReading.withLock({ _ in direct.receive() }) else { return nil }
        directArrival.withLock { $0 = monotonicSeconds() }
        let (peer, frame, payload) = try Relay.decode(bytes)
        let envelope = try Envelope(sourceRank: peer, frame: frame, payload: payload)
        if envelope.kind == .spawn { replyDirect.store(true, ordering: .relaxed) }
        return envelope
    }

    private func readChannel(waiting seconds: Double?) throws(VMError) -> Envelope? {
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
        let envelope = try Envelope(sourceRank: peer, frame: frame, payload: payload)
        if envelope.kind == .spawn { replyDirect.store(false, ordering: .relaxed) }
        return envelope
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
