import Foundation
import Synchronization

/// Sends each event, as one server-sent event, to every open `/api/stream`. A client that reads too slowly
/// loses its oldest events, as the VM's own subscribers do.
final class Broadcaster: Sendable {
    private struct State {
        var clients: [Int: AsyncStream<String>.Continuation] = [:]
        var nextID = 0
        var finished = false
    }
    private let state = Mutex(State())
    private let encoder = JSONEncoder()

    /// A new client's stream of SSE frames; it ends when the monitor stops.
    func subscribe() -> AsyncStream<String> {
        let (stream, continuation) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingNewest(256))
        let id = state.withLock { state -> Int? in
            guard !state.finished else { return nil }
            let id = state.nextID
            state.nextID += 1
            state.clients[id] = continuation
            return id
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.clients.removeValue(forKey: id) }
        }
        // Tells the page at once that the stream is open.
        continuation.yield(": connected\n\n")
        return stream
    }

    func send(_ record: EventRecord) {
        guard let data = try? encoder.encode(record), let json = String(data: data, encoding: .utf8) else { return }
        let frame = "id: \(record.sequence)\nevent: vm\ndata: \(json)\n\n"
        state.withLock { state in
            for client in state.clients.values { client.yield(frame) }
        }
    }

    /// A comment line, so that proxies and browsers keep an idle stream open.
    func sendHeartbeat() {
        state.withLock { state in
            for client in state.clients.values { client.yield(": heartbeat\n\n") }
        }
    }

    func finish() {
        let clients = state.withLock { state in
            state.finished = true
            defer { state.clients = [:] }
            return Array(state.clients.values)
        }
        for client in clients { client.finish() }
    }
}
