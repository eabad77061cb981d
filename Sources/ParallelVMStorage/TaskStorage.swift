import Foundation
import Glibc

/// The result of preparing a task's storage on a worker: where the task should start and what was done.
package struct PreparedStorage: Sendable, Hashable {
    /// Folder the VM should change into before running the task; nil leaves the folder MPI chose.
    package var workingDirectory: String?
    /// The task's local storage folder, or nil when nothing is mirrored.
    package var folder: String?
    /// Regular files copied.
    package var files: Int
    /// Bytes copied.
    package var bytes: UInt64
    /// Wall-clock seconds spent preparing.
    package var seconds: Double
    /// True when a persistent folder from an earlier task of the same VM was reused without copying.
    package var reused: Bool
    /// Whether the folder outlives the task.
    package var persistent: Bool

    /// Removes the task's storage folder unless it is persistent (links inside are not followed).
    /// - Throws: `StorageError.ioFailure` naming the first path that could not be removed.
    package func cleanup() throws {
        let report = cleanupReport()
        if let (path, reason) = report.failures.sorted(by: { $0.key < $1.key }).first {
            throw StorageError(
                .ioFailure,
                path: path,
                reason: "could not be removed: \(reason)",
                subject: "local storage"
            )
        }
    }

    /// Like `cleanup()` but reports instead of throwing.
    func cleanupReport() -> ClearReport {
        var report = ClearReport(host: PathUtil.hostName())
        guard let folder, !persistent else { return report }
        let parent = PathUtil.parent(folder)
        let fd = open(parent, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            report.failures[folder] = errnoText(errno)
            return report
        }
        defer { close(fd) }
        if TreeRemover.remove(PathUtil.lastComponent(folder), in: fd, path: folder, failures: &report.failures) {
            report.removed.append(folder)
        }
        return report
    }
}

