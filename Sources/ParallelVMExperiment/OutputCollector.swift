import Glibc
import ParallelVMStorage

/// `renameat2(2)`, looked up at run time: Swift's Glibc module does not import it (it needs `_GNU_SOURCE`).
/// Nil when the C library lacks it.
private let renameat2Function:
    (@convention(c) (Int32, UnsafePointer<CChar>?, Int32, UnsafePointer<CChar>?, UInt32) -> Int32)? = {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "renameat2") else { return nil }
        return unsafeBitCast(
            symbol,
            to: (@convention(c) (Int32, UnsafePointer<CChar>?, Int32, UnsafePointer<CChar>?, UInt32) -> Int32).self
        )
    }()

/// `RENAME_EXCHANGE` from `<linux/fs.h>`.
private let renameExchange: UInt32 = 2

/// Copies the files a job names in its task folder into `outputs/<job>/`, all or nothing.
///
/// Everything is copied into a staging folder `outputs/.staging-<job>-<random>/`, synced, and renamed to
/// `outputs/<job>/` in one step; an older `outputs/<job>/` is swapped out atomically (`RENAME_EXCHANGE`)
/// and then removed, or, where the file system cannot exchange, renamed away just before. So a reader
/// sees the old outputs or the new ones, never a part, and a failed copy leaves no `outputs/<job>/` it made.
struct OutputCollector {
    /// Prefix of staging folders; leftovers of a crash are removed when the experiment opens.
    static let stagingPrefix = ".staging-"
    /// Prefix of replaced output folders waiting to be removed.
    static let replacedPrefix = ".replaced-"

    let experiment: String
    /// The open `outputs` folder and its path.
    let outputsFd: Int32
    let outputsPath: String
    /// Called after staging is complete and before the rename (tests look at `outputs/` there).
    var beforeRename: (() throws -> Void)? = nil

