import Foundation
import ParallelVM

// The VM's status events, read for real on the spawner: a task that returns, a task that traps, a dispatch,
// and a subscription too small for what happens.

let eventEcho = RemoteFunction("events.echo") { (value: Int, _: TaskContext) -> Int in value }

let eventFunctions: [any RemoteFunctionConvertible] = [eventEcho]

/// One line per event: its sequence number, its type and the task or slot it is about.
func eventLine(_ event: VMEvent) -> String {
    let body: String
    switch event.kind {
    case .hostUp(let host, let slots): body = "hostUp \(host) \(slots.map(String.init).joined(separator: ","))"
    case .hostDown(let host): body = "hostDown \(host)"
    case .slotBusy(let slot, _, let task): body = "slotBusy \(slot) \(task)"
    case .slotFree(let slot, _): body = "slotFree \(slot)"
    case .taskSpawned(let start): body = "taskSpawned \(start.task) \(start.function) \(start.arguments)"
    case .taskResult(let task, _): body = "taskResult \(task)"
    case .taskFailed(let task, _, _): body = "taskFailed \(task)"
    case .taskCrashed(let task, _, let detail): body = "taskCrashed \(task) \(detail)"
    case .taskTimedOut(let task, _, _): body = "taskTimedOut \(task)"
    case .taskKilled(let task, _): body = "taskKilled \(task)"
    case .taskExit(let task): body = "taskExit \(task)"
    case .storagePrepared(let task, _, let files, _, _): body = "storagePrepared \(task) \(files)"
    case .mirrorSent(let host, let files, _, _, _): body = "mirrorSent \(host) \(files)"
    case .dispatchProgress(let done, let total, let finished):
        body = "dispatchProgress \(done) \(total.map(String.init) ?? "-") \(finished)"
    }
    return "\(event.sequence) \(body)"
}

/// Takes events up to the first that `last` accepts, waiting at most 30 s.
func takeEvents(_ events: VMEvents, until last: @escaping @Sendable (VMEvent) -> Bool) throws -> [VMEvent] {
    try waitForValue {
        try await withThrowingTaskGroup(of: [VMEvent].self) { group in
            group.addTask {
                var taken: [VMEvent] = []
                for await event in events {
                    taken.append(event)
                    if last(event) { break }
                }
                return taken
            }
            group.addTask {
                try await Task.sleep(for: .seconds(30))
                return []
            }
            let first = try await group.next() ?? []
            group.cancelAll()
            return first
        }
    }
}

/// Takes the next `count` events, waiting at most 30 s for them all.
func takeEvents(_ events: VMEvents, count: Int) throws -> [VMEvent] {
    try waitForValue {
        try await withThrowingTaskGroup(of: [VMEvent].self) { group in
            group.addTask {
                var taken: [VMEvent] = []
                for await event in events {
                    taken.append(event)
                    if taken.count == count { break }
                }
                return taken
            }
            group.addTask {
                try await Task.sleep(for: .seconds(30))
                return []
            }
            let first = try await group.next() ?? []
            group.cancelAll()
            return first
        }
    }
}

let eventScenarios: [String: Scenario] = [
    // A task that returns, then one that traps, then a dispatch of three jobs, each waited for with
    // receiveMessage or dispatch as a program would; prints every event one subscription saw.
    "events.order": { vm, _ in
        let events = vm.events
        let small = vm.events(bufferSize: 2)
        func waitForExit() throws {
            while let (_, message) = try vm.receiveMessage(timeout: 30) {
                if case .taskExit = message { return }
            }
            report("error", "no task exit within 30 s")
        }
        try vm.spawnFunction(eventEcho, args: 7, count: 1)
        try waitForExit()
        try vm.spawnFunction(faulty, args: "forceUnwrap", count: 1)
        try waitForExit()
        _ = try waitForValue { try await vm.dispatch((0..<3).map { Job(eventEcho, args: $0) }) }
        // Hosts (one per host), then 5 events per task (2 + 3 dispatched), 3 progress and 1 finished.
        let expected = vm.hosts().count + 5 * 5 + 4
        for event in try takeEvents(events, count: expected) { report("event", eventLine(event)) }
        report("smallDropped", small.droppedCount)
        for event in try takeEvents(small, count: 2) { report("smallEvent", eventLine(event)) }
    },
    // A task whose VM mirrors the folder given (which must lie in PARALLEL_MIRRORED_STORAGE) into its
    // storage: the worker's storage figures arrive as an event before the task's outcome.
    "events.storage": { _, arguments in
        let mirroring = try VM(mirrorMap: [arguments[0]: "."])
        let events = mirroring.events
        let task = try mirroring.spawnFunction(eventEcho, args: 1, count: 1)
        while let (_, message) = try mirroring.receiveMessage(timeout: 30) {
            if case .taskExit = message { break }
        }
        let exit = VMEvent.Kind.taskExit(task: task[0])
        for event in try takeEvents(events, until: { $0.kind == exit }) {
            report("event", eventLine(event))
            if case .storagePrepared(_, _, let files, let bytes, let seconds) = event.kind {
                report("storage", "\(files) \(bytes) \(seconds >= 0)")
            }
        }
    },
]
