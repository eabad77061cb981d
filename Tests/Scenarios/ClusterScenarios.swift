import Foundation
import Glibc
import ParallelVM

// Scenarios for runs across several hosts (scripts/test-cluster.sh runs them on the simulated cluster).

/// Where a task ran, as the task itself sees it.
struct Whereabouts: Codable, Sendable {
    /// The host the VM says the task runs on.
    var host: String
    /// The host name the task's own system reports.
    var hostname: String
    var pid: Int32
    /// The task's working folder, canonical.
    var cwd: String
    /// The `marker` file in the working folder before this task wrote it, if any.
    var markerBefore: String?
    /// The working folder's entries (top level, sorted), after the task wrote any marker.
    var entries: [String]
}

/// What `whereabouts` does: wait `pause` seconds (so that tasks overlap); with `mark`, write `marker`.
struct Probe: Codable, Sendable {
    var pause: Double
    var mark: Bool
}

/// Reports where it runs; with `mark`, writes `marker` (host, PID, task) into its working folder, first
/// reading what was there.
let whereabouts = RemoteFunction("cluster.whereabouts") { (probe: Probe, task: TaskContext) -> Whereabouts in
    var name = [CChar](repeating: 0, count: 256)
    gethostname(&name, name.count)
    let manager = FileManager.default
    let cwd = URL(fileURLWithPath: manager.currentDirectoryPath).resolvingSymlinksInPath().path
    let before = try? String(contentsOfFile: "marker", encoding: .utf8)
    if probe.mark {
        try "\(task.host.name) \(getpid()) \(task.taskID)".write(toFile: "marker", atomically: true, encoding: .utf8)
    }
    if probe.pause > 0 { Thread.sleep(forTimeInterval: probe.pause) }
    return Whereabouts(
        host: task.host.name,
        hostname: String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self),
        pid: getpid(),
        cwd: cwd,
        markerBefore: before,
        entries: try manager.contentsOfDirectory(atPath: ".").sorted()
    )
}

/// Waits `seconds`, then names the host it ran on.
let hostAfter = RemoteFunction("cluster.hostAfter") { (seconds: Double, task: TaskContext) -> String in
    Thread.sleep(forTimeInterval: seconds)
    return task.host.name
}

let clusterFunctions: [any RemoteFunctionConvertible] = [whereabouts, hostAfter]

/// Runs `whereabouts` on `vm` in the given tasks' slots and returns each task's view, in slot order.
func whereaboutsOf(_ vm: VM, _ tasks: [TaskID]) throws -> [(TaskID, Whereabouts)] {
    var views: [(TaskID, Whereabouts)] = []
    for (source, message) in try collect(vm, tasks, timeout: 60) {
        guard case .taskResult(let result) = message else { continue }
        views.append((source, try result.value(as: Whereabouts.self)))
    }
    return views.sorted { $0.0.slot < $1.0.slot }
}

