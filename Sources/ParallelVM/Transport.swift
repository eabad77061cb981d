import Foundation
import MPI

/// Moves VM frames between ranks over the VM's private communicator.
///
/// Every MPI call is made while holding `lock`, so MPI only needs `MPI_THREAD_SERIALIZED` and the spawner's
/// main thread and a dispatcher thread can share the transport. Waits release the lock between polls.
/// Frames that arrive while a caller waits for something else (a send in progress, a storage report)
/// are kept in `pending`, in arrival order, so waiting never hides or reorders a message.
final class Transport: @unchecked Sendable {
    // Invariant for @unchecked Sendable: `pending` and every MPI call are guarded by `lock`;
    // the other stored properties never change after init.
    let communicator: Communicator
    let waitPolicy: WaitPolicy
    private let lock = NSLock()
    private var pending: [Envelope] = []
    /// When a frame from rank 0 last arrived (guarded by `lock`).
    private var lastHeardFromSpawner = 0.0
    /// On a worker that shares the spawner's host: the spawner's doorbell, rung after a send to rank 0 when
    /// the spawner may have gone to sleep. Set once, by the worker loop, before tasks run.
    var spawnerDoorbell: (doorbell: Doorbell, pid: Int32, token: UInt64)?

    init(communicator: Communicator, waitPolicy: WaitPolicy) {
        self.communicator = communicator
        self.waitPolicy = waitPolicy
    }

    var rank: Int { Int(communicator.rank.rawValue) }
    var size: Int { communicator.size }

    /// Sends a frame, and a separate payload after it when given, to `rank`. Returns when both buffers are
    /// free again; while a large send waits for its receiver, incoming frames are taken in, so two ranks
    /// sending large messages to each other never deadlock.
    func send(_ frame: [UInt8], payload: [UInt8]? = nil, to rank: Int) throws(VMError) {
        guard rank >= 0, rank < size else {
            throw VMError(.invalidDestination, "rank \(rank) does not exist (the VM has ranks 0...\(size - 1))")
        }
        // The spawner sleeps only after `spin` without messages, and it last sent to us (so it was awake)
        // when we last heard from it: within half the spin time it cannot be asleep yet. Ring before
        // sending: a message above MPI's eager limit completes only once the spawner takes it.
        if rank == 0, let bell = spawnerDoorbell {
            let quiet = lock.withLock { monotonicSeconds() - lastHeardFromSpawner }
            if quiet > waitPolicy.spin / 2 { bell.doorbell.ring(pid: bell.pid, token: bell.token) }
        }
        do {
            try frame.withUnsafeBytes { frameBytes in
                try (payload ?? []).withUnsafeBytes { payloadBytes in
                    try transfer(frameBytes, payload: payload == nil ? nil : payloadBytes, to: Rank(rank))
                }
            }
        } catch {
            throw VMError(.mpi, "sending to rank \(rank) failed: \(error)")
        }
    }

    private func transfer(
        _ frame: UnsafeRawBufferPointer,
        payload: UnsafeRawBufferPointer?,
        to rank: Rank
    ) throws(MPIError) {
        lock.lock()
        defer { lock.unlock() }
        var first = try communicator.startSend(frame, to: rank, tag: Wire.tag)
        var second = try payload.map { (bytes) throws(MPIError) in
            try communicator.startSend(bytes, to: rank, tag: Wire.tag)
        }
        var backoff = Backoff(waitPolicy)
        while true {
            var done = try first.test()
            if done, second != nil { done = try second!.test() }
            if done { return }
            pending.append(contentsOf: try pollLocked())
            lock.unlock()
            backoff.pause()
            lock.lock()
        }
    }

    /// Takes one frame off the wire if one is waiting and returns what it carries: nothing, the frame, or for
    /// a result that also ends its task, the result and then a TaskExit. Caller holds `lock`.
    private func pollLocked() throws(MPIError) -> [Envelope] {
        guard let message = try communicator.matchedProbeIfAvailable(from: .any, tag: Wire.tag) else { return [] }
        let source = message.source
        let frame = try message.receive()
        if source.rawValue == 0, spawnerDoorbell != nil { lastHeardFromSpawner = monotonicSeconds() }
        var payload: [UInt8]? = nil
        if frame.count > 1, frame[1] & Wire.flagSeparatePayload != 0 {
            // The sender posted the payload right after the header on the same tag, so it is next from them.
            payload = try communicator.matchedProbe(from: source, tag: Wire.tag).receive()
        }
        let envelope: Envelope
        do {
            envelope = try Envelope(sourceRank: Int(source.rawValue), frame: frame, payload: payload)
        } catch {
            // A frame we cannot parse is reported and dropped rather than stopping the process.
            FileHandle.standardError.write(Data("ParallelVM: \(error)\n".utf8))
            return []
        }
        guard envelope.kind == .taskResult, envelope.flags & Wire.flagEndsTask != 0 else { return [envelope] }
        var exit = WireWriter(
            kind: .taskExit,
            sourceTask: envelope.sourceTask,
            destinationTask: envelope.destinationTask
        )
        exit.append((envelope.sentAt ?? monotonicSeconds()).bitPattern)
        guard let exitEnvelope = try? Envelope(sourceRank: envelope.sourceRank, frame: exit.bytes, payload: nil) else {
            return [envelope]
        }
        return [envelope, exitEnvelope]
    }

    /// Returns the first frame that satisfies `matching`, waiting up to `timeout` seconds (nil or negative:
    /// forever; 0: just look). Frames that do not match stay queued in arrival order.
    /// `idleWait`, when given, replaces the sleep between polls once the spin time is over.
    func receive(
        timeout: Double?,
        matching: (Envelope) -> Bool = { _ in true },
        idleWait: (() -> Bool)? = nil
    ) throws(VMError) -> Envelope? {
        let deadline: Double? = if let timeout, timeout >= 0 { monotonicSeconds() + timeout } else { nil }
        var backoff = Backoff(waitPolicy, idleWait: idleWait)
        var checked = 0
        while true {
            lock.lock()
            if checked < pending.count {
                if let index = pending[checked...].firstIndex(where: matching) {
                    let envelope = pending.remove(at: index)
                    lock.unlock()
                    return envelope
                }
                checked = pending.count
            }
            let polled: [Envelope]
            do {
                polled = try pollLocked()
            } catch {
                lock.unlock()
                throw VMError(.mpi, "receiving failed: \(error)")
            }
            if !polled.isEmpty {
                var found: Envelope? = nil
                for envelope in polled {
                    if found == nil, matching(envelope) {
                        found = envelope
                    } else {
                        pending.append(envelope)
                    }
                }
                if let found {
                    lock.unlock()
                    return found
                }
                checked = pending.count
                lock.unlock()
                continue
            }
            lock.unlock()
            if let deadline, monotonicSeconds() >= deadline { return nil }
            backoff.pause()
        }
    }

    /// Whether a frame satisfying `matching` is queued or waiting on the wire (never blocks).
    func hasIncoming(matching: (Envelope) -> Bool = { _ in true }) throws(VMError) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        do {
            while case let polled = try pollLocked(), !polled.isEmpty { pending.append(contentsOf: polled) }
        } catch {
            throw VMError(.mpi, "probing for messages failed: \(error)")
        }
        return pending.contains(where: matching)
    }

    /// Drops queued frames for which `predicate` is true and returns how many were dropped.
    @discardableResult
    func removePending(where predicate: (Envelope) -> Bool) -> Int {
        lock.lock()
        defer { lock.unlock() }
        let before = pending.count
        pending.removeAll(where: predicate)
        return before - pending.count
    }
}
