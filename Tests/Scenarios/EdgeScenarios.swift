import Foundation
import ParallelVM

/// Inside a task: what a NaN timeout and a message to a task that does not exist yet give.
let edgeProbe = RemoteFunction("edge.probe") { (peerSlot: Int, task: TaskContext) -> [String] in
    var seen: [String] = []
    do {
        _ = try task.receiveMessage(timeout: .nan)
        seen.append("nan: no error")
    } catch {
        seen.append("nan: \(error)")
    }
    do {
        try task.sendMessage(to: TaskID(slot: peerSlot, number: task.taskID.number + 1000), 1)
        seen.append("future: no error")
    } catch {
        seen.append("future: \(error)")
    }
    do {
        try task.sendMessage(to: TaskID(slot: -1, number: 1), 1)
        seen.append("negative: no error")
    } catch {
        seen.append("negative: \(error)")
    }
    return seen
}

let edgeFunctions: [any RemoteFunctionConvertible] = [edgeProbe]

let edgeScenarios: [String: Scenario] = [
    // API edges give clear errors instead of blocking, spawning nothing silently or misnaming the fault.
    "api-edges": { vm, _ in
        func attempt(_ key: String, _ body: () throws -> Void) {
            do {
                try body()
                report(key, "no error")
            } catch {
                report(key, describe(error))
            }
        }
        attempt("nanTimeout") { _ = try vm.receiveMessage(timeout: .nan) }
        attempt("nanClear") { _ = try vm.clearLocalStorage(timeout: .nan) }
        attempt("emptyTargets") { try vm.spawnFunction(double, args: 1, targets: []) }
        attempt("blankHosts") { try vm.spawnFunction(double, args: 1, targets: ["", " "]) }
        attempt("negativeTask") { try vm.sendMessage(to: TaskID(slot: -1, number: 1), 1) }
        attempt("futureTask") { try vm.sendMessage(to: TaskID(slot: 1, number: 1_000_000), 1) }
        report("parsedNegative", TaskID("-1:1").map(\.description) ?? "nil")
        // Infinity waits for the message instead of returning at once.
        let tasks = try vm.spawnFunction(sleeper, args: 0.2, count: 1)
        var gotResult = false
        while true {
            guard let (_, message) = try vm.receiveMessage(timeout: .infinity) else {
                report("infinityReturnedNil", true)
                break
            }
            if case .taskResult = message { gotResult = true }
            if case .taskExit = message { break }
        }
        report("infinityGotResult", gotResult)
        _ = tasks
        let probes = try vm.spawnFunction(edgeProbe, args: 1, count: 1)
        for (_, message) in try collect(vm, probes) {
            if case .taskResult(let result) = message {
                for line in try result.value(as: [String].self) {
                    let parts = line.split(separator: ":", maxSplits: 1)
                    report("task_" + parts[0], parts[1].trimmingCharacters(in: .whitespaces))
                }
            }
        }
        report("freeAtEnd", vm.freeSlots())
    }
]
