import Foundation
import Glibc
import ParallelVM

// MARK: - Functions every rank registers

/// What a task sees of its working folder.
struct StorageView: Codable, Sendable {
    /// The working folder, canonical.
    var cwd: String
    /// Every entry below it: "d:path", "f:path" or "l:path->target" (symlinks are not followed).
    var entries: [String]
    /// The content of `which-mount` when mirrored: which copy of the "shared" storage it came from.
    var whichMount: String?
    /// Whether `sentinel` existed before this task ran.
    var sentinelBefore: Bool
    /// Whether the working folder lies inside this rank's PARALLEL_LOCAL_STORAGE.
    var insideLocalStorage: Bool
    var workerPID: Int32
}

let inspectStorage = RemoteFunction("inspect-storage") { (writeSentinel: Bool, _: TaskContext) -> StorageView in
    let manager = FileManager.default
    let cwd = URL(fileURLWithPath: manager.currentDirectoryPath).resolvingSymlinksInPath().path
    var entries: [String] = []
    for path in (try manager.subpathsOfDirectory(atPath: ".")).sorted() {
        let attributes = try manager.attributesOfItem(atPath: path)
        switch attributes[.type] as? FileAttributeType {
        case .typeSymbolicLink?: entries.append("l:\(path)->\(try manager.destinationOfSymbolicLink(atPath: path))")
        case .typeDirectory?: entries.append("d:\(path)")
        default: entries.append("f:\(path)")
        }
    }
    let sentinelBefore = manager.fileExists(atPath: "sentinel")
    if writeSentinel { _ = manager.createFile(atPath: "sentinel", contents: Data("x".utf8)) }
    let whichMount =
        (try? String(contentsOfFile: "data/which-mount", encoding: .utf8))
        ?? (try? String(contentsOfFile: "which-mount", encoding: .utf8))
    let root = ProcessInfo.processInfo.environment["PARALLEL_LOCAL_STORAGE"].map {
        URL(fileURLWithPath: $0).resolvingSymlinksInPath().path
    }
    return StorageView(
        cwd: cwd,
        entries: entries,
        whichMount: whichMount?.trimmingCharacters(in: .whitespacesAndNewlines),
        sentinelBefore: sentinelBefore,
        insideLocalStorage: root.map { cwd.hasPrefix($0 + "/") } ?? false,
        workerPID: getpid()
    )
}

let storageFunctions: [any RemoteFunctionConvertible] = [inspectStorage]

/// Runs `inspect-storage` in `count` tasks of `vm` and returns the views, failing on any failed task.
func inspect(_ vm: VM, writeSentinel: Bool = false, count: Int? = nil) throws -> [(TaskID, StorageView)] {
    let tasks = try vm.spawnFunction(inspectStorage, args: writeSentinel, count: count)
    var views: [(TaskID, StorageView)] = []
    for (source, message) in try collect(vm, tasks) {
        if case .taskResult(let result) = message {
            views.append((source, try result.value(as: StorageView.self)))
        }
    }
    return views.sorted { $0.0.slot < $1.0.slot }
}

/// The first failed result of `inspect-storage` in one task, as text.
func inspectFailure(_ vm: VM) throws -> String {
    let tasks = try vm.spawnFunction(inspectStorage, args: false, count: 1)
    var text = "no result"
    for (_, message) in try collect(vm, tasks) {
        if case .taskResult(let result) = message {
            text = result.success ? "succeeded" : "\(result.error!.typeName): \(result.error!.message)"
        }
    }
    return text
}

func attemptVM(_ body: () throws -> VM) -> String {
    do {
        let vm = try body()
        return vm.storageWarnings.isEmpty ? "no error" : "warnings: \(vm.storageWarnings.joined(separator: "; "))"
    } catch {
        return describe(error)
    }
}

// MARK: - Scenarios