let clusterScenarios: [String: Scenario] = [
    // A dispatch of JOBS jobs of SECONDS each while the test cuts a host's network: every job must end with
    // its value, the jobs of the lost host's workers run again elsewhere, and finalize does not wait for it.
    // ARGS: JOBS SECONDS
    "cluster-lost-host": { vm, arguments in
        let count = Int(arguments[0])!
        let seconds = Double(arguments[1])!
        report("dispatching", count)
        let started = Date()
        let results = try waitForValue {
            try await vm.dispatch(
                (0..<count).map { _ in Job(hostAfter, args: seconds) },
                collector: { result in
                    report("done", "\(result.index) \(result.value ?? "failed") attempts=\(result.attempts)")
                    return true
                }
            )
        }
        report("dispatchSeconds", Int(Date().timeIntervalSince(started).rounded()))
        report("values", results.filter { $0.value != nil }.count)
        report(
            "failed",
            results.filter { $0.value == nil }.map { "\($0.index):\($0.error.map(String.init(describing:)) ?? "")" }
        )
        report("retried", results.filter { $0.attempts > 1 }.count)
        let lostSlots = vm.formatSpawnerConfig().split(separator: "\n").filter { $0.hasSuffix("lost") }.count
        report("lostSlots", lostSlots)
        let finalizing = Date()
        try vm.finalize()
        report("finalizeSeconds", Int(Date().timeIntervalSince(finalizing).rounded()))
    },

    // Spawns on each host in turn with `targets:` filling its free slots; every task must run there.
    "cluster-targets": { vm, _ in
        var wrong = 0
        var tasksPerHost: [String] = []
        for host in vm.hosts() {
            let tasks = try vm.spawnFunction(whereabouts, args: Probe(pause: 0.2, mark: false), targets: [host])
            let views = try whereaboutsOf(vm, tasks)
            for (task, view) in views {
                report("task", "\(task) target=\(host.name) host=\(view.host) hostname=\(view.hostname)")
                if view.host != host.name || view.hostname != host.name || vm.hostID(task) != host { wrong += 1 }
            }
            tasksPerHost.append("\(host.name):\(views.count)")
        }
        report("hosts", vm.hosts().map(\.name).joined(separator: ","))
        report("tasksPerHost", tasksPerHost.joined(separator: ","))
        report("wrongHost", wrong)
    },

    // Persistent storage on every worker, twice: the second task in each slot must find its own folder and
    // its own marker, never another worker's, even where worker PIDs repeat across hosts.
    // ARGS: FOLDER to mirror (inside PARALLEL_MIRRORED_STORAGE).
    "cluster-persistent": { _, arguments in
        let persistent = try VM(mirrorMap: [arguments[0] + "/*": "."], persistentStorage: true)
        let first = try whereaboutsOf(
            persistent,
            try persistent.spawnFunction(whereabouts, args: Probe(pause: 0.2, mark: true))
        )
        let second = try whereaboutsOf(
            persistent,
            try persistent.spawnFunction(whereabouts, args: Probe(pause: 0.2, mark: true))
        )
        var pidsByValue: [Int32: Set<String>] = [:]
        for (_, view) in first { pidsByValue[view.pid, default: []].insert(view.host) }
        let repeated = pidsByValue.filter { $0.value.count > 1 }.keys.sorted()
        let firstBySlot = Dictionary(uniqueKeysWithValues: first.map { ($0.0.slot, $0.1) })
        var reused = 0
        var ownMarker = 0
        for (task, view) in second {
            guard let earlier = firstBySlot[task.slot] else { continue }
            if earlier.cwd == view.cwd { reused += 1 }
            if view.markerBefore?.hasPrefix("\(earlier.host) \(earlier.pid) ") == true
                && earlier.host == view.host && earlier.pid == view.pid
            {
                ownMarker += 1
            }
            report("folder", "\(task) \(view.host) pid \(view.pid) \(view.cwd)")
        }
        report("workers", first.count)
        report("firstHadMarker", first.filter { $0.1.markerBefore != nil }.count)
        report("distinctFolders", Set(first.map(\.1.cwd)).count)
        report("folderReused", reused)
        report("ownMarker", ownMarker)
        report("pidsOnSeveralHosts", repeated.map(String.init).joined(separator: ","))
        report("hosts", Set(first.map(\.1.host)).sorted().joined(separator: ","))
    },

    // Tasks on every worker at once, with local storage in a folder every host shares: each task's folder
    // must be its own (distinct paths, only the mirrored files and its own marker), and gone afterwards.
    // ARGS: FOLDER to mirror; the shared local storage as the spawner sees it (PARALLEL_LOCAL_STORAGE).
    "cluster-shared-local": { _, arguments in
        let mirrored = try VM(mirrorMap: [arguments[0] + "/*": "."])
        let expected = (try FileManager.default.contentsOfDirectory(atPath: arguments[0]) + ["marker"]).sorted()
        let views = try whereaboutsOf(
            mirrored,
            try mirrored.spawnFunction(whereabouts, args: Probe(pause: 1.0, mark: true))
        )
        let relative = views.map { URL(fileURLWithPath: $0.1.cwd).lastPathComponent }
        report("tasks", views.count)
        report("hosts", Set(views.map(\.1.host)).sorted().joined(separator: ","))
        report("distinctFolders", Set(relative).count)
        for (view, name) in zip(views, relative) { report("folder", "\(view.0) \(view.1.host) \(name)") }
        report("foldersNamedByHost", zip(views, relative).filter { $0.1.contains("@\($0.0.1.host)-") }.count)
        report("foreignEntries", views.filter { $0.1.entries != expected || $0.1.markerBefore != nil }.count)
        let root = URL(fileURLWithPath: arguments[1]).appendingPathComponent("parallelvm-\(NSUserName())").path
        let left = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        report("leftAfterTasks", left.sorted().joined(separator: ","))
    },
    // arguments: a folder only the spawner's host has, in PARALLEL_UNSHARED_STORAGE. Every worker runs two
    // rounds of tasks in folders made from it; the contents cross the network once per host.
    "cluster-unshared": { _, arguments in
        let source = arguments[0]
        let mirrored = try VM(mirrorMap: [source: "."])
        let counter = MirrorSentCounter(mirrored)
        let first = try whereaboutsOf(
            mirrored,
            try mirrored.spawnFunction(whereabouts, args: Probe(pause: 0.3, mark: false))
        )
        report("round1Tasks", first.count)
        let hosts = first.map(\.1.host)
        let second = try inspect(mirrored)
        report("round2Tasks", second.count)
        let seen = Set(second.map { $0.1.entries.joined(separator: ",") })
        let counted = counter.read()
        report("hosts", Set(hosts).sorted().joined(separator: ","))
        report("entries", seen.sorted().joined(separator: " | "))
        report("mirrorSentEvents", counted.events)
        report("contentsSent", counted.files)
        report("treeFiles", counted.treeFiles)
    },
]
