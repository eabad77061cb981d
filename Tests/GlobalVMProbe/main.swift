// A program whose VM is a global initialized on first use (Globals.swift); a task touches it. The test
// (GlobalVMTests) runs it under mpirun and checks the `key=value` lines it prints.

import Foundation
import ParallelVM

func report(_ key: String, _ value: Any) {
    print("\(key)=\(value)")
    fflush(nil)
}

func resultOf(_ task: TaskID) throws -> TaskResult? {
    var result: TaskResult?
    while true {
        guard let (source, message) = try vm.receiveMessage(timeout: 60) else { return result }
        guard source == task else { continue }
        switch message {
        case .taskResult(let value): result = value
        case .taskExit: return result
        default: continue
        }
    }
}

let started = Date()
let touching = try vm.spawnFunction(touchesTheVM, args: 0)
let result = try resultOf(touching[0])
report("seconds", Int(Date().timeIntervalSince(started).rounded()))
if let error = result?.error {
    report("failed", true)
    report("code", (error.underlying as? VMError)?.code == .notSpawner)
    report("message", error.message.replacingOccurrences(of: "\n", with: " "))
} else {
    report("failed", false)
}
// The worker goes on serving: a new task process runs the next task.
do {
    let next = try vm.spawnFunction(double, args: 21, count: 1)
    report("next", try next.first.flatMap { try resultOf($0)?.value(as: Int.self) }.map(String.init) ?? "none")
} catch {
    report("next", "error: \(error)")
}
// A task as busy in the kernel as the spin, for longer than the watch's 3 s, that does not spin on the
// global's lock, runs to its end.
if ProcessInfo.processInfo.environment["PROBE_ISOLATION"] != "inProcess" {
    do {
        let busy = try vm.spawnFunction(busyInTheKernel, args: 6.0, count: 1)
        let megabytes = try busy.first.flatMap { try resultOf($0)?.value(as: Int.self) }
        report("busy", megabytes.map { $0 > 0 ? "finished" : "read nothing" } ?? "no result")
    } catch {
        report("busy", "error: \(error)")
    }
}
try vm.finalize()
