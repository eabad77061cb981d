import Foundation
import Glibc
import ParallelVM

// MARK: - Functions every rank registers

let double = RemoteFunction("double") { (x: Int, _: TaskContext) in 2 * x }

struct Failure: Error, CustomStringConvertible {
    let what: String
    var description: String { "failure: \(what)" }
}

let failing = RemoteFunction("failing") { (what: String, _: TaskContext) -> Int in throw Failure(what: what) }

let sleeper = RemoteFunction("sleeper") { (seconds: Double, task: TaskContext) -> String in
    usleep(UInt32(seconds * 1e6))
    return task.taskID.description
}

/// Waits for the spawner to name a peer, then sends it `count` numbered messages.
let talker = RemoteFunction("talker") { (count: Int, task: TaskContext) -> Int in
    guard let (_, message) = try task.receiveMessage(timeout: 30), case .user(let user) = message else {
        throw Failure(what: "no peer")
    }
    let peer = try user.decode(as: TaskID.self)
    for index in 0..<count { try task.sendMessage(to: peer, index) }
    return count
}

/// Receives `count` numbered messages and returns whether they came in order.
let listener = RemoteFunction("listener") { (count: Int, task: TaskContext) -> [Int] in
    var received: [Int] = []
    while received.count < count {
        guard let (_, message) = try task.receiveMessage(timeout: 30) else {
            throw Failure(what: "timeout after \(received.count)")
        }
        if case .user(let user) = message { received.append(try user.decode(as: Int.self)) }
    }
    return received
}

/// Sends back every byte array it receives until it receives a string.
let echo = RemoteFunction("echo") { (_: Int, task: TaskContext) -> Int in
    var count = 0
    while let (source, message) = try task.receiveMessage(timeout: 60), case .user(let user) = message,
        user.holds([UInt8].self)
    {
        try task.sendMessage(to: source, try user.decode(as: [UInt8].self))
        count += 1
    }
    return count
}

/// Logs at several levels and returns its host.
let chatty = RemoteFunction("chatty") { (_: Int, task: TaskContext) -> String in
    task.logger.info("chatty info")
    task.logger.debug("chatty debug")
    return task.host.name
}

/// A state-carrying value: the equivalent of spawning a bound method.
struct Scaler: Spawnable {
    var factor: Int
    var values: [Int]
    func run(in task: TaskContext) throws -> [Int] { values.map { $0 * factor } }
}

/// Tries to create a VM inside a task, which only the spawner may do.
let nestedVM = RemoteFunction("nested-vm") { (_: Int, _: TaskContext) -> String in
    do {
        _ = try VM()
        return "no error"
    } catch {
        return "\(error)"
    }
}

let foundationFunctions: [any RemoteFunctionConvertible] = [
    nestedVM, double, failing, sleeper, talker, listener, echo, chatty, crosser, Scaler.remote,
]

/// Receives until every task in `tasks` has exited; returns the messages in arrival order.
func collect(_ vm: VM, _ tasks: [TaskID], timeout: Double = 30) throws -> [(TaskID, Message)] {
    var running = Set(tasks)
    var messages: [(TaskID, Message)] = []
    while !running.isEmpty {
        guard let (source, message) = try vm.receiveMessage(timeout: timeout) else {
            throw Failure(what: "timed out waiting for \(running.sorted())")
        }
        messages.append((source, message))
        if case .taskExit = message { running.remove(source) }
    }
    return messages
}

/// A value whose encoding always fails.
struct Unencodable: Encodable {
    func encode(to encoder: any Encoder) throws { throw Failure(what: "cannot encode me") }
}

func describe(_ error: any Error) -> String { "\(type(of: error)): \(error)" }

// MARK: - Scenarios

