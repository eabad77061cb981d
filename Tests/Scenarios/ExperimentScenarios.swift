import Foundation
import Glibc
import ParallelVM

// MARK: - Functions every rank registers for the experiment scenarios

/// One sweep point: its index, how long it sleeps, and an offset that changes its arguments.
struct SweepPoint: Codable, Sendable {
    var index: Int
    var milliseconds: Int
    var offset: Int
}

struct SweepFailure: Error, CustomStringConvertible {
    let index: Int
    var description: String { "point \(index) fails on purpose" }
}

/// Sleeps, then returns `index * index + 1 + offset`; throws for the index in `SWEEP_FAIL_INDEX`.
let experimentSquare = RemoteFunction("experiment.square") { (point: SweepPoint, _: TaskContext) -> Int in
    usleep(UInt32(point.milliseconds * 1000))
    if ProcessInfo.processInfo.environment["SWEEP_FAIL_INDEX"] == String(point.index) {
        throw SweepFailure(index: point.index)
    }
    return point.index * point.index + 1 + point.offset
}

let experimentFunctions: [any RemoteFunctionConvertible] = [experimentSquare]

// MARK: - Scenarios

let experimentScenarios: [String: Scenario] = [
    // ROOT ID JOBS MILLISECONDS [CHANGED_FROM]: a sweep with the experiment ROOT/ID; jobs from index
    // CHANGED_FROM on get offset 1 (other arguments). Prints `done=K` as job K finishes in this run,
    // then ran/reused/failed, whether the reused ones were flagged, and writes ROOT/ID.csv in job order.
    // An error opening the experiment is reported as `error=CODE` and `message=...`. SWEEP_RERUN_FAILED=0
    // passes `rerunFailed: false`; failed jobs are reported as `failure=INDEX CODE TYPE: MESSAGE`.
    // SWEEP_FORM=fed dispatches the jobs from an AsyncSequence that the collector feeds.
    "experiment-sweep": { vm, arguments in
        guard arguments.count >= 4, let jobs = Int(arguments[2]), let milliseconds = Int(arguments[3]) else {
            throw ScenarioArgumentError(description: "experiment-sweep needs ROOT ID JOBS MILLISECONDS [CHANGED_FROM]")
        }
        let root = arguments[0]
        let id = arguments[1]
        let changedFrom = arguments.count > 4 ? Int(arguments[4]) ?? jobs : jobs
        try waitFor {
            let experiment = try Experiment(name: id, in: root)
            let sweep = (0..<jobs).map {
                Job(
                    experimentSquare,
                    args: SweepPoint(index: $0, milliseconds: milliseconds, offset: $0 >= changedFrom ? 1 : 0)
                )
            }
            var reusedSeen = 0
            let results: [JobResult<Int>]
            do {
                let rerunFailed = ProcessInfo.processInfo.environment["SWEEP_RERUN_FAILED"] != "0"
                if ProcessInfo.processInfo.environment["SWEEP_FORM"] == "fed" {
                    // An AsyncSequence fed by the collector: three jobs to start, then one more per result
                    // (reused ones included), as in demo 08.
                    let (feed, continuation) = AsyncStream.makeStream(of: Job<Int>.self)
                    var fed = 0
                    while fed < min(3, sweep.count) {
                        continuation.yield(sweep[fed])
                        fed += 1
                    }
                    if fed == sweep.count { continuation.finish() }
                    results = try await vm.dispatch(feed, experiment: experiment, rerunFailed: rerunFailed) { result in
                        if result.reused { reusedSeen += 1 } else { report("done", result.index) }
                        if fed < sweep.count {
                            continuation.yield(sweep[fed])
                            fed += 1
                            if fed == sweep.count { continuation.finish() }
                        }
                        return true
                    }
                } else {
                    results = try await vm.dispatch(sweep, experiment: experiment, rerunFailed: rerunFailed) { result in
                        if result.reused { reusedSeen += 1 } else { report("done", result.index) }
                        return true
                    }
                }
            } catch let error as ExperimentError {
                report("error", error.code.rawValue)
                report("message", error.description)
                return
            }
            let summary = experiment.lastRun
            report("ran", summary?.ran ?? -1)
            report("reused", summary?.reused ?? -1)
            report("failed", summary?.failed ?? -1)
            report("reusedFlagged", results.filter(\.reused).count)
            report("reusedSeen", reusedSeen)
            report("ordered", results.map(\.index) == Array(0..<jobs))
            for case let error? in results.map(\.error) {
                report("failure", "\(error.index) \(error.code.rawValue) \(error.typeName): \(error.message)")
            }
            var csv = "index,value\n"
            for result in results { csv += "\(result.index),\(result.value.map(String.init) ?? "failed")\n" }
            let path = URL(fileURLWithPath: root).appendingPathComponent("\(id).csv").path
            try csv.write(toFile: path, atomically: true, encoding: .utf8)
            report("csv", path)
        }
    },
    // ROOT: the same 24 jobs dispatched to the end (experiment `full`), and stopped by the collector at
    // the first result, given as an array (`array`: its jobs are read again for the keys of those that
    // did not run) and as a lazy collection (`lazy`: its jobs are kept). Prints each experiment's
    // manifest `NAME.jobs=` and `NAME.inputs=`, and `NAME.journaled=` the records in its journal.
    "experiment-stop-inputs": { vm, arguments in
        guard let root = arguments.first else {
            throw ScenarioArgumentError(description: "experiment-stop-inputs needs ROOT")
        }
        try waitFor {
            let sweep = (0..<24).map { Job(experimentSquare, args: SweepPoint(index: $0, milliseconds: 20, offset: 0)) }
            let full = try Experiment(name: "full", in: root)
            _ = try await vm.dispatch(sweep, experiment: full)
            let array = try Experiment(name: "array", in: root)
            _ = try await vm.dispatch(sweep, chunkSize: .fixed(3), experiment: array) { _ in false }
            let lazy = try Experiment(name: "lazy", in: root)
            _ = try await vm.dispatch(sweep.lazy.map { $0 }, chunkSize: .fixed(3), experiment: lazy) { _ in false }
            for experiment in [full, array, lazy] {
                let data = try Data(contentsOf: URL(fileURLWithPath: experiment.manifestPath))
                let manifest = try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
                report("\(experiment.name).jobs", manifest["jobs"].map { "\($0)" } ?? "none")
                report("\(experiment.name).inputs", manifest["inputs"].map { "\($0)" } ?? "none")
                report("\(experiment.name).journaled", try experiment.readJournal().records.count)
            }
        }
    },
]

struct ScenarioArgumentError: Error, CustomStringConvertible {
    let description: String
}
