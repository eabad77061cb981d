// Mirrors a folder of the spawner into each task's local storage and lists it from the task
// (PyOPUS demo/parallel/vm/04-mirror.py).
//
//   PARALLEL_MIRRORED_STORAGE=$PWD scripts/run-demo.sh 04-mirror 3 [FOLDER]
//
// FOLDER (default: this demo's own folder) must lie inside PARALLEL_MIRRORED_STORAGE, the shared folders
// every host sees (default: your home). Each task gets a fresh folder under PARALLEL_LOCAL_STORAGE
// (default: the temporary folder), starts in it, and the folder is removed when the task ends.

import Foundation
import ParallelVM

/// What a task found in its working folder.
struct Listing: Codable, Sendable {
    var folder: String
    var directories: [String]
    var files: [String]
    var links: [String]
}

/// Lists the current folder, as PyOPUS's helloLs does.
let helloLs = RemoteFunction("helloLs") { (_: Int, task: TaskContext) -> Listing in
    let manager = FileManager.default
    let folder = manager.currentDirectoryPath
    var listing = Listing(folder: folder, directories: [], files: [], links: [])
    for name in try manager.contentsOfDirectory(atPath: ".").sorted() where !name.hasPrefix(".") {
        let type = try manager.attributesOfItem(atPath: name)[.type] as? FileAttributeType
        switch type {
        case .typeDirectory?: listing.directories.append(name)
        case .typeSymbolicLink?:
            listing.links.append("\(name) -> \(try manager.destinationOfSymbolicLink(atPath: name))")
        default: listing.files.append(name)
        }
    }
    task.logger.info("listed \(listing.files.count) file(s) in \(folder)")
    return listing
}

let arguments = CommandLine.arguments.dropFirst()
let folder = arguments.first ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().path

// The first VM registers the function and starts the workers; debug 2 shows what each task mirrored.
let vm = try VM(functions: [helloLs])
let mirroring: VM
do {
    mirroring = try VM(debug: 2, mirrorMap: [folder + "/*": "."])
} catch {
    print("Cannot mirror \(folder): \(error)")
    print("Set PARALLEL_MIRRORED_STORAGE to a folder that holds it, e.g. PARALLEL_MIRRORED_STORAGE=$PWD")
    try vm.finalize()
    exit(1)
}

print("Mirroring \(folder)/* into each task's local storage.")
let tasks = try mirroring.spawnFunction(helloLs, args: 0, count: 1)
guard let task = tasks.first else {
    print("No worker slot: run under mpirun with at least 2 ranks, e.g. scripts/run-demo.sh 04-mirror 3")
    try vm.finalize()
    exit(0)
}
print("Spawned: \(task)")
while let (source, message) = try mirroring.receiveMessage(timeout: 60) {
    switch message {
    case .taskResult(let result):
        guard result.success else {
            print("Task \(source) failed: \(result.error!)")
            continue
        }
        let listing = try result.value(as: Listing.self)
        print("Task \(source) ran in \(listing.folder)")
        print("Dirs      : \(listing.directories)")
        print("Files     : \(listing.files)")
        print("Links     : \(listing.links)")
    case .taskExit:
        print("Task \(source) exited; its local storage is gone.")
    default:
        break
    }
    if case .taskExit = message { break }
}
try vm.finalize()
