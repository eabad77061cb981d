// Leaves persistent local storage on every worker, then clears this user's local storage on the spawner
// and on every host and prints what was removed (PyOPUS demo/parallel/vm/05-cleanup.py).
//
//   PARALLEL_MIRRORED_STORAGE=$PWD scripts/run-demo.sh 05-storage-cleanup 3
//
// Clearing removes only the per-user folder under PARALLEL_LOCAL_STORAGE (parallelvm-<user>), and
// follows no symbolic link out of it. Run it after a crash, or at boot, to drop stale folders.

import Foundation
import ParallelVM

/// Returns the folder the task ran in.
let whereAmI = RemoteFunction("whereAmI") { (_: Int, _: TaskContext) -> String in
    FileManager.default.currentDirectoryPath
}

let vm = try VM(functions: [whereAmI])
let folder = CommandLine.arguments.dropFirst().first ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().path

// Persistent storage stays after each task, so there is something to clear.
if let persistent = try? VM(mirrorMap: [folder + "/*": "."], persistentStorage: true) {
    let tasks = try persistent.spawnFunction(whereAmI, args: 0)
    var running = Set(tasks)
    while !running.isEmpty, let (source, message) = try persistent.receiveMessage(timeout: 60) {
        if case .taskResult(let result) = message, result.success {
            print("Task \(source) left persistent storage in \(try result.value(as: String.self))")
        }
        if case .taskExit = message { running.remove(source) }
    }
} else {
    print("(Set PARALLEL_MIRRORED_STORAGE to a folder holding \(folder) to create persistent storage first.)")
}

print("\nClearing local storage on every host ...")
for report in try vm.clearLocalStorage(timeout: 10) {
    print("Host \(report.host): removed \(report.removed.count) item(s)")
    for path in report.removed { print("  removed \(path)") }
    for (path, reason) in report.failures.sorted(by: { $0.key < $1.key }) { print("  FAILED  \(path): \(reason)") }
}
try vm.finalize()
