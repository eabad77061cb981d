import Foundation
import Glibc
import ParallelVM

// The direct route: on the spawner's host, spawn requests, messages and results pass between the spawner
// and a task process through shared memory, past the worker rank.

/// The task process's parent (its worker rank) and the task process itself.
let processPair = RemoteFunction("direct.processes") { (_: Int, _: TaskContext) -> [Int32] in
    [getppid(), getpid()]
}

/// The names of direct-route segments of `workers` that are in /dev/shm.
func directNames(of workers: [Int32]) -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? []
    return names.filter { name in workers.contains { name.hasPrefix("parallelvm-direct-\($0)-") } }.sorted()
}

/// Sleeps, then receives `count` byte arrays and returns their sizes, in order.
let slowReader = RemoteFunction("direct.slow-reader") { (count: Int, task: TaskContext) -> [Int] in
    sleep(3)
    var sizes: [Int] = []
    while sizes.count < count {
        guard let (_, message) = try task.receiveMessage(timeout: 30), case .user(let user) = message else {
            throw Failure(what: "no message after \(sizes)")
        }
        sizes.append(try user.decode(as: [UInt8].self).count)
    }
    return sizes
}

/// Sends the spawner `size` bytes, then returns.
let flooder = RemoteFunction("direct.flooder") { (size: Int, task: TaskContext) -> Int in
    try task.sendMessage(to: .spawner, [UInt8](repeating: 3, count: size))
    return size
}

/// Sends the spawner a greeting, then returns 42.
let greeter = RemoteFunction("direct.greeter") { (_: Int, task: TaskContext) -> Int in
    try task.sendMessage(to: .spawner, "hello")
    return 42
}

let directRouteFunctions: [any RemoteFunctionConvertible] = [processPair, slowReader, flooder, greeter]

let directRouteScenarios: [String: Scenario] = [
    // Spawns, results, messages both ways (short, in pieces, longer than a ring) and a task and the spawner
    // sending each other a long message at once.
    "direct-route": { vm, _ in
        let probes = try vm.spawnFunction(processPair, args: 0, count: vm.slots())
        var workers: [Int32] = []
        for (_, message) in try collect(vm, probes) {
            if case .taskResult(let result) = message { workers.append(try result.value(as: [Int32].self)[0]) }
        }
        report("workers", workers.sorted().map(String.init).joined(separator: ","))
        // The spawner removed the names as it opened the segments.
        report("namesDuringRun", directNames(of: workers).joined(separator: ","))

        var sum = 0
        for index in 0..<300 {
            for (_, message) in try collect(vm, try vm.spawnFunction(double, args: index, count: 1)) {
                if case .taskResult(let result) = message { sum += try result.value(as: Int.self) }
            }
        }
        report("sum", sum)

        let echoer = try vm.spawnFunction(echo, args: 0, count: 1)[0]
        var echoed: [String] = []
        for size in [0, 1, 1000, 61_440, 70_000, 200_000, 300_000, 2_000_000, 5, 100] {
            let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ size) }
            try vm.sendMessage(to: echoer, bytes)
            guard let (source, message) = try vm.receiveMessage(timeout: 30), case .user(let user) = message else {
                throw Failure(what: "no echo of \(size) bytes")
            }
            let back = try user.decode(as: [UInt8].self)
            echoed.append(source == echoer && back == bytes ? "\(size)" : "wrong")
        }
        try vm.sendMessage(to: echoer, "stop")
        for (_, message) in try collect(vm, [echoer]) {
            if case .taskResult(let result) = message { echoed.append("count \(try result.value(as: Int.self))") }
        }
        report("echoed", echoed.joined(separator: ","))

        // A task that does not read yet does not hold the spawner up: what does not fit in the ring goes
        // through its worker rank, after what is in the ring.
        let reader = try vm.spawnFunction(slowReader, args: 12, count: 1)
        let sendingStarted = Date()
        for index in 0..<12 { try vm.sendMessage(to: reader[0], [UInt8](repeating: 7, count: 50_000 + index)) }
        report("sendingSeconds", Date().timeIntervalSince(sendingStarted))
        for (_, message) in try collect(vm, reader) {
            if case .taskResult(let result) = message {
                report("readerGot", try result.value(as: [Int].self).map(String.init).joined(separator: ","))
            }
        }

        // Both ends write 3 MB at once: each takes in what the other sends while its ring is full.
        let crossing = try vm.spawnFunction(crosser, args: 3_000_000, count: 1)
        try vm.sendMessage(to: crossing[0], [UInt8](repeating: 1, count: 3_000_000))
        for (_, message) in try collect(vm, crossing) {
            switch message {
            case .user(let user): report("crossedToSpawner", try user.decode(as: [UInt8].self).count)
            case .taskResult(let result): report("crossedToTask", try result.value(as: Int.self))
            default: break
            }
        }
    },

    // A task killed while it writes a long message to the spawner leaves part of it in the ring: the next
    // task on that slot (one worker) still gets its messages through, whole.
    "direct-torn": { vm, _ in
        let flood = try vm.spawnFunction(flooder, args: 3_000_000, count: 1)
        // The task fills the ring and waits for the spawner, which does not read yet.
        usleep(1_000_000)
        try vm.kill(flood[0])
        for (_, message) in try collect(vm, flood) {
            switch message {
            case .user(let user): report("flooded", "\(try user.decode(as: [UInt8].self).count) bytes")
            case .taskResult(let result): report("flood", result.success ? "finished" : "killed")
            default: break
            }
        }
        let greeting = try vm.spawnFunction(greeter, args: 0, count: 1)
        report("sameSlot", greeting[0].slot == flood[0].slot)
        for (_, message) in try collect(vm, greeting) {
            switch message {
            case .user(let user): report("greeting", try user.decode(as: String.self))
            case .taskResult(let result): report("greeterValue", try result.value(as: Int.self))
            default: break
            }
        }
    },
]