let foundationScenarios: [String: Scenario] = [
    // Slot accounting while spawning to every free slot and collecting.
    "slots": { vm, _ in
        report("slots", vm.slots())
        report("hosts", vm.hosts().count)
        report("free", vm.freeSlots())
        report("freeSet", vm.freeSlotsSet().sorted().map(String.init).joined(separator: ","))
        report("taskID", vm.taskID())
        report("parent", vm.parentTaskID().map(\.description) ?? "none")
        report("hostsWithFree", vm.hostsWithFreeSlots().count)
        let tasks = try vm.spawnFunction(sleeper, args: 0.2)
        report("spawned", tasks.count)
        report("freeAfterSpawn", vm.freeSlots())
        report("hostsWithFreeAfterSpawn", vm.hostsWithFreeSlots().count)
        report("moreSpawned", try vm.spawnFunction(double, args: 1).count)
        var exits = 0
        while exits < tasks.count, let (_, message) = try vm.receiveMessage(timeout: 30) {
            if case .taskExit = message {
                exits += 1
                report("freeAfterExit", vm.freeSlots())
            }
        }
        report("exits", exits)
        report("freeAtEnd", vm.freeSlots())
        report("config", String(vm.formatSpawnerConfig().split(separator: "\n").first ?? ""))
    },

    // Results of many small tasks: each task's result before its exit, values right, count limits respected.
    "results": { vm, arguments in
        let total = Int(arguments.first ?? "20") ?? 20
        var next = 0
        var running: Set<TaskID> = []
        var inputs: [TaskID: Int] = [:]
        var results: [Int: Int] = [:]
        var resultSeen: Set<TaskID> = []
        var orderViolations = 0
        while next < total || !running.isEmpty {
            while next < total, vm.freeSlots() > 0 {
                let spawned = try vm.spawnFunction(double, args: next, count: 1)
                guard let task = spawned.first else { break }
                running.insert(task)
                inputs[task] = next
                next += 1
            }
            guard let (source, message) = try vm.receiveMessage(timeout: 30) else { throw Failure(what: "timeout") }
            switch message {
            case .taskResult(let result):
                results[inputs[source]!] = try result.value(as: Int.self)
                resultSeen.insert(source)
            case .taskExit:
                if !resultSeen.contains(source) { orderViolations += 1 }
                running.remove(source)
            default: break
            }
        }
        report("count", results.count)
        report("correct", (0..<total).allSatisfy { results[$0] == 2 * $0 })
        report("orderViolations", orderViolations)
        report("freeAtEnd", vm.freeSlots())
    },

    // A throwing task is reported with the error's type and text, and its worker serves the next spawn.
    "throwing": { vm, _ in
        guard let failed = try vm.spawnFunction(failing, args: "boom", count: 1).first else {
            throw Failure(what: "no slot")
        }
        for (_, message) in try collect(vm, [failed]) {
            if case .taskResult(let result) = message {
                report("success", result.success)
                report("errorType", result.error?.typeName ?? "")
                report("errorMessage", result.error?.message ?? "")
                report("errorFunction", result.error?.function ?? "")
                do {
                    _ = try result.value(as: Int.self)
                    report("valueThrows", false)
                } catch {
                    report("valueThrows", error is RemoteError)
                }
            }
        }
        guard let again = try vm.spawnFunction(double, args: 21, count: 1, targets: nil).first else {
            throw Failure(what: "no slot")
        }
        report("sameSlot", again.slot == failed.slot)
        for (_, message) in try collect(vm, [again]) {
            if case .taskResult(let result) = message { report("after", try result.value(as: Int.self)) }
        }
    },

    // Unknown function names and undecodable arguments give failed results that name them.
    "unknown": { vm, _ in
        let unknown = try vm.spawnFunction(named: "no-such-function", args: 1, count: 1)
        for (_, message) in try collect(vm, unknown) {
            if case .taskResult(let result) = message {
                report("unknownSuccess", result.success)
                report("unknownMessage", result.error?.message ?? "")
            }
        }
        let wrongType = try vm.spawnFunction(named: "double", args: "not a number", count: 1)
        for (_, message) in try collect(vm, wrongType) {
            if case .taskResult(let result) = message {
                report("decodeSuccess", result.success)
                report("decodeMessage", result.error?.message ?? "")
            }
        }
        let scaled = try vm.spawnFunction(Scaler(factor: 3, values: [1, 2, 3]), count: 1)
        for (_, message) in try collect(vm, scaled) {
            if case .taskResult(let result) = message {
                report("scaled", try result.value(as: [Int].self).map(String.init).joined(separator: ","))
                do {
                    _ = try result.value(as: String.self)
                } catch {
                    report("wrongResultType", error)
                }
            }
        }
    },

    // Task-to-task messages arrive in the order sent.
    "messaging": { vm, arguments in
        let count = Int(arguments.first ?? "200") ?? 200
        guard let receiver = try vm.spawnFunction(listener, args: count, count: 1).first,
            let sender = try vm.spawnFunction(talker, args: count, count: 1).first
        else { throw Failure(what: "needs two free slots") }
        try vm.sendMessage(to: sender, receiver)
        for (source, message) in try collect(vm, [receiver, sender]) {
            if case .taskResult(let result) = message, source == receiver {
                let received = try result.value(as: [Int].self)
                report("received", received.count)
                report("inOrder", received == Array(0..<count))
            }
        }
    },

    // Spawner to task and back, for sizes from empty to large, checking every byte.
    "bounce": { vm, arguments in
        let sizes = arguments.isEmpty ? [1, 1000, 100_000, 3_000_000] : arguments.compactMap(Int.init)
        guard let task = try vm.spawnFunction(echo, args: 0, count: 1).first else { throw Failure(what: "no slot") }
        for size in sizes {
            let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            try vm.sendMessage(to: task, bytes)
            guard let (_, message) = try vm.receiveMessage(timeout: 30), case .user(let user) = message else {
                throw Failure(what: "no echo for \(size)")
            }
            report("echo\(size)", try user.decode(as: [UInt8].self) == bytes)
        }
        try vm.sendMessage(to: task, "stop")
        for (_, message) in try collect(vm, [task]) {
            if case .taskResult(let result) = message { report("echoed", try result.value(as: Int.self)) }
        }
    },

    // receiveMessage: 0 polls, a positive timeout waits that long, nil waits until something comes.
    "timeouts": { vm, _ in
        var start = Date()
        report("pollEmpty", try vm.receiveMessage(timeout: 0) == nil)
        report("pollSeconds", Date().timeIntervalSince(start) < 0.1)
        start = Date()
        report("timedEmpty", try vm.receiveMessage(timeout: 0.5) == nil)
        let waited = Date().timeIntervalSince(start)
        report("timedWaited", waited >= 0.45 && waited < 3)
        report("incomingBefore", try vm.checkForIncoming())
        guard let task = try vm.spawnFunction(sleeper, args: 0.3, count: 1).first else {
            throw Failure(what: "no slot")
        }
        start = Date()
        let first = try vm.receiveMessage(timeout: nil)
        report("blockingGot", first.map { "\($0.source == task)" } ?? "nil")
        report("blockingWaited", Date().timeIntervalSince(start) >= 0.25)
        var seenExit = false
        while !seenExit {
            guard let (_, message) = try vm.receiveMessage(timeout: 10) else { break }
            if case .taskExit = message { seenExit = true }
        }
        report("sawExit", seenExit)
        // A task that is gone: waiting with a timeout returns nothing instead of hanging.
        start = Date()
        report("afterGone", try vm.receiveMessage(timeout: 0.3) == nil)
    },

    // Bad input: clear errors, nothing hangs.
    "bad-input": { vm, _ in
        func attempt(_ key: String, _ body: () throws -> Void) {
            do {
                try body()
                report(key, "no error")
            } catch {
                report(key, describe(error))
            }
        }
        attempt("countZero") { try vm.spawnFunction(double, args: 1, count: 0) }
        attempt("countNegative") { try vm.spawnFunction(double, args: 1, count: -2) }
        attempt("unknownHost") { try vm.spawnFunction(double, args: 1, targets: ["no-such-host"]) }
        attempt("invalidRank") { try vm.sendMessage(to: TaskID(slot: 99, number: 1), 1) }
        attempt("neverSpawned") { try vm.sendMessage(to: TaskID(slot: 1, number: 9999), 1) }
        let tasks = try vm.spawnFunction(double, args: 1, count: 1)
        _ = try collect(vm, tasks)
        attempt("finished") { try vm.sendMessage(to: tasks[0], 1) }
        attempt("unencodable") { try vm.sendMessage(to: .spawner, Unencodable()) }
        attempt("unencodableArgs") { try vm.spawnFunction(named: "double", args: Unencodable()) }
        report("freeAtEnd", vm.freeSlots())
    },

    // A message to a task number that has left its slot is dropped, not given to the slot's next task.
    "stale": { vm, _ in
        guard let first = try vm.spawnFunction(listener, args: 1, count: 1, targets: nil).first else {
            throw Failure(what: "no slot")
        }
        try vm.sendMessage(to: first, 1)
        _ = try collect(vm, [first])
        // Address the finished task directly at the transport level by racing: spawn in the same slot and
        // ask a second task to send to the finished number; the listener must not get it.
        guard let second = try vm.spawnFunction(listener, args: 1, count: 1, targets: nil).first else {
            throw Failure(what: "no slot")
        }
        guard let sender = try vm.spawnFunction(talker, args: 1, count: 1).first else {
            throw Failure(what: "needs 2 workers")
        }
        try vm.sendMessage(to: sender, TaskID(slot: second.slot, number: first.number))
        _ = try collect(vm, [sender])
        try vm.sendMessage(to: second, 42)
        for (source, message) in try collect(vm, [second]) {
            if case .taskResult(let result) = message, source == second {
                report("successorGot", try result.value(as: [Int].self).map(String.init).joined(separator: ","))
            }
        }
        report("sameSlot", first.slot == second.slot)
    },

    // Worker diagnostics reach the spawner's log with host and task.
    "debug": { vm, _ in
        let tasks = try vm.spawnFunction(chatty, args: 0, count: 1)
        for (_, message) in try collect(vm, tasks) {
            if case .taskResult(let result) = message { report("host", try result.value(as: String.self)) }
        }
        report("task", tasks[0])
    },

    // Spawner-only operations are refused inside a task, with an error that says so.
    "vm-in-task": { vm, _ in
        let tasks = try vm.spawnFunction(nestedVM, args: 0, count: 1)
        for (_, message) in try collect(vm, tasks) {
            if case .taskResult(let result) = message { report("nested", try result.value(as: String.self)) }
        }
        report("freeAtEnd", vm.freeSlots())
    },

    // Workers that have idled (asleep on their doorbells) serve requests again, small and large.
    "after-idle": { vm, _ in
        usleep(300_000)
        let big = [Int](0..<5_000)
        let tasks = try vm.spawnFunction(Scaler(factor: 2, values: big))
        var correct = 0
        for (_, message) in try collect(vm, tasks) {
            if case .taskResult(let result) = message, try result.value(as: [Int].self) == big.map({ $0 * 2 }) {
                correct += 1
            }
        }
        report("spawned", tasks.count)
        report("correct", correct)
        usleep(300_000)
        let again = try vm.spawnFunction(double, args: 4)
        var values: [Int] = []
        for (_, message) in try collect(vm, again) {
            if case .taskResult(let result) = message { values.append(try result.value(as: Int.self)) }
        }
        report("again", values.map(String.init).joined(separator: ","))
    },

    // Exits without finalize: the run must still end, cleanly.
    "forget-finalize": { vm, _ in
        let tasks = try vm.spawnFunction(double, args: 2)
        _ = try collect(vm, tasks)
        report("done", true)
        exit(0)
    },

    // The main program throws: mpirun must end the run instead of hanging.
    "main-throws": { vm, _ in
        _ = try vm.spawnFunction(sleeper, args: 0.1, count: 1)
        report("throwing", true)
        throw Failure(what: "main gives up")
    },

    // A long-running send does not deadlock against a task sending to the spawner at the same time.
    "crossing": { vm, _ in
        let size = 4_000_000
        guard let task = try vm.spawnFunction(crosser, args: size, count: 1).first else {
            throw Failure(what: "no slot")
        }
        try vm.sendMessage(to: task, [UInt8](repeating: 1, count: size))
        for (_, message) in try collect(vm, [task]) {
            switch message {
            case .user(let user): report("gotFromTask", try user.decode(as: [UInt8].self).count)
            case .taskResult(let result): report("taskGot", try result.value(as: Int.self))
            default: break
            }
        }
    },
]

/// Sends a large buffer to the spawner before receiving the spawner's large buffer.
let crosser = RemoteFunction("crosser") { (size: Int, task: TaskContext) -> Int in
    try task.sendMessage(to: .spawner, [UInt8](repeating: 2, count: size))
    guard let (_, message) = try task.receiveMessage(timeout: 30), case .user(let user) = message else {
        throw Failure(what: "nothing")
    }
    return try user.decode(as: [UInt8].self).count
}
