import Foundation
import ParallelVM
import Synchronization

/// What the monitor knows of the run, built from the VM's events: hosts and their slots, tasks running and
/// recently finished, counters. Shared by the event reader and the HTTP handlers.
final class MonitorState: Sendable {
    /// Finished tasks kept for the task list.
    static let finishedKept = 200
    /// Events kept for `/api/events`.
    static let eventsKept = 1000

    struct Host: Sendable {
        var name: String
        /// Worker slots (ranks), the spawner's slot 0 excluded: it runs the program, not tasks.
        var slots: [Int]
        var spawnerHere: Bool
        var tasks: [Int: TaskID] = [:]
        var done = 0
        var up = true
    }

    struct TaskRow: Sendable, Codable {
        var id: String
        var slot: Int
        var function: String
        var arguments: String
        var host: String
        var started: Date
        var ended: Date?
        /// running, succeeded, failed, crashed, timedOut, killed, or exited (ended without a result sent back).
        var state: String
        var detail: String?
    }

    struct Counters: Sendable {
        var submitted = 0
        var done = 0
        var outcomes: [String: Int] = [:]
        var storageFiles = 0
        var storageBytes = 0
        var storageSeconds = 0.0
        var mirrorSentBytes = 0
        var events = 0
    }

    struct Progress: Sendable, Codable {
        var done: Int
        var total: Int?
        var finished: Bool
    }

    private struct State {
        var hosts: [String: Host] = [:]
        var hostOrder: [String] = []
        var running: [TaskID: TaskRow] = [:]
        var finished: [TaskRow] = []
        var counters = Counters()
        var progress: Progress?
        var events: [EventRecord] = []
        var lastSequence = 0
        var dropped = 0
    }

    private let state = Mutex(State())

    /// Takes one event into the state; returns its JSON form for the live stream.
    @discardableResult
    func apply(_ event: VMEvent, dropped: Int) -> EventRecord {
        let record = EventRecord(event)
        state.withLock { state in
            state.counters.events += 1
            state.lastSequence = event.sequence
            state.dropped = dropped
            state.events.append(record)
            if state.events.count > MonitorState.eventsKept {
                state.events.removeFirst(state.events.count - MonitorState.eventsKept)
            }
            Self.apply(event, to: &state)
        }
        return record
    }

    private static func apply(_ event: VMEvent, to state: inout State) {
        switch event.kind {
        case .hostUp(let host, let slots):
            if state.hosts[host.name] == nil { state.hostOrder.append(host.name) }
            state.hosts[host.name] = Host(
                name: host.name,
                slots: slots.filter { $0 > 0 },
                spawnerHere: slots.contains(0)
            )
        case .hostDown(let host):
            state.hosts[host.name]?.up = false
        case .slotBusy(let slot, let host, let task):
            state.hosts[host.name]?.tasks[slot] = task
            if state.running[task] == nil {
                state.counters.submitted += 1
                state.running[task] = TaskRow(
                    id: task.description,
                    slot: slot,
                    function: "",
                    arguments: "",
                    host: host.name,
                    started: event.time,
                    state: "running"
                )
            }
        case .slotFree(let slot, let host):
            state.hosts[host.name]?.tasks[slot] = nil
        case .taskSpawned(let start):
            state.running[start.task]?.function = start.function
            state.running[start.task]?.arguments = start.arguments
        case .taskResult(let task, _):
            state.running[task]?.state = "succeeded"
        case .taskFailed(let task, _, let message):
            state.running[task]?.state = "failed"
            state.running[task]?.detail = message
        case .taskCrashed(let task, _, let detail):
            state.running[task]?.state = "crashed"
            state.running[task]?.detail = detail
        case .taskTimedOut(let task, _, let seconds):
            state.running[task]?.state = "timedOut"
            state.running[task]?.detail = "ran over its \(seconds) s"
        case .taskKilled(let task, _):
            state.running[task]?.state = "killed"
        case .taskExit(let task):
            guard var row = state.running.removeValue(forKey: task) else { return }
            if row.state == "running" { row.state = "exited" }
            row.ended = event.time
            state.counters.done += 1
            state.counters.outcomes[row.state, default: 0] += 1
            state.hosts[row.host]?.done += 1
            state.finished.append(row)
            if state.finished.count > MonitorState.finishedKept {
                state.finished.removeFirst(state.finished.count - MonitorState.finishedKept)
            }
        case .storagePrepared(_, _, let files, let bytes, let seconds):
            state.counters.storageFiles += files
            state.counters.storageBytes += bytes
            state.counters.storageSeconds += seconds
        case .mirrorSent(_, _, let bytes, _, _):
            state.counters.mirrorSentBytes += bytes
        case .dispatchProgress(let done, let total, let finished):
            state.progress = Progress(done: done, total: total, finished: finished)
        }
    }

    // MARK: - Views

    /// The `/api/status` document.
    func status() -> StatusDocument {
        state.withLock { state in
            StatusDocument(
                hosts: state.hostOrder.compactMap { state.hosts[$0] }.map { host in
                    StatusDocument.HostEntry(
                        name: host.name,
                        slots: host.slots.count,
                        busy: host.tasks.count,
                        done: host.done,
                        up: host.up,
                        spawner: host.spawnerHere,
                        slotList: host.slots.map { slot in
                            StatusDocument.SlotEntry(slot: slot, task: host.tasks[slot]?.description)
                        }
                    )
                },
                tasks: StatusDocument.TaskCounts(
                    submitted: state.counters.submitted,
                    running: state.running.count,
                    done: state.counters.done,
                    outcomes: state.counters.outcomes
                ),
                running: state.running.values.sorted { $0.started < $1.started },
                finished: state.finished.suffix(50).reversed(),
                dispatch: state.progress,
                storage: StatusDocument.Storage(
                    files: state.counters.storageFiles,
                    bytes: state.counters.storageBytes,
                    seconds: state.counters.storageSeconds
                ),
                events: state.counters.events,
                droppedEvents: state.dropped,
                sequence: state.lastSequence
            )
        }
    }

    /// Events after `sequence`, oldest first.
    func events(after sequence: Int) -> [EventRecord] {
        state.withLock { state in state.events.filter { $0.sequence > sequence } }
    }

    /// The counters and per-host figures `/metrics` shows.
    func metricsSnapshot() -> (counters: Counters, running: Int, hosts: [Host], progress: Progress?, dropped: Int) {
        state.withLock { state in
            (
                state.counters, state.running.count, state.hostOrder.compactMap { state.hosts[$0] }, state.progress,
                state.dropped
            )
        }
    }
}

/// The JSON of `/api/status`.
struct StatusDocument: Codable, Sendable {
    struct SlotEntry: Codable, Sendable {
        var slot: Int
        var task: String?
    }

    struct HostEntry: Codable, Sendable {
        var name: String
        /// Worker slots on the host.
        var slots: Int
        var busy: Int
        var done: Int
        var up: Bool
        /// Whether the spawner (slot 0) runs on this host.
        var spawner: Bool
        var slotList: [SlotEntry]
    }

    struct TaskCounts: Codable, Sendable {
        var submitted: Int
        var running: Int
        var done: Int
        var outcomes: [String: Int]
    }

    struct Storage: Codable, Sendable {
        var files: Int
        var bytes: Int
        var seconds: Double
    }

    var hosts: [HostEntry]
    var tasks: TaskCounts
    var running: [MonitorState.TaskRow]
    var finished: [MonitorState.TaskRow]
    var dispatch: MonitorState.Progress?
    var storage: Storage
    var events: Int
    var droppedEvents: Int
    var sequence: Int
}
