import Foundation
import Glibc
import ParallelVM

// A VM that runs as one process (no mpirun): jobs in local slots, each a task process of the program.

/// Where and when a job ran.
struct LocalRun: Codable, Sendable {
    var pid: Int32
    var parentPID: Int32
    /// The working folder, canonical.
    var folder: String
    /// Every entry below it when the job started.
    var entries: [String]
    var started: Double
    var ended: Double
}

/// ARGS [MODE, SECONDS]: lists its working folder, sleeps SECONDS and says where and when it ran. MODE
/// `write` also leaves a file in the folder (for a later job to find if the folder were reused), `trap`
/// force-unwraps nil instead.
let localRun = RemoteFunction("local.run") { (arguments: [String], _: TaskContext) -> LocalRun in
    let started = Date().timeIntervalSince1970
    if arguments[0] == "trap" { _ = opaqueNil! }
    let manager = FileManager.default
    let folder = URL(fileURLWithPath: manager.currentDirectoryPath).resolvingSymlinksInPath().path
    let entries = try manager.subpathsOfDirectory(atPath: ".").sorted()
    if arguments[0] == "write" { _ = manager.createFile(atPath: "written-by-job", contents: Data("x".utf8)) }
    usleep(UInt32((Double(arguments[1]) ?? 0) * 1e6))
    return LocalRun(
        pid: getpid(),
        parentPID: getppid(),
        folder: folder,
        entries: entries,
        started: started,
        ended: Date().timeIntervalSince1970
    )
}

let localFunctions: [any RemoteFunctionConvertible] = [localRun]

/// Whether two of `runs` overlapped in time.
func overlapping(_ runs: [LocalRun]) -> Bool {
    for (index, run) in runs.enumerated() {
        for other in runs[(index + 1)...] where run.started < other.ended && other.started < run.ended { return true }
    }
    return false
}

let localScenarios: [String: Scenario] = [
    // SOURCE JOBS SECONDS: a dispatch with SOURCE's contents mirrored into each job's task folder.
    "local-dispatch": { vm, arguments in
        let manager = FileManager.default
        let launch = manager.currentDirectoryPath
        let before = try manager.contentsOfDirectory(atPath: launch).sorted()
        let mirrored = try VM(mirrorMap: [arguments[0] + "/*": "."])
        let count = Int(arguments[1]) ?? 6
        let results = try waitForValue {
            try await mirrored.dispatch((0..<count).map { _ in Job(localRun, args: ["write", arguments[2]]) })
        }
        let runs = try results.map { try $0.get() }
        report("spawnerPID", getpid())
        report("slots", vm.slots())
        report("distributed", vm.isDistributed)
        report("pids", Set(runs.map(\.pid)).sorted().map(String.init).joined(separator: ","))
        report("parents", Set(runs.map(\.parentPID)).sorted().map(String.init).joined(separator: ","))
        report("folders", runs.map(\.folder).joined(separator: ","))
        report("entries", runs.map { $0.entries.joined(separator: ";") }.joined(separator: "|"))
        report("tasks", results.map { $0.task.map { "\($0)" } ?? "none" }.joined(separator: ","))
        report("hosts", Set(results.map { $0.host?.name ?? "none" }).sorted().joined(separator: ","))
        report("concurrent", overlapping(runs))
        report("launchFolder", launch)
        let after = try manager.contentsOfDirectory(atPath: launch).sorted()
        report("launchUnchanged", manager.currentDirectoryPath == launch && after == before)
        report("freeAtEnd", vm.freeSlots())
    },

    // A job that traps fails alone; the others' results come back and the slots serve again.
    "local-crash": { vm, _ in
        let modes = ["run", "trap", "run", "run"]
        let results = try waitForValue { try await vm.dispatch(modes.map { Job(localRun, args: [$0, "0.2"]) }) }
        report("codes", results.map { $0.error.map { "\($0.code)" } ?? "ok" }.joined(separator: ","))
        report("crash", results[1].error.map { "\($0)" } ?? "none")
        report("crashTask", results[1].task.map { "\($0)" } ?? "none")
        report("values", results.compactMap { try? $0.get() }.count)
        let again = try waitForValue { try await vm.dispatch((0..<3).map { _ in Job(localRun, args: ["run", "0"]) }) }
        report("again", again.compactMap { try? $0.get() }.count)
        report("freeAtEnd", vm.freeSlots())
    },
]
