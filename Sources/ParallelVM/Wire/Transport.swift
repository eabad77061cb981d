import Foundation
import MPI
import Synchronization

/// Moves VM frames between ranks over the VM's private communicator, and does nothing else: what a frame
/// means is the business of the message types beside this file.
///
/// Every MPI call is made while holding `state`'s lock, so MPI only needs `MPI_THREAD_SERIALIZED` and the
/// spawner's main thread and a dispatcher thread can share the transport. Waits release the lock between
/// polls. Frames that arrive while a caller waits for something else (a send in progress, a storage
/// report) are kept in `pending`, in arrival order, so waiting never hides or reorders a message.
final class Transport: SpawnerLink {
    let communicator: Communicator
    let waitPolicy: WaitPolicy
    let rank: Int
    let size: Int
    /// Whether to note when frames from rank 0 arrive (a worker that may ring the spawner's doorbell).
    let tracksSpawnerArrivals: Bool
    /// The spawner's routes to task processes on its host, polled with MPI.
    let direct = DirectRoutes()

    private struct State: ~Copyable {
        var pending: [Envelope] = []
        /// When a frame from rank 0 last arrived (monotonic seconds), if tracked.
        var lastHeardFromSpawner = 0.0
        /// When a frame last arrived from each rank that ``watch(_:)`` named (monotonic seconds; nil for
        /// ranks not watched). Only the spawner watches: the worker ranks on other hosts.
        var lastHeard: [Double?] = []
    }
    private let state = Mutex(State())

    init(communicator: Communicator, waitPolicy: WaitPolicy, tracksSpawnerArrivals: Bool = false) {
        self.communicator = communicator
        self.waitPolicy = waitPolicy
        self.rank = Int(communicator.rank.rawValue)
        self.size = communicator.size
        self.tracksSpawnerArrivals = tracksSpawnerArrivals
    }

    /// Seconds since a frame from rank 0 last arrived (only meaningful with `tracksSpawnerArrivals`).
    var quietSinceSpawner: Double { monotonicSeconds() - state.withLock { $0.lastHeardFromSpawner } }

    /// Starts noting when frames from `ranks` arrive, as of now; heartbeats from them are taken in and
    /// dropped, never queued.
    func watch(_ ranks: [Int]) {
        let now = monotonicSeconds()
        state.withLock { state in
            if state.lastHeard.isEmpty { state.lastHeard = Array(repeating: nil, count: size) }
            for rank in ranks where rank >= 0 && rank < size { state.lastHeard[rank] = now }
        }
    }

    /// Seconds since a frame last arrived from each watched rank, by rank.
    func quietSince() -> [Int: Double] {
        let now = monotonicSeconds()
        return state.withLock { state in
            var quiet: [Int: Double] = [:]
            for (rank, heard) in state.lastHeard.enumerated() { if let heard { quiet[rank] = now - heard } }
            return quiet
        }
    }

    /// Sends a frame, and a separate payload after it when given, to `rank`. Returns when both buffers are
    /// free again; while a large send waits for its receiver, incoming frames are taken in, so two ranks
    /// sending large messages to each other never deadlock.
    func send(_ frame: [UInt8], payload: [UInt8]?, to rank: Int) throws(VMError) {
        guard rank >= 0, rank < size else {
            throw VMError(.invalidDestination, "rank \(rank) does not exist (the VM has ranks 0...\(size - 1))")
        }
        do {
            try frame.withUnsafeBytes { frameBytes in
                try (payload ?? []).withUnsafeBytes { payloadBytes in
                    try transfer(frameBytes, payload: payload == nil ? nil : payloadBytes, to: Rank(rank))
                }
            }
        } catch {
            throw VMError(.mpi, "sending to rank \(rank) failed: \(error)", underlying: error as? MPIError)
        }
    }

    /// Sends a frame from a buffer that lives only for the call: MPI is done with it when this returns.
    func sendTransient(_ frame: UnsafeRawBufferPointer, to rank: Int) throws(VMError) {
        guard rank >= 0, rank < size else {
            throw VMError(.invalidDestination, "rank \(rank) does not exist (the VM has ranks 0...\(size - 1))")
        }
        do {
            try transfer(frame, payload: nil, to: Rank(rank))
        } catch {
            throw VMError(.mpi, "sending to rank \(rank) failed: \(error)", underlying: error)
        }
    }