let storageScenarios: [String: Scenario] = [
    // Mirrors a folder into every worker's local storage; the task runs inside it; it is removed afterwards.
    "storage-mirror": { _, arguments in
        let source = arguments[0]
        let mirrorVM = try VM(mirrorMap: [source: "."])
        let views = try inspect(mirrorVM)
        report("tasks", views.count)
        for (task, view) in views {
            report("mount\(task.slot)", view.whichMount ?? "none")
            report("entries\(task.slot)", view.entries.joined(separator: ","))
            report("inside\(task.slot)", view.insideLocalStorage)
            report("removedAfter\(task.slot)", !FileManager.default.fileExists(atPath: view.cwd))
        }
        // A glob, into a subfolder, with the task starting in that subfolder.
        let globVM = try VM(mirrorMap: [source + "/*.txt": "inputs"], startupDir: "inputs")
        for (task, view) in try inspect(globVM, count: 1) {
            report("globEntries", view.entries.joined(separator: ","))
            report("globStartsIn", view.cwd.hasSuffix("/inputs"))
            report("globInside", view.insideLocalStorage && task.slot > 0)
        }
    },

    // Persistent storage: reused without mirroring again; a folder whose owner record names another run
    // is not reused; a worker does not reuse a folder the first time it serves a VM; clearLocalStorage
    // removes exactly this user's local storage.
    "storage-persistent": { _, arguments in
        let source = arguments[0]
        let outside = arguments[1]
        let manager = FileManager.default
        let vm = try VM(mirrorMap: [source: "."], persistentStorage: true)
        guard let (_, first) = try inspect(vm, writeSentinel: true, count: 1).first else {
            throw Failure(what: "no slot")
        }
        report("firstSentinel", first.sentinelBefore)
        guard let (_, second) = try inspect(vm, count: 1).first else { throw Failure(what: "no slot") }
        report("reused", second.sentinelBefore && second.cwd == first.cwd)
        report("keptAfterExit", manager.fileExists(atPath: first.cwd))

        // Pretend the folder was left by an earlier run whose spawner had the same PID: change the start
        // time in its owner record and leave a marker. The next task must get a fresh copy.
        let userFolder = (first.cwd as NSString).deletingLastPathComponent
        let sidecar = { (folder: String) in
            userFolder + "/." + (folder as NSString).lastPathComponent + ".parallelvm"
        }
        let record = sidecar(first.cwd) + "/owner"
        let text = try String(contentsOfFile: record, encoding: .utf8)
        let stale =
            text.split(separator: "\n").map { $0.hasPrefix("spawnerStartTime=") ? "spawnerStartTime=1" : String($0) }
            .joined(
                separator: "\n"
            ) + "\n"
        try stale.write(toFile: record, atomically: false, encoding: .utf8)
        _ = manager.createFile(atPath: first.cwd + "/stale-marker", contents: nil)
        guard let (_, third) = try inspect(vm, count: 1).first else { throw Failure(what: "no slot") }
        report("staleReused", third.sentinelBefore || third.entries.contains("f:stale-marker"))
        report(
            "staleRemirrored",
            third.entries.contains("f:data/which-mount") || third.entries.contains("f:which-mount")
        )

        // A second VM object: its folder name differs by the VM index. Plant a folder of that name with an
        // owner record that matches this run; the worker has not served that VM yet, so it must not reuse it.
        let other = try VM(mirrorMap: [source: "."], persistentStorage: true)
        let plantedName = first.cwd.replacingOccurrences(of: "-\(vm.vmIndex)@", with: "-\(other.vmIndex)@")
        try manager.createDirectory(atPath: plantedName, withIntermediateDirectories: false)
        try manager.createDirectory(atPath: sidecar(plantedName), withIntermediateDirectories: false)
        try text.replacingOccurrences(of: "vmIndex=\(vm.vmIndex)", with: "vmIndex=\(other.vmIndex)")
            .write(toFile: sidecar(plantedName) + "/owner", atomically: false, encoding: .utf8)
        _ = manager.createFile(atPath: plantedName + "/leftover", contents: nil)
        guard let (_, fourth) = try inspect(other, count: 1).first else { throw Failure(what: "no slot") }
        report("plantedIsTaskFolder", fourth.cwd == plantedName)
        report("firstServeReused", fourth.entries.contains("f:leftover"))

        // clearLocalStorage: a symlink inside the user folder pointing outside must not be followed.
        try manager.createSymbolicLink(atPath: userFolder + "/escape", withDestinationPath: outside)
        let reports = try vm.clearLocalStorage(timeout: 30)
        report("reportHosts", reports.count)
        report("reportFailures", reports.flatMap { $0.failures.keys }.count)
        report("removedTaskFolder", reports.contains { $0.removed.contains(first.cwd) })
        report("taskFolderGone", !manager.fileExists(atPath: first.cwd))
        report("userFolderGone", !manager.fileExists(atPath: userFolder))
        report("outsideSurvives", manager.fileExists(atPath: outside + "/keep-me"))
        // After clearing, the VM still works: the folder is made again.
        guard let (_, fifth) = try inspect(vm, count: 1).first else { throw Failure(what: "no slot") }
        report("afterClear", !fifth.sentinelBefore && fifth.entries.contains("f:data/which-mount"))
    },

    // Bad mirror settings are refused on the spawner, with the path and the reason.
    "storage-errors": { _, arguments in
        let share = arguments[0]
        report("outside", attemptVM { try VM(mirrorMap: ["/definitely/not/shared": "."]) })
        report("absoluteTarget", attemptVM { try VM(mirrorMap: [share + "/data": "/etc"]) })
        report("escapingTarget", attemptVM { try VM(mirrorMap: [share + "/data": "sub/../../x"]) })
        report("noMatch", attemptVM { try VM(mirrorMap: [share + "/data/*.nothing": "."]) })
        report(
            "noMatchWarn",
            attemptVM { try VM(mirrorMap: [share + "/data/*.nothing": "."], missingMirrorSources: .warn) }
        )
        report("fineTarget", attemptVM { try VM(mirrorMap: [share + "/data": "a/../b"]) })
    },

    // Failures on the worker: the task fails with a clear message, nothing is left behind, the worker serves on.
    "storage-worker-errors": { vm, arguments in
        let source = arguments[0]
        report("failure", try inspectFailure(try VM(mirrorMap: [source: "."])))
        report("afterwards", try inspectFailure(vm))
    },
]
