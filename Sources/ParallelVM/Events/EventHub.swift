import Foundation
import Synchronization

/// Hands the spawner's status events to every subscriber of ``VM/events``.
///
/// One per process, as the spawner is. Emitting costs one relaxed atomic load while nobody listens, so the
/// spawner's hot path stays as it was. Each subscriber has a bounded buffer that keeps the newest events:
/// a slow reader loses the oldest ones (counted), and the VM never waits for it.
final class EventHub: Sendable {
    static let shared = EventHub()

    private struct Subscriber {
        let continuation: AsyncStream<VMEvent>.Continuation
        let drops: VMEvents.DropCounter
    }

    private struct State {
        var subscribers: [Int: Subscriber] = [:]
        var nextID = 0
        var sequence = 0
    }

    private let state = Mutex(State())
    /// The number of subscribers, read without the lock on every emit.
    private let listeners = Atomic<Int>(0)

    /// Whether anyone listens; when not, an event's payload need not even be built.
    var hasListeners: Bool { listeners.load(ordering: .relaxed) > 0 }

    /// Delivers an event to every subscriber; `kind` is only evaluated when someone listens.
    func emit(_ kind: @autoclosure () -> VMEvent.Kind) {
        guard hasListeners else { return }
        let kind = kind()
        let time = Date()
        state.withLock { state in
            // Numbered and delivered under the lock, so every subscriber sees one order.
            state.sequence += 1
            let event = VMEvent(sequence: state.sequence, time: time, kind: kind)
            for subscriber in state.subscribers.values {
                if case .dropped = subscriber.continuation.yield(event) { subscriber.drops.add() }
            }
        }
    }

    /// Adds a subscriber whose buffer keeps the newest `bufferSize` events; `initial` (the current hosts
    /// and busy slots) are its first events.
    func subscribe(bufferSize: Int, initial: () -> [VMEvent.Kind]) -> VMEvents {
        let (stream, continuation) = AsyncStream.makeStream(
            of: VMEvent.self,
            bufferingPolicy: .bufferingNewest(bufferSize)
        )
        let drops = VMEvents.DropCounter()
        let kinds = initial()
        let id = state.withLock { state in
            let id = state.nextID
            state.nextID += 1
            for kind in kinds {
                state.sequence += 1
                if case .dropped = continuation.yield(VMEvent(sequence: state.sequence, time: Date(), kind: kind)) {
                    drops.add()
                }
            }
            state.subscribers[id] = Subscriber(continuation: continuation, drops: drops)
            listeners.add(1, ordering: .relaxed)
            return id
        }
        continuation.onTermination = { [weak self] _ in self?.unsubscribe(id) }
        return VMEvents(stream: stream, drops: drops)
    }

    private func unsubscribe(_ id: Int) {
        state.withLock { state in
            if state.subscribers.removeValue(forKey: id) != nil { listeners.subtract(1, ordering: .relaxed) }
        }
    }

    /// Ends every subscription (the VM was finalized): their loops end after the buffered events.
    func finishAll() {
        let continuations = state.withLock { state in state.subscribers.values.map(\.continuation) }
        for continuation in continuations { continuation.finish() }
    }
}

/// The VM's status events, as an `AsyncSequence`: see ``VM/events``.
///
/// The buffer keeps the newest events; when the reader falls behind, the oldest are dropped and counted
/// in ``droppedCount``. The sequence ends when the VM is finalized. Iterate it once: it has one reader.
public struct VMEvents: AsyncSequence, Sendable {
    /// The events, one at a time.
    public typealias Element = VMEvent
    /// The iterator: the stream's own.
    public typealias AsyncIterator = AsyncStream<VMEvent>.Iterator

    /// Counts the events this subscription lost to a full buffer.
    final class DropCounter: Sendable {
        private let count = Atomic<Int>(0)
        func add() { count.add(1, ordering: .relaxed) }
        var value: Int { count.load(ordering: .relaxed) }
    }

    let stream: AsyncStream<VMEvent>
    let drops: DropCounter

    /// How many events were dropped so far because the buffer was full.
    public var droppedCount: Int { drops.value }

    /// Makes the iterator.
    public func makeAsyncIterator() -> AsyncStream<VMEvent>.Iterator { stream.makeAsyncIterator() }
}
