import Foundation
import Glibc
import ParallelVM

// MARK: - Functions every rank registers for the dispatch scenarios

let dispatchDouble = RemoteFunction("dispatch.double") { (x: Int, _: TaskContext) in 2 * x }

struct DispatchFailure: Error, CustomStringConvertible {
    let value: Int
    var description: String { "no good: \(value)" }
}

/// Doubles, but throws for values that are 3 modulo 5.
let dispatchCheck = RemoteFunction("dispatch.check") { (x: Int, _: TaskContext) -> Int in
    if x % 5 == 3 { throw DispatchFailure(value: x) }
    return 2 * x
}

/// Doubles after sleeping `milliseconds`.
let dispatchSlow = RemoteFunction("dispatch.slow") { (input: [Int], _: TaskContext) -> Int in
    usleep(UInt32(input[1] * 1000))
    return 2 * input[0]
}

/// Doubles after an async sleep: jobs of this function run concurrently in one process.
let dispatchAsyncDouble = AsyncRemoteFunction("dispatch.asyncDouble") { (input: [Int], _: TaskContext) -> Int in
    try await Task.sleep(nanoseconds: UInt64(input[1]) * 1_000_000)
    return 2 * input[0]
}

/// Sends its input to the spawner as a user message, then returns it.
let dispatchNotify = RemoteFunction("dispatch.notify") { (x: Int, task: TaskContext) -> Int in
    try task.sendMessage(to: .spawner, "note \(x)")
    return x
}

/// Never registered: jobs of it must fail clearly.
let dispatchUnregistered = RemoteFunction("dispatch.unregistered") { (x: Int, _: TaskContext) in x }

let dispatchFunctions: [any RemoteFunctionConvertible] = [
    dispatchDouble, dispatchCheck, dispatchSlow, dispatchAsyncDouble, dispatchNotify,
]

/// Runs an async scenario body from the synchronous scenario table: the main thread waits, the body runs
/// on Swift's pool (the main thread is not one of the pool's threads, so blocking it starves nothing).
func waitFor(_ body: @escaping @Sendable () async throws -> Void) throws {
    let done = DispatchSemaphore(value: 0)
    let failure = FailureBox()
    Task {
        do { try await body() } catch { failure.set(error) }
        done.signal()
    }
    done.wait()
    if let error = failure.get() { throw error }
}

final class FailureBox: @unchecked Sendable {
    // Invariant for @unchecked Sendable: `error` is only touched while holding `lock`.
    private let lock = NSLock()
    private var error: (any Error)?
    func set(_ value: any Error) { lock.withLock { error = value } }
    func get() -> (any Error)? { lock.withLock { error } }
}

/// Whether results are in job order, complete, and each the double of its index.
func inOrderAndDoubled(_ results: [JobResult<Int>], count: Int) -> Bool {
    results.count == count
        && results.enumerated().allSatisfy { $0.offset == $0.element.index && $0.element.value == 2 * $0.offset }
}

/// Where jobs ran: "remote" (on workers) or "local" (in this process).
/// A chunk size given on the command line: a number, or `auto`.
func chunkSize(_ argument: String) -> ChunkSize {
    argument == "auto" ? .auto : .fixed(Int(argument) ?? 1)
}

func placement(_ results: [JobResult<Int>]) -> String {
    results.allSatisfy { $0.host != nil } ? "remote" : results.allSatisfy { $0.host == nil } ? "local" : "mixed"
}

// MARK: - Scenarios

