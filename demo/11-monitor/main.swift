// Runs a slow dispatch with the web monitor on: open the address it prints to watch the hosts, slots and
// tasks live, and kill a running task from the task list (discoro's port-8181 monitor).
//
//   swift build -c release --product demo-11-monitor
//   scripts/mpirun.sh -n 3 .build/release/demo-11-monitor --port 8181 --jobs 60 --job-seconds 0.2
//
// Options: --host ADDRESS (default 127.0.0.1; any other address needs --token), --port P (0 picks a free
// one), --token SECRET, --jobs N, --job-seconds S, --print-every K (the collector prints every K-th result;
// 0 never), --linger S (keep the monitor up S seconds after the dispatch). The progress line shows on the
// terminal mpirun was started from; PARALLELVM_PROGRESS=1 forces it, =0 hides it.

import Foundation
import ParallelVM
import ParallelVMMonitor

/// One job: sleep a while, then return the square of the index.
struct Work: Codable, Sendable, CustomStringConvertible {
    var index: Int
    var seconds: Double
    var description: String { "job \(index), \(seconds) s" }
}

let work = RemoteFunction("monitor-demo.work") { (job: Work, _: TaskContext) -> Int in
    Thread.sleep(forTimeInterval: job.seconds)
    return job.index * job.index
}

// Every rank runs this line; workers stay inside it and serve jobs until the spawner finalizes.
let vm = try VM(functions: [work])

struct Options {
    var host = "127.0.0.1"
    var port = 8181
    var token: String?
    var jobs = 60
    var jobSeconds = 0.2
    var printEvery = 10
    var linger = 0.0
}

func parseOptions(_ arguments: [String]) -> Options {
    func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("demo-11-monitor: \(message)\n".utf8))
        exit(2)
    }
    var options = Options()
    var rest = arguments[...]
    while let name = rest.popFirst() {
        guard let value = rest.popFirst() else { fail("\(name) needs a value") }
        func number<T: LosslessStringConvertible & Comparable>(_: T.Type, atLeast low: T) -> T {
            guard let parsed = T(value), parsed >= low else {
                fail("\(name) must be a number of at least \(low), not '\(value)'")
            }
            return parsed
        }
        switch name {
        case "--host": options.host = value
        case "--port": options.port = number(Int.self, atLeast: 0)
        case "--token": options.token = value
        case "--jobs": options.jobs = number(Int.self, atLeast: 1)
        case "--job-seconds": options.jobSeconds = number(Double.self, atLeast: 0)
        case "--print-every": options.printEvery = number(Int.self, atLeast: 0)
        case "--linger": options.linger = number(Double.self, atLeast: 0)
        default:
            fail("unknown option '\(name)'; options: --host --port --token --jobs --job-seconds --print-every --linger")
        }
    }
    return options
}

let options = parseOptions(Array(CommandLine.arguments.dropFirst()))
let monitor: VMMonitor
do {
    monitor = try VMMonitor(vm, host: options.host, port: options.port, token: options.token)
    print("Monitor: \(try await monitor.url())")
} catch {
    FileHandle.standardError.write(Data("demo-11-monitor: \(error)\n".utf8))
    try vm.finalize()
    exit(1)
}
print("Hosts: \(vm.hosts().map(\.name).joined(separator: ", ")), \(vm.slots() - 1) worker slot(s)")
fflush(nil)

let jobs = (0..<options.jobs).map { Job(work, args: Work(index: $0, seconds: options.jobSeconds)) }
var finished = 0
let results = try await vm.dispatch(jobs, progress: true) { result in
    finished += 1
    if options.printEvery > 0, finished % options.printEvery == 0 {
        print(
            "job \(result.index) \(result.value.map { "gave \($0)" } ?? "failed") on \(result.host?.name ?? "this process")"
        )
    }
    return true
}
let failed = results.filter { $0.error != nil }
print("Done: \(results.count - failed.count) succeeded, \(failed.count) failed")
fflush(nil)
if options.linger > 0 { try await Task.sleep(for: .seconds(options.linger)) }
await monitor.stop()
try vm.finalize()
