import Foundation
import Glibc
import ParallelVM
import Synchronization

// Mirroring from a folder only the spawner sees (PARALLEL_UNSHARED_STORAGE): the spawner sends the files to
// each host's mirror cache, and task folders are made from it by hard links.

/// What a task sees of a mirrored file: its content and how many names its inode has.
struct LinkView: Codable, Sendable {
    var content: String
    var links: Int
    var cwd: String
}

let linkView = RemoteFunction("unshared.linkView") { (path: String, _: TaskContext) -> LinkView in
    var st = stat()
    guard lstat(path, &st) == 0 else {
        throw Failure(what: "\(path) is missing in \(FileManager.default.currentDirectoryPath)")
    }
    return LinkView(
        content: (try? String(contentsOfFile: path, encoding: .utf8)) ?? "",
        links: Int(st.st_nlink),
        cwd: FileManager.default.currentDirectoryPath
    )
}

let unsharedFunctions: [any RemoteFunctionConvertible] = [linkView]

/// Counts the `mirrorSent` events of the VM from now on: (events, contents sent).
final class MirrorSentCounter: Sendable {
    private final class Counts: Sendable {
        let value = Mutex((events: 0, files: 0, treeFiles: 0))
    }
    private let counts = Counts()
    private let watcher: Task<Void, Never>

    init(_ vm: VM) {
        let events = vm.events
        let counts = self.counts
        watcher = Task {
            for await event in events {
                if case .mirrorSent(_, let files, _, let treeFiles, _) = event.kind {
                    counts.value.withLock {
                        $0.events += 1
                        $0.files += files
                        $0.treeFiles = treeFiles
                    }
                }
            }
        }
    }

    /// The counts once the events so far have arrived.
    func read() -> (events: Int, files: Int, treeFiles: Int) {
        Thread.sleep(forTimeInterval: 0.3)
        return counts.value.withLock { $0 }
    }
}

let unsharedScenarios: [String: Scenario] = [
    // arguments: the source folder (inside PARALLEL_UNSHARED_STORAGE on the spawner only), a scratch folder.
    "storage-unshared": { _, arguments in
        let source = arguments[0]
        let scratch = arguments[1]
        let vm = try VM(mirrorMap: [source: "."])
        let counter = MirrorSentCounter(vm)
        let first = try inspect(vm)
        let second = try inspect(vm)
        let counted = counter.read()
        report("tasks", first.count + second.count)
        report("mirrorSentEvents", counted.events)
        report("contentsSent", counted.files)
        report("treeFiles", counted.treeFiles)
        for (task, view) in first + second {
            report("entries\(task.slot)", view.entries.joined(separator: ","))
            report("mount\(task.slot)", view.whichMount ?? "none")
            report("inside\(task.slot)", view.insideLocalStorage)
            report("removedAfter\(task.slot)", !FileManager.default.fileExists(atPath: view.cwd))
        }
        // Files are hard links to the cache's copy.
        let linked = try vm.spawnFunction(linkView, args: "data/a.txt", count: 1)
        for (_, message) in try collect(vm, linked) {
            if case .taskResult(let result) = message {
                let view = try result.value(as: LinkView.self)
                report("linkContent", view.content)
                report("linkCount", view.links)
            }
        }
        // A glob into a subfolder, the task starting there.
        let globVM = try VM(mirrorMap: [source + "/*.txt": "inputs"], startupDir: "inputs")
        for (_, view) in try inspect(globVM, count: 1) {
            report("globEntries", view.entries.joined(separator: ","))
            report("globStartsIn", view.cwd.hasSuffix("/inputs"))
        }
        // A file changed after its VM read it is refused on the host, naming it; nothing wrong enters the cache.
        let changing = scratch + "/changing.txt"
        try "before".write(toFile: changing, atomically: false, encoding: .utf8)
        let changedVM = try VM(mirrorMap: [changing: "."])
        try "after!".write(toFile: changing, atomically: false, encoding: .utf8)
        do {
            _ = try changedVM.spawnFunction(linkView, args: "changing.txt", count: 1)
            report("changedSpawn", "spawned")
        } catch let error as VMError {
            report("changedSpawn", "\(error.code)")
            report("changedMessage", error.message)
        }
        // The VM still serves afterwards.
        report("afterwards", try inspect(vm, count: 1).count)
    }
]