    /// Collects what `patterns` match in `taskFolder` for job `jobIndex`; returns the matched paths,
    /// relative to the task folder (a matched folder is copied whole and listed once), sorted.
    func collect(jobIndex: Int, from taskFolder: String, patterns: [String]) throws -> [String] {
        guard jobIndex >= 0 else {
            throw ExperimentError(
                .invalidPattern,
                experiment: experiment,
                path: outputsPath,
                reason: "cannot hold outputs of job #\(jobIndex): a job index is not negative",
                subject: "outputs folder"
            )
        }
        var parsed: [[String]] = []
        for pattern in patterns {
            guard let components = Glob.components(pattern) else {
                throw ExperimentError(
                    .invalidPattern,
                    experiment: experiment,
                    path: Paths.join(taskFolder, pattern),
                    reason: "is not a pattern inside the task folder (it is empty, absolute or climbs out with ..)",
                    subject: "output pattern"
                )
            }
            parsed.append(components)
        }
        let taskFd = try SystemCall.value("open") { open(taskFolder, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            .get("opened", experiment: experiment, path: taskFolder, subject: "task folder")
        defer { SystemCall.close(taskFd) }
        var matched: Set<String> = []
        for components in parsed {
            let found = try Glob.matches(components, in: taskFd)
                .get("searched for outputs", experiment: experiment, path: taskFolder, subject: "task folder")
            matched.formUnion(found)
        }
        let paths = matched.sorted().reduce(into: [String]()) { kept, path in
            if !kept.contains(where: { path.hasPrefix($0 + "/") }) { kept.append(path) }
        }

        let job = String(jobIndex)
        let staging = "\(Self.stagingPrefix)\(job)-\(Paths.randomSuffix())"
        let stagingPath = Paths.join(outputsPath, staging)
        try SystemCall.value("mkdirat") { mkdirat(outputsFd, staging, 0o755) }
            .get("created", experiment: experiment, path: stagingPath, subject: "output staging folder")
        do {
            try stage(paths, from: taskFd, taskFolder: taskFolder, into: staging, stagingPath: stagingPath)
            try beforeRename?()
            try publish(staging, as: job)
        } catch {
            try? removeEntry(staging)
            throw error
        }
        return paths
    }

    /// Copies every path into the staging folder, keeping its folders, and syncs the staging folder.
    private func stage(
        _ paths: [String],
        from taskFd: Int32,
        taskFolder: String,
        into staging: String,
        stagingPath: String
    ) throws {
        let stagingFd = try FileTree.openDirectory(staging, in: outputsFd)
            .get("opened", experiment: experiment, path: stagingPath, subject: "output staging folder")
        defer { SystemCall.close(stagingFd) }
        for path in paths {
            var parts = path.split(separator: "/").map(String.init)
            let name = parts.removeLast()
            var srcFd = try SystemCall.value("dup") { fcntl(taskFd, F_DUPFD_CLOEXEC, 0) }
                .get("opened", experiment: experiment, path: taskFolder, subject: "task folder")
            var dstFd = try SystemCall.value("dup") { fcntl(stagingFd, F_DUPFD_CLOEXEC, 0) }
                .get("opened", experiment: experiment, path: stagingPath, subject: "output staging folder")
            defer {
                SystemCall.close(srcFd)
                SystemCall.close(dstFd)
            }
            var walked = ""
            for part in parts {
                walked = walked.isEmpty ? part : walked + "/" + part
                let nextSrc = try FileTree.openDirectory(part, in: srcFd)
                    .get(
                        "opened",
                        experiment: experiment,
                        path: Paths.join(taskFolder, walked),
                        subject: "output folder"
                    )
                SystemCall.close(srcFd)
                srcFd = nextSrc
                let made = SystemCall.value("mkdirat") { mkdirat(dstFd, part, 0o755) }
                if !made.failed(with: EEXIST) {
                    try made.get(
                        "created",
                        experiment: experiment,
                        path: Paths.join(stagingPath, walked),
                        subject: "output folder"
                    )
                }
                let nextDst = try FileTree.openDirectory(part, in: dstFd)
                    .get(
                        "opened",
                        experiment: experiment,
                        path: Paths.join(stagingPath, walked),
                        subject: "output folder"
                    )
                SystemCall.close(dstFd)
                dstFd = nextDst
            }
            do {
                try FileTree.copy(name, from: srcFd, to: dstFd, relative: path)
            } catch {
                let side = error.operation == "read" ? taskFolder : stagingPath
                throw error.error.experimentError(
                    error.operation,
                    experiment: experiment,
                    path: Paths.join(side, error.relative),
                    subject: "output"
                )
            }
            if !parts.isEmpty {
                try SystemCall.value("fsync") { fsync(dstFd) }
                    .get(
                        "synced",
                        experiment: experiment,
                        path: Paths.join(stagingPath, walked),
                        subject: "output folder"
                    )
            }
        }
        try SystemCall.value("fsync") { fsync(stagingFd) }
            .get("synced", experiment: experiment, path: stagingPath, subject: "output staging folder")
    }

    /// Renames the staging folder to `job`, swapping out (then removing) an older one.
    private func publish(_ staging: String, as job: String) throws {
        let jobPath = Paths.join(outputsPath, job)
        if FileTree.status(job, in: outputsFd).failed(with: ENOENT) {
            try SystemCall.value("renameat") { renameat(outputsFd, staging, outputsFd, job) }
                .get("moved into place", experiment: experiment, path: jobPath, subject: "outputs of job")
        } else if let exchange = renameat2Function,
            SystemCall.value("renameat2", { exchange(outputsFd, staging, outputsFd, job, renameExchange) }).failure
                == nil
        {
            // `staging` now holds the older outputs.
            try syncOutputsFolder()
            try removeEntry(staging)
            return
        } else {
            let replaced = "\(Self.replacedPrefix)\(job)-\(Paths.randomSuffix())"
            try SystemCall.value("renameat") { renameat(outputsFd, job, outputsFd, replaced) }
                .get("moved aside", experiment: experiment, path: jobPath, subject: "older outputs of job")
            try SystemCall.value("renameat") { renameat(outputsFd, staging, outputsFd, job) }
                .get("moved into place", experiment: experiment, path: jobPath, subject: "outputs of job")
            try syncOutputsFolder()
            try removeEntry(replaced)
            return
        }
        try syncOutputsFolder()
    }

    private func syncOutputsFolder() throws {
        try SystemCall.value("fsync") { fsync(outputsFd) }
            .get("synced", experiment: experiment, path: outputsPath, subject: "outputs folder")
    }

    /// Removes an entry of `outputs/` with everything in it.
    func removeEntry(_ name: String) throws(ExperimentError) {
        do {
            try FileTree.remove(name, in: outputsFd, relative: name)
        } catch {
            throw error.error.experimentError(
                error.operation,
                experiment: experiment,
                path: Paths.join(outputsPath, error.relative),
                subject: "output"
            )
        }
    }

    /// Removes staging and replaced folders a crashed run left in `outputs/`.
    func removeLeftovers() throws(ExperimentError) {
        let names = try FileTree.names(in: outputsFd)
            .get("listed", experiment: experiment, path: outputsPath, subject: "outputs folder")
        for name in names where name.hasPrefix(Self.stagingPrefix) || name.hasPrefix(Self.replacedPrefix) {
            try removeEntry(name)
        }
    }
}
