// A sweep that resumes: every finished job is kept in an experiment's journal, so a run killed partway
// and started again with the same id runs only the jobs that had not finished.
//
//   scripts/run-demo.sh 10-experiment 3 --root /tmp/sweeps --id first --jobs 40 --job-seconds 0.1
//
// prints `done job K` as each job finishes, then `ran R, reused U` and `csv: PATH`. The experiment
// folder is ROOT/ID/ (journal, experiment.log, manifest.json); the CSV, one `index,value` row per job in
// job order, is ROOT/ID.csv. Kill the run (Ctrl-C, or kill -9 of mpirun's process group) and start it
// again with the same arguments: the jobs done before are reused, the CSV comes out the same.

import Foundation
import ParallelVM

/// One job's input.
struct Point: Codable, Sendable {
    var index: Int
    var seconds: Double
}

/// Runs on a worker: sleeps, then returns a value that depends only on the index.
let evaluate = RemoteFunction("evaluate") { (point: Point, _: TaskContext) -> Int in
    Thread.sleep(forTimeInterval: point.seconds)
    return point.index * point.index + 1
}

/// The options, parsed by hand: `--root DIR --id NAME [--jobs N] [--job-seconds S]`.
struct Options {
    var root = ""
    var id = ""
    var jobs = 40
    var jobSeconds = 0.1

    static let usage = "usage: demo-10-experiment --root DIR --id NAME [--jobs N] [--job-seconds S]"

    init(_ arguments: [String]) throws {
        var rest = arguments[...]
        func value(for option: String) throws -> String {
            guard let value = rest.popFirst() else { throw OptionError("\(option) needs a value") }
            return value
        }
        while let option = rest.popFirst() {
            switch option {
            case "--root": root = try value(for: option)
            case "--id": id = try value(for: option)
            case "--jobs":
                let text = try value(for: option)
                guard let number = Int(text), number >= 0 else {
                    throw OptionError("--jobs must be 0 or more, not \(text)")
                }
                jobs = number
            case "--job-seconds":
                let text = try value(for: option)
                guard let number = Double(text), number >= 0 else {
                    throw OptionError("--job-seconds must be 0 or more, not \(text)")
                }
                jobSeconds = number
            default: throw OptionError("unknown option \(option)")
            }
        }
        if root.isEmpty { throw OptionError("--root is missing") }
        if id.isEmpty { throw OptionError("--id is missing") }
    }
}

struct OptionError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

// Every rank parses the options, so a mistake ends all of them the same way.
let options: Options
do {
    options = try Options(Array(CommandLine.arguments.dropFirst()))
} catch {
    FileHandle.standardError.write(Data("demo-10-experiment: \(error)\n\(Options.usage)\n".utf8))
    exit(2)
}

// Workers stay inside this line and serve jobs until the spawner finalizes.
let vm = try VM(functions: [evaluate])

let experiment = try Experiment(name: options.id, in: options.root)
let jobs = (0..<options.jobs).map { Job(evaluate, args: Point(index: $0, seconds: options.jobSeconds)) }
let results: [JobResult<Int>]
do {
    results = try await vm.dispatch(jobs, experiment: experiment) { result in
        if !result.reused {
            print("done job \(result.index)")
            fflush(nil)  // every output stream: the line is out before the next job finishes
        }
        return true
    }
} catch {
    // E.g. the experiment is open in another run (its lock names that run).
    FileHandle.standardError.write(Data("demo-10-experiment: \(error)\n".utf8))
    try vm.finalize()
    exit(1)
}

var csv = "index,value\n"
for result in results {
    csv += "\(result.index),\(result.value.map(String.init) ?? "failed: \(result.error!.message)")\n"
}
let csvPath = URL(fileURLWithPath: options.root).appendingPathComponent("\(options.id).csv").path
try csv.write(toFile: csvPath, atomically: true, encoding: .utf8)

let summary = experiment.lastRun!
print("ran \(summary.ran), reused \(summary.reused)")
print("csv: \(csvPath)")
try vm.finalize()