    private func transfer(
        _ frame: UnsafeRawBufferPointer,
        payload: UnsafeRawBufferPointer?,
        to rank: Rank
    ) throws(MPIError) {
        var first: SendRequest? = nil
        var second: SendRequest? = nil
        var firstDone = false
        // A small frame is usually sent at once: started and found done under one lock.
        let sent = try state.withLock { (_) throws(MPIError) -> Bool in
            first = try communicator.startSend(frame, to: rank, tag: Wire.tag)
            second = try payload.map { (bytes) throws(MPIError) in
                try communicator.startSend(bytes, to: rank, tag: Wire.tag)
            }
            firstDone = try first!.test()
            return firstDone && second == nil
        }
        if sent { return }
        var backoff = Backoff(waitPolicy)
        while true {
            let done = try state.withLock { (state) throws(MPIError) -> Bool in
                if !firstDone { firstDone = try first!.test() }
                var done = firstDone
                if done, second != nil { done = try second!.test() }
                if !done, let envelope = try poll(&state) { state.pending.append(envelope) }
                return done
            }
            if done { return }
            backoff.pause()
        }
    }

    /// Takes one frame off the wire if one is waiting (nil also for a frame that cannot be parsed, which
    /// is reported and dropped). Caller holds the lock.
    private func poll(_ state: inout State) throws(MPIError) -> Envelope? {
        if let envelope = direct.poll() { return envelope }
        guard let message = try communicator.matchedProbeIfAvailable(from: .any, tag: Wire.tag) else { return nil }
        let source = message.source
        let frame = try message.receive()
        if source.rawValue == 0, tracksSpawnerArrivals { state.lastHeardFromSpawner = monotonicSeconds() }
        let sourceRank = Int(source.rawValue)
        if sourceRank < state.lastHeard.count, state.lastHeard[sourceRank] != nil {
            state.lastHeard[sourceRank] = monotonicSeconds()
            // A heartbeat has said all it has to say by arriving (dropped like a frame that cannot be parsed).
            if frame.first == MessageKind.heartbeat.rawValue, frame.count > 1, frame[1] & Wire.flagSeparatePayload == 0
            {
                return nil
            }
        }
        var payload: [UInt8]? = nil
        if frame.count > 1, frame[1] & Wire.flagSeparatePayload != 0 {
            // The sender posted the payload right after the header on the same tag, so it is next from them.
            payload = try communicator.matchedProbe(from: source, tag: Wire.tag).receive()
        }
        do {
            return try Envelope(sourceRank: Int(source.rawValue), frame: frame, payload: payload)
        } catch {
            // A frame we cannot parse is reported and dropped rather than stopping the process.
            FileHandle.standardError.write(Data("ParallelVM: \(error)\n".utf8))
            return nil
        }
    }

    /// Returns the first frame that satisfies `matching`, waiting until `deadline`. Frames that do not
    /// match stay queued in arrival order. `idleWait`, when given, replaces the sleep between polls once
    /// the spin time is over.
    func receive(
        until deadline: Deadline,
        matching: (Envelope) -> Bool,
        idleWait: (() -> Bool)?
    ) throws(VMError) -> Envelope? {
        var backoff = Backoff(waitPolicy, idleWait: idleWait)
        var checked = 0
        while true {
            // nil: nothing new; .some(nil): a frame came in, not matching (or not parsed).
            let found = try state.withLock { (state) throws(VMError) -> Envelope?? in
                if checked < state.pending.count {
                    if let index = state.pending[checked...].firstIndex(where: matching) {
                        return .some(state.pending.remove(at: index))
                    }
                    checked = state.pending.count
                }
                let envelope: Envelope
                do {
                    guard let polled = try poll(&state) else { return nil }
                    envelope = polled
                } catch {
                    throw VMError(.mpi, "receiving failed: \(error)", underlying: error)
                }
                if matching(envelope) { return .some(envelope) }
                state.pending.append(envelope)
                checked = state.pending.count
                return .some(nil)
            }
            switch found {
            case .some(.some(let envelope)): return envelope
            case .some(.none): continue
            case .none:
                if deadline.hasPassed { return nil }
                backoff.pause()
            }
        }
    }

    /// Whether a frame satisfying `matching` is queued or waiting on the wire (never blocks).
    func hasIncoming(matching: (Envelope) -> Bool) throws(VMError) -> Bool {
        try state.withLock { (state) throws(VMError) -> Bool in
            do {
                while let envelope = try poll(&state) { state.pending.append(envelope) }
            } catch {
                throw VMError(.mpi, "probing for messages failed: \(error)", underlying: error)
            }
            return state.pending.contains(where: matching)
        }
    }

    /// Drops queued frames for which `predicate` is true and returns how many were dropped.
    @discardableResult
    func removePending(where predicate: (Envelope) -> Bool) -> Int {
        state.withLock { state in
            let before = state.pending.count
            state.pending.removeAll(where: predicate)
            return before - state.pending.count
        }
    }
}
