import Foundation
import Glibc
import ParallelVMStorage

/// What a worker process remembers about local storage between tasks.
struct WorkerStorageState {
    /// The VMs this process has served and the leases of their persistent folders: a persistent folder
    /// is reused only from the second task of a VM on, and stays leased while this process lives.
    var persistentFolders = PersistentFolders()
    /// The folder MPI started the worker in; tasks with no storage settings run there.
    let startDirectory = FileManager.default.currentDirectoryPath
    /// That folder, open: changing back into it by descriptor costs no path lookup, once per task.
    let startDirectoryDescriptor = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)

    /// Changes back into the folder MPI started the worker in.
    func returnToStart() {
        if startDirectoryDescriptor < 0 || fchdir(startDirectoryDescriptor) != 0 { _ = chdir(startDirectory) }
    }
}

extension Worker {
    /// Prepares the task's local storage and working directory as its VM object asked, and changes into it.
    /// Returns the prepared storage to clean up after the task; throws a `StorageError` naming the path.
    func prepareStorage(_ request: StorageRequest, task: TaskID) throws -> PreparedStorage {
        let environment = ProcessInfo.processInfo.environment
        let mirrored = MirroredStorage(environment: environment)
        let root = try LocalStorageRoot(environment: environment)
        let prepared = try TaskStorage.prepare(
            request,
            mirrored: mirrored,
            root: root,
            servedBefore: &storage.persistentFolders,
            holder: "task \(task)"
        )
        if inTaskProcess, let folder = prepared.folder {
            // The worker rank removes the folder should this process die with the task.
            try? transport.send(
                TaskFolderNote(task: task.number, path: folder, persistent: prepared.persistent).frame().bytes,
                to: 0
            )
        }
        if let directory = prepared.workingDirectory {
            guard chdir(directory) == 0 else {
                let reason = String(cString: strerror(errno))
                try? prepared.cleanup()
                throw StorageError(
                    .ioFailure,
                    path: directory,
                    reason: "cannot be entered: \(reason)",
                    subject: "working folder"
                )
            }
        }
        if prepared.folder != nil, !prepared.reused {
            log(
                StorageNote(files: prepared.files, bytes: Int(prepared.bytes), seconds: prepared.seconds).record,
                from: task
            )
        }
        if prepared.folder != nil {
            log(
                .debug,
                prepared.reused
                    ? "task \(task) reuses persistent storage \(prepared.folder!)"
                    : "task \(task) mirrored \(prepared.files) file(s), \(prepared.bytes) bytes in \(String(format: "%.3f", prepared.seconds)) s into \(prepared.folder!)"
            )
        }
        return prepared
    }

    /// Removes the task's storage (unless persistent) and returns to the folder MPI started the worker in.
    func cleanupStorage(_ prepared: PreparedStorage, task: TaskID) {
        storage.returnToStart()
        do {
            try prepared.cleanup()
        } catch {
            log(.warning, "task \(task) could not remove its local storage: \(error)")
        }
    }

    /// Clears this user's local storage on this worker's host and reports to the spawner.
    func clearStorageOnWorker() {
        // No task runs now, so this process's persistent folders are not in use: let them go too.
        storage.persistentFolders.releaseAll()
        MirrorCache.releasePins()
        let report = Worker.clearLocalStorageHere()
        do {
            wakeSpawnerIfAsleep()
            try ClearStorageReport.send(report, over: transport)
        } catch {
            log(.error, "could not report clearing local storage: \(error)")
        }
    }

    /// Clears this user's local storage under this process's `PARALLEL_LOCAL_STORAGE`.
    ///
    /// Nothing is created first: the other ranks of this host clear at the same time, and a folder one
    /// of them creates here may be gone before it is looked at.
    static func clearLocalStorageHere(
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) -> ClearReport {
        do {
            return try LocalStorageRoot(environment: environment, create: false).clear()
        } catch {
            let root = environment[LocalStorageRoot.variable] ?? NSTemporaryDirectory()
            return ClearReport(host: ProcessInfo.processInfo.hostName, failures: [root: "\(error)"])
        }
    }

    /// Removes the folders of dead runs from this user's local storage on this host (see
    /// `LocalStorageRoot.removeStale`); called once as the VM starts, on every rank.
    static func removeStaleLocalStorageHere() -> ClearReport {
        let environment = ProcessInfo.processInfo.environment
        guard let root = try? LocalStorageRoot(environment: environment, create: false) else {
            return ClearReport(host: ProcessInfo.processInfo.hostName)
        }
        return root.removeStale()
    }
}