let dispatchScenarios: [String: Scenario] = [
    // COUNT CHUNK REMOTE: results in order, the collector sees every job once, in completion order.
    "dispatch-order": { vm, arguments in
        let count = Int(arguments.first ?? "100") ?? 100
        let chunk = chunkSize(arguments.dropFirst().first ?? "1")
        let remote = (arguments.dropFirst(2).first ?? "1") == "1"
        try waitFor {
            var seen: [Int: Int] = [:]
            var hosts = Set<String>()
            let results = try await vm.dispatch(
                (0..<count).map { Job(dispatchDouble, args: $0, extra: "job \($0)") },
                remote: remote,
                chunkSize: chunk
            ) { result in
                seen[result.index, default: 0] += 1
                if let host = result.host { hosts.insert(host.name) }
                return true
            }
            report("count", results.count)
            report("ordered", inOrderAndDoubled(results, count: count))
            report("extrasKept", results.allSatisfy { ($0.job.extra as? String) == "job \($0.index)" })
            report("collectorSawEachOnce", seen.count == count && seen.values.allSatisfy { $0 == 1 })
            report("placement", placement(results))
            report("tasks", Set(results.compactMap(\.task)).count)
            report("freeAtEnd", vm.freeSlots())
        }
    },

    // PyOPUS 04-dyndispatch: an endless generator, stopped by the collector at a result of 150.
    "dispatch-stop": { vm, _ in
        try waitFor {
            var collected = 0
            let results = try await vm.dispatch((0...).lazy.map { Job(dispatchDouble, args: $0) }) { result in
                collected += 1
                return (result.value ?? 0) < 150
            }
            report("count", results.count)
            report("ordered", inOrderAndDoubled(results, count: results.count))
            report("reached", results.contains { $0.value == 150 })
            report("collectorSawReturned", collected == results.count)
            report("freeAtEnd", vm.freeSlots())
        }
    },

    // Failing jobs: named failed results by default; with failFast, the first failure is thrown.
    "dispatch-fail": { vm, arguments in
        let remote = (arguments.first ?? "1") == "1"
        try waitFor {
            let results = try await vm.dispatch((0..<20).map { Job(dispatchCheck, args: $0) }, remote: remote)
            report("count", results.count)
            report("failedIndices", results.filter { !$0.succeeded }.map { String($0.index) }.joined(separator: ","))
            report("successesCorrect", results.filter(\.succeeded).allSatisfy { $0.value == 2 * $0.index })
            if let error = results[3].error {
                report("errorJob", error.job)
                report("errorCode", error.code)
                report("errorType", error.typeName)
                report("errorMessage", error.message)
            }
            do {
                var seen = 0
                _ = try await vm.dispatch((0..<40).map { Job(dispatchCheck, args: $0) }, remote: remote, failFast: true)
                { _ in
                    seen += 1
                    return true
                }
                report("failFast", "no error")
            } catch let error as JobError {
                report("failFast", error.job)
            }
            let unknown = try await vm.dispatch(
                [Job(dispatchUnregistered, args: 1), Job(dispatchDouble, args: 2)],
                remote: remote
            )
            report("unknownCode", unknown[0].error?.code.rawValue ?? "none")
            report("unknownMessage", unknown[0].error?.message ?? "none")
            report("afterUnknown", unknown[1].value ?? -1)
            do {
                report("single", try await vm.dispatchSingle(Job(dispatchDouble, args: 21), remote: remote))
                _ = try await vm.dispatchSingle(Job(dispatchCheck, args: 8), remote: remote)
            } catch let error as JobError {
                report("singleError", error.job)
            }
            report("freeAtEnd", vm.freeSlots())
        }
    },

    // The same jobs, unchunked, chunked and in this process: the same results.
    "dispatch-chunk": { vm, arguments in
        let count = Int(arguments.first ?? "500") ?? 500
        try waitFor {
            let jobs = (0..<count).map { Job(dispatchCheck, args: $0) }
            func summary(_ results: [JobResult<Int>]) -> [String] {
                results.map { "\($0.index):\($0.value.map(String.init) ?? $0.error!.message)" }
            }
            let plain = try await vm.dispatch(jobs)
            let chunked = try await vm.dispatch(jobs, chunkSize: 7)
            let local = try await vm.dispatch(jobs, remote: false)
            report("count", plain.count)
            report("chunkedEqual", summary(plain) == summary(chunked))
            report("localEqual", summary(plain) == summary(local))
            report("chunkedTasks", Set(chunked.compactMap(\.task)).count)
            report("plainPlacement", placement(plain))
            report("localPlacement", placement(local))
        }
    },

    // Jobs from AsyncSequences: one that produces slowly, and one fed by the collector (jobs decided from
    // earlier results), which must not deadlock.
    "dispatch-async-sequence": { vm, _ in
        try waitFor {
            let slow = AsyncStream<Job<Int>> { continuation in
                Task {
                    for value in 0..<30 {
                        try? await Task.sleep(nanoseconds: 10_000_000)
                        continuation.yield(Job(dispatchDouble, args: value))
                    }
                    continuation.finish()
                }
            }
            let slowResults = try await vm.dispatch(slow)
            report("slowOrdered", inOrderAndDoubled(slowResults, count: 30))

            let (fed, feed) = AsyncStream<Job<Int>>.makeStream()
            feed.yield(Job(dispatchDouble, args: 0))
            var produced = 1
            let fedResults = try await vm.dispatch(fed) { _ in
                // Each result decides the next job, until 20 have been produced.
                if produced < 20 {
                    feed.yield(Job(dispatchDouble, args: produced))
                    produced += 1
                } else {
                    feed.finish()
                }
                return true
            }
            report("fedOrdered", inOrderAndDoubled(fedResults, count: 20))
        }
    },

    // COUNT CHUNK (a number or auto): thousands of tiny jobs finish, in order, without a hang.
    "dispatch-many": { vm, arguments in
        let count = Int(arguments.first ?? "5000") ?? 5000
        let chunk = chunkSize(arguments.dropFirst().first ?? "1")
        try waitFor {
            let start = Date()
            let results = try await vm.dispatch((0..<count).map { Job(dispatchDouble, args: $0) }, chunkSize: chunk)
            report("ordered", inOrderAndDoubled(results, count: count))
            report("tasks", Set(results.compactMap(\.task)).count)
            report("seconds", String(format: "%.2f", Date().timeIntervalSince(start)))
            report("freeAtEnd", vm.freeSlots())
        }
    },

    // PyOPUS 05-asyncloop on a Farm: spawn while slots are free, join one at a time, stop at 150.
    "dispatch-asyncloop": { vm, _ in
        try waitFor {
            let farm = try Farm<Int>(vm)
            var results: [Int: Int] = [:]
            var next = 0
            var stop = false
            var maxRunning = 0
            while !(stop && farm.outstanding == 0) {
                while !stop && (farm.outstanding == 0 || farm.hasFreeSlot) {
                    try await farm.spawn(Job(dispatchSlow, args: [next, 2]))
                    next += 1
                    maxRunning = max(maxRunning, farm.running)
                }
                guard let result = try await farm.join() else { break }
                results[result.index] = try result.get()
                if results[result.index]! >= 150 { stop = true }
            }
            await farm.close()
            report("spawned", next)
            report("joinedAll", results.count == next)
            report("correct", results.allSatisfy { $0.value == 2 * $0.key })
            report("reached", results.values.contains(150))
            report("maxRunning", maxRunning)
            report("slots", farm.slots)
            report("freeAtEnd", vm.freeSlots())
        }
    },

    // In this process, jobs of an async function run concurrently.
    "dispatch-local-async": { vm, _ in
        try waitFor {
            let start = Date()
            let results = try await vm.dispatch(
                (0..<8).map { Job(dispatchAsyncDouble, args: [$0, 200]) },
                remote: false
            )
            let seconds = Date().timeIntervalSince(start)
            report("ordered", inOrderAndDoubled(results, count: 8))
            report("placement", placement(results))
            // One at a time would take 1.6 s; at least two at once takes at most 0.8 s plus overhead.
            report("concurrent", seconds < 1.3)
            report("remoteAsync", try await vm.dispatchSingle(Job(dispatchAsyncDouble, args: [21, 10])))
        }
    },

    // COUNT: jobs per second for trivial jobs, raw spawnFunction farming against dispatch (figures only;
    // build vm-scenarios in release and run it under mpirun to measure).
    "dispatch-bench": { vm, arguments in
        let count = Int(arguments.first ?? "10000") ?? 10000
        @Sendable func rate(_ seconds: Double) -> String {
            String(format: "%.0f jobs/s (%.2f s)", Double(count) / seconds, seconds)
        }
        let start = Date()
        var next = 0
        var done = 0
        while done < count {
            while next < count, let _ = try vm.spawnFunction(dispatchDouble, args: next, count: 1).first { next += 1 }
            guard let (_, message) = try vm.receiveMessage(timeout: 30) else { throw DispatchFailure(value: done) }
            if case .taskResult(let result) = message, result.success { done += 1 }
        }
        while vm.freeSlots() < vm.slots() - 1, try vm.receiveMessage(timeout: 5) != nil {}
        report("raw", rate(Date().timeIntervalSince(start)))
        for chunk in [1, 10, 100] {
            try waitFor {
                let jobs = (0..<count).map { Job(dispatchDouble, args: $0) }
                let start = Date()
                let results = try await vm.dispatch(jobs, chunkSize: .fixed(chunk))
                precondition(inOrderAndDoubled(results, count: count))
                report("chunk\(chunk)", rate(Date().timeIntervalSince(start)))
            }
        }
    },

    // User messages that arrive during a dispatch stay queued for receiveMessage, in order.
    "dispatch-messages": { vm, _ in
        try waitFor {
            let results = try await vm.dispatch((0..<5).map { Job(dispatchNotify, args: $0) })
            report("results", results.compactMap(\.value).map(String.init).joined(separator: ","))
        }
        var notes: [String] = []
        while let (_, message) = try vm.receiveMessage(timeout: 1), case .user(let user) = message {
            notes.append(try user.decode(as: String.self))
        }
        report("notes", notes.sorted().joined(separator: ","))
    },
]