/// Worker-side preparation of a task's local storage: naming, atomic mirroring, persistent reuse.
package enum TaskStorage {
    /// Name of the owner record written into every storage folder.
    static let ownerRecordName = ".parallelvm-owner"

    /// Knobs that the VM leaves at their defaults and tests change.
    package struct Options {
        /// The worker process id, part of a persistent folder's name so worker processes on one host
        /// never share (and clear) each other's persistent folder.
        var workerPID: Int32 = getpid()
        /// Threads copying subfolders of a mirrored folder concurrently.
        var parallelism: Int = TaskStorage.defaultParallelism
        /// Called after every copied file with the running count; throwing simulates a failure.
        var afterFile: ((Int) throws -> Void)? = nil

        package init() {}
    }

    /// Two threads keep the disk and the CPU busy without crowding out other tasks on the host.
    static let defaultParallelism = max(1, min(2, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))

    /// `<host>-<pid>-<vmIndex>`: the spawner's host and PID and the VM index, made safe as a file name.
    static func baseName(for request: StorageRequest) -> String {
        "\(PathUtil.sanitizeComponent(request.spawner.host))-\(request.spawner.pid)-\(request.vmIndex)"
    }

    /// Prepares the storage for one task and works out its working folder.
    ///
    /// Without mirror entries nothing is created: the working folder is `startupDir` (translated
    /// through `mirrored` when the request says so) or nil. With mirror entries a folder is built
    /// under `root`'s per-user folder:
    /// - non-persistent: `<base>-<n>`, the first free `n` reserved atomically with `mkdir`, so
    ///   concurrent tasks never share;
    /// - persistent: `<base>-w<workerPID>`, reused as is when this worker process has served the VM
    ///   before (`servedBefore`) and the folder's owner record names the same spawner run; otherwise
    ///   any old folder of that name is removed and the mirroring is done afresh.
    /// The copy is built in a hidden staging folder that gets an owner record and is then renamed
    /// into place, so a half-made folder is never accepted. Any failure removes the staging folder.
    /// - Throws: `StorageError` naming the path and the reason.
    package static func prepare(
        _ request: StorageRequest,
        mirrored: MirroredStorage,
        root: LocalStorageRoot,
        servedBefore: inout Set<String>,
        options: Options = Options()
    ) throws -> PreparedStorage {
        let clock = ContinuousClock.now
        func seconds() -> Double {
            let d = ContinuousClock.now - clock
            return Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
        }

        guard !request.mirror.isEmpty else {
            var workingDirectory: String?
            if let abstract = request.startupAbstract {
                workingDirectory = try mirrored.localPath(for: abstract)
            } else {
                workingDirectory = request.startupDir
            }
            if let dir = workingDirectory { try requireDirectory(dir, subject: "startup folder") }
            return PreparedStorage(
                workingDirectory: workingDirectory,
                folder: nil,
                files: 0,
                bytes: 0,
                seconds: seconds(),
                reused: false,
                persistent: request.persistent
            )
        }

        try root.ensureUserFolder()
        let userFd = open(root.userFolder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard userFd >= 0 else {
            throw StorageError.errno(
                errno,
                "opened",
                path: root.userFolder,
                subject: "local storage folder",
                code: .unwritableRoot
            )
        }
        defer { close(userFd) }

        let base = baseName(for: request)
        let name: String
        var reserved = false
        if request.persistent {
            name = "\(base)-w\(options.workerPID)"
            let folder = PathUtil.join(root.userFolder, name)
            if servedBefore.contains(request.vmKey),
                ownerRecord(in: userFd, folder: name).map({ matches($0, request) }) == true
            {
                return PreparedStorage(
                    workingDirectory: try workingDirectory(folder: folder, request: request),
                    folder: folder,
                    files: 0,
                    bytes: 0,
                    seconds: seconds(),
                    reused: true,
                    persistent: true
                )
            }
            // First task of this VM in this worker, or a folder from someone else: start afresh.
            var failures: [String: String] = [:]
            if !TreeRemover.remove(name, in: userFd, path: folder, failures: &failures) {
                let (path, reason) = failures.sorted(by: { $0.key < $1.key })[0]
                throw StorageError(
                    .ioFailure,
                    path: path,
                    reason: "could not be removed: \(reason)",
                    subject: "stale local storage"
                )
            }
        } else {
            name = try reserveName(base: base, in: userFd, userFolder: root.userFolder)
            reserved = true
        }
        let folder = PathUtil.join(root.userFolder, name)

        // Build everything in a hidden staging folder next to the final one.
        let staging = ".\(name).staging-\(String(UInt64.random(in: 0...UInt64.max), radix: 16))"
        let stagingPath = PathUtil.join(root.userFolder, staging)
        if mkdirat(userFd, staging, 0o700) != 0 {
            let err = errno
            if reserved { _ = unlinkat(userFd, name, AT_REMOVEDIR) }
            throw StorageError.errno(err, "created", path: stagingPath, subject: "local storage folder")
        }
        do {
            let copier = TreeCopier()
            copier.afterFile = options.afterFile
            let stagingFd = openat(userFd, staging, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard stagingFd >= 0 else {
                throw StorageError.errno(errno, "opened", path: stagingPath, subject: "local storage folder")
            }
            defer { close(stagingFd) }
            for entry in request.mirror {
                let (literal, pattern) = try mirrored.localPattern(for: entry.source)
                let matches = Glob.expand(literal: literal, pattern: pattern)
                if matches.isEmpty {
                    throw StorageError(
                        .missingSource,
                        path: PathUtil.join(literal, pattern),
                        reason: "matches nothing on host \(PathUtil.hostName()) (mirrored as \(entry.source), "
                            + "\(mirrored.listDescription))",
                        subject: "mirror source"
                    )
                }
                let targetPath = PathUtil.join(stagingPath, entry.target)
                let targetFd = try makeDirectories(entry.target, in: stagingFd, path: targetPath)
                defer { close(targetFd) }
                // Matches of one glob have distinct names unless they come from different folders;
                // only then may they be copied concurrently without racing for the same name.
                let distinct = Set(matches.map(PathUtil.lastComponent)).count == matches.count
                if matches.count == 1 || !distinct || options.parallelism <= 1 {
                    for source in matches {
                        try copier.copyTopLevel(
                            source: source,
                            into: targetFd,
                            dstPath: targetPath,
                            parallelism: options.parallelism
                        )
                    }
                } else {
                    try copier.runInParallel(count: matches.count, threads: options.parallelism) {
                        index,
                        threadCopier in
                        try threadCopier.copyTopLevel(source: matches[index], into: targetFd, dstPath: targetPath)
                    }
                }
            }
            if let dir = request.startupDir {
                try requireDirectory(
                    PathUtil.join(stagingPath, dir),
                    subject: "startup folder",
                    shownAs: PathUtil.join(folder, dir)
                )
            }
            try writeOwnerRecord(for: request, in: stagingFd, path: stagingPath)
            // rename() replaces our empty reserved folder (or takes a free name) atomically.
            if renameat(userFd, staging, userFd, name) != 0 {
                throw StorageError.errno(errno, "moved into place", path: folder, subject: "local storage folder")
            }
            if request.persistent { servedBefore.insert(request.vmKey) }
            return PreparedStorage(
                workingDirectory: try workingDirectory(folder: folder, request: request),
                folder: folder,
                files: copier.files,
                bytes: copier.bytes,
                seconds: seconds(),
                reused: false,
                persistent: request.persistent
            )
        } catch {
            var ignored: [String: String] = [:]
            TreeRemover.remove(staging, in: userFd, path: stagingPath, failures: &ignored)
            if reserved { _ = unlinkat(userFd, name, AT_REMOVEDIR) }
            if let error = error as? StorageError { throw error }
            throw StorageError(
                .ioFailure,
                path: stagingPath,
                reason: "could not be prepared: \(error)",
                subject: "local storage folder"
            )
        }
    }

    /// Reserves `<base>-<n>` for the first free `n` by creating it: mkdir is atomic, so two tasks on
    /// one host can never get the same folder.
    static func reserveName(base: String, in userFd: Int32, userFolder: String) throws -> String {
        var n = 1
        while true {
            let name = "\(base)-\(n)"
            if mkdirat(userFd, name, 0o700) == 0 { return name }
            let err = errno
            guard err == EEXIST else {
                throw StorageError.errno(
                    err,
                    "created",
                    path: PathUtil.join(userFolder, name),
                    subject: "local storage folder"
                )
            }
            n += 1
        }
    }

    /// The working folder for a task with mirroring: the storage folder or `startupDir` inside it.
    private static func workingDirectory(folder: String, request: StorageRequest) throws -> String {
        guard let dir = request.startupDir else { return folder }
        // It came over the network: check again that it stays inside the folder.
        guard let inside = PathUtil.normalizeInside(dir), !dir.hasPrefix("/") else {
            throw StorageError(
                .invalidTarget,
                path: dir,
                reason: "escapes the local storage folder",
                subject: "startup folder"
            )
        }
        return PathUtil.join(folder, inside)
    }

    /// Creates a relative chain of folders below `parent` (no links followed) and opens the last one.
    private static func makeDirectories(_ relative: String, in parent: Int32, path: String) throws -> Int32 {
        guard let normalized = PathUtil.normalizeInside(relative), !relative.hasPrefix("/") else {
            throw StorageError(
                .invalidTarget,
                path: relative,
                reason: "escapes the local storage folder",
                subject: "mirror target"
            )
        }
        var fd = dup(parent)
        for component in PathUtil.components(normalized) {
            let c = String(component)
            if mkdirat(fd, c, 0o777) != 0 && errno != EEXIST {
                let err = errno
                close(fd)
                throw StorageError.errno(err, "created", path: path, subject: "mirror target")
            }
            let next = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            let err = errno
            close(fd)
            guard next >= 0 else {
                throw StorageError.errno(
                    err,
                    "opened (a file or link is in the way?)",
                    path: path,
                    subject: "mirror target"
                )
            }
            fd = next
        }
        return fd
    }

    /// Throws unless `path` is a directory (following links, as chdir will).
    private static func requireDirectory(_ path: String, subject: String, shownAs: String? = nil) throws {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw StorageError(
                .missingSource,
                path: shownAs ?? path,
                reason: "does not exist: \(errnoText(errno))",
                subject: subject
            )
        }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            throw StorageError(.missingSource, path: shownAs ?? path, reason: "is not a directory", subject: subject)
        }
    }

    // MARK: Owner record

    /// The fields of an owner record, parsed.
    typealias OwnerRecord = [String: String]

    /// The text written into `.parallelvm-owner`: one `key=value` per line, `complete=1` last.
    static func ownerRecordText(for request: StorageRequest) -> String {
        let s = request.spawner
        return "host=\(s.host)\npid=\(s.pid)\nstartTime=\(s.startTime)\nbootID=\(s.bootID)\n"
            + "vmIndex=\(request.vmIndex)\ncomplete=1\n"
    }

    /// True when a record names exactly this spawner run and VM and says the copy was complete.
    static func matches(_ record: OwnerRecord, _ request: StorageRequest) -> Bool {
        let s = request.spawner
        return record["complete"] == "1" && record["host"] == s.host && record["pid"] == String(s.pid)
            && record["startTime"] == String(s.startTime) && record["bootID"] == s.bootID
            && record["vmIndex"] == String(request.vmIndex)
    }

    /// Reads the owner record of `folder` (inside the open `parent`), nil when absent or unreadable.
    static func ownerRecord(in parent: Int32, folder: String) -> OwnerRecord? {
        let dirFd = openat(parent, folder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard dirFd >= 0 else { return nil }
        defer { close(dirFd) }
        let fd = openat(dirFd, ownerRecordName, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        var record: OwnerRecord = [:]
        for line in String(decoding: buffer[0..<n], as: UTF8.self).split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            record[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        return record
    }

    /// Writes the owner record into the open staging folder.
    static func writeOwnerRecord(for request: StorageRequest, in dirFd: Int32, path: String) throws {
        let fd = openat(dirFd, ownerRecordName, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw StorageError.errno(
                errno,
                "written",
                path: PathUtil.join(path, ownerRecordName),
                subject: "owner record"
            )
        }
        defer { close(fd) }
        let bytes = Array(ownerRecordText(for: request).utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else {
            throw StorageError.errno(
                written < 0 ? errno : EIO,
                "written",
                path: PathUtil.join(path, ownerRecordName),
                subject: "owner record"
            )
        }
    }
}
