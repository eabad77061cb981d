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
    /// The lease that marks the folder in use while the task runs (a persistent folder's lease is also
    /// kept by the worker's `PersistentFolders`, for as long as the worker lives).
    package var lease: StorageLease?

    /// Removes the task's storage folder and its bookkeeping unless it is persistent (links inside are
    /// not followed, mount points inside are left alone).
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

    /// Removes the non-persistent task folder at `folder` and its bookkeeping, for a task whose process
    /// died before it could (its lease died with it); reports what was removed and what could not be.
    package static func removeAbandoned(folder: String) -> ClearReport {
        PreparedStorage(
            workingDirectory: nil,
            folder: folder,
            files: 0,
            bytes: 0,
            seconds: 0,
            reused: false,
            persistent: false,
            lease: nil
        ).cleanupReport()
    }

    /// Like `cleanup()` but reports instead of throwing.
    func cleanupReport() -> ClearReport {
        var report = ClearReport(host: PathUtil.hostName())
        guard let folder, !persistent else { return report }
        let parent = PathUtil.parent(folder)
        let opened = SystemCall.value("open") { open(parent, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard case .success(let fd) = opened else {
            report.failures[folder] = opened.failure?.text
            return report
        }
        defer { SystemCall.close(fd) }
        let name = PathUtil.lastComponent(folder)
        guard TreeRemover.remove(name, in: fd, path: folder, failures: &report.failures) else { return report }
        report.removed.append(folder)
        // The lease is still ours (this value holds it), so nobody else is removing the sidecar.
        let sidecar = Sidecar.name(for: name)
        let sidecarPath = PathUtil.join(parent, sidecar)
        if TreeRemover.remove(sidecar, in: fd, path: sidecarPath, failures: &report.failures) {
            report.removed.append(sidecarPath)
        }
        return report
    }
}

/// Worker-side preparation of a task's local storage: naming, atomic mirroring, persistent reuse.
package enum TaskStorage {
    /// Knobs that the VM leaves at their defaults and tests change.
    package struct Options {
        /// The worker process id, part of a persistent folder's name so worker processes on one host
        /// never share (and clear) each other's persistent folder, and recorded as the folder's maker.
        var workerPID: Int32 = getpid()
        /// The worker's host, part of every folder's name so that workers on several hosts sharing one
        /// `PARALLEL_LOCAL_STORAGE` never pick the same name, and recorded as the folder's host.
        var hostName: String = PathUtil.hostName()
        /// Threads copying subfolders of a mirrored folder concurrently.
        var parallelism: Int = TaskStorage.defaultParallelism
        /// Called after every copied file with the running count; throwing simulates a failure.
        var afterFile: ((Int) throws -> Void)? = nil

        package init() {}

        /// The worker process as the owner record names it.
        var maker: ProcessIdentity {
            let current = SpawnerIdentity.current()
            return ProcessIdentity(
                host: hostName,
                pid: workerPID,
                startTime: workerPID == current.pid ? current.startTime : 0,
                bootID: current.bootID
            )
        }
    }

    /// Two threads keep the disk and the CPU busy without crowding out other tasks on the host.
    static let defaultParallelism = max(1, min(2, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))

    /// `<spawnerHost>-<spawnerPID>-<vmIndex>@<workerHost>`, made safe as a file name.
    static func baseName(for request: StorageRequest, workerHost: String) -> String {
        "\(PathUtil.sanitizeComponent(request.spawner.host))-\(request.spawner.pid)-\(request.vmIndex)"
            + "@\(PathUtil.sanitizeComponent(workerHost))"
    }

    /// Prepares the storage for one task and works out its working folder.
    ///
    /// Without mirror entries nothing is created: the working folder is `startupDir` (translated
    /// through `mirrored` when the request says so) or nil. With mirror entries a folder is built
    /// under `root`'s per-user folder, with its bookkeeping (owner record and lease) in the sidecar
    /// `.<name>.parallelvm` beside it:
    /// - non-persistent: `<base>-<n>`, the first free `n` reserved atomically by creating its sidecar
    ///   with `mkdir`, so concurrent tasks never share;
    /// - persistent: `<base>-w<workerPID>`, reused as is when this worker process has served the VM
    ///   before (`servedBefore`) and the owner record names the same spawner run, this host and its
    ///   current boot; otherwise any old folder of that name is removed and the mirroring is done afresh.
    /// The folder is leased (`holder` says by whom) before anything is copied. The copy is built in a
    /// hidden staging folder that is renamed into place when complete, so a half-made folder is never
    /// accepted. Any failure removes the staging folder.
    /// - Throws: `StorageError` naming the path and the reason.
    package static func prepare(
        _ request: StorageRequest,
        mirrored: MirroredStorage,
        root: LocalStorageRoot,
        servedBefore: inout PersistentFolders,
        holder: String = "a task",
        options: Options = Options()
    ) throws -> PreparedStorage {
        let clock = ContinuousClock.now
        func seconds() -> Double {
            let d = ContinuousClock.now - clock
            return Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
        }

        guard request.mirrors else {
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
                persistent: request.persistent,
                lease: nil
            )
        }

        try root.ensureUserFolder()
        let userFd = try root.openUserFolder()
        defer { SystemCall.close(userFd) }

        let base = baseName(for: request, workerHost: options.hostName)
        let maker = options.maker
        let run =
            "run \(request.spawner.host):\(request.spawner.pid) (VM \(request.vmIndex)) on host \(options.hostName)"
        let name: String
        let lease: StorageLease
        if request.persistent {
            name = "\(base)-w\(options.workerPID)"
            let folder = PathUtil.join(root.userFolder, name)
            if servedBefore.served.contains(request.vmKey), let held = servedBefore.leases[name],
                isReusable(name, in: userFd, userFolder: root.userFolder, request: request, maker: maker)
            {
                return PreparedStorage(
                    workingDirectory: try workingDirectory(folder: folder, request: request),
                    folder: folder,
                    files: 0,
                    bytes: 0,
                    seconds: seconds(),
                    reused: true,
                    persistent: true,
                    lease: held
                )
            }
            // First task of this VM in this worker, or a folder from someone else: start afresh.
            let sidecarFd = try Sidecar.open(for: name, in: userFd, userFolder: root.userFolder, create: true)
            defer { SystemCall.close(sidecarFd) }
            lease =
                try servedBefore.leases[name]
                ?? takeLease(
                    in: sidecarFd,
                    folder: folder,
                    userFolder: root.userFolder,
                    holder: "persistent storage of worker process \(options.workerPID) for \(run)"
                )
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
            try OwnerRecord(maker: maker, spawner: request.spawner, vmIndex: request.vmIndex)
                .write(in: sidecarFd, path: PathUtil.join(root.userFolder, Sidecar.name(for: name)))
        } else {
            (name, lease) = try reserveName(
                base: base,
                in: userFd,
                userFolder: root.userFolder,
                holder: "\(holder) of \(run)",
                record: OwnerRecord(maker: maker, spawner: request.spawner, vmIndex: request.vmIndex)
            )
        }
        let folder = PathUtil.join(root.userFolder, name)

        // Build everything in a hidden staging folder next to the final one.
        let staging = Sidecar.stagingName(for: name)
        let stagingPath = PathUtil.join(root.userFolder, staging)
        do {
            try SystemCall.value("mkdirat") { mkdirat(userFd, staging, 0o700) }
                .get("created", path: stagingPath, subject: "local storage folder")
            let copier = TreeCopier()
            copier.afterFile = options.afterFile
            let stagingFd = try SystemCall.value("openat") {
                openat(userFd, staging, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }.get("opened", path: stagingPath, subject: "local storage folder")
            defer { SystemCall.close(stagingFd) }
            for entry in request.mirror {
                try mirror(
                    entry,
                    into: stagingFd,
                    stagingPath: stagingPath,
                    mirrored: mirrored,
                    copier: copier,
                    options: options
                )
            }
            var files = copier.files
            var bytes = copier.bytes
            if let sent = request.sentTree {
                let linked = try MirrorCache(root: root).materialize(
                    sent.digest,
                    into: stagingFd,
                    folderPath: stagingPath
                )
                files += linked.files
                bytes += linked.bytes
            }
            if let dir = request.startupDir {
                try requireDirectory(
                    PathUtil.join(stagingPath, dir),
                    subject: "startup folder",
                    shownAs: PathUtil.join(folder, dir)
                )
            }
            // rename() takes the free name (or replaces an empty folder of that name) atomically.
            try SystemCall.value("renameat") { renameat(userFd, staging, userFd, name) }
                .get("moved into place", path: folder, subject: "local storage folder")
            if request.persistent {
                servedBefore.served.insert(request.vmKey)
                servedBefore.leases[name] = lease
            }
            return PreparedStorage(
                workingDirectory: try workingDirectory(folder: folder, request: request),
                folder: folder,
                files: files,
                bytes: bytes,
                seconds: seconds(),
                reused: false,
                persistent: request.persistent,
                lease: lease
            )
        } catch {
            var ignored: [String: String] = [:]
            TreeRemover.remove(staging, in: userFd, path: stagingPath, failures: &ignored)
            // The lease is still held here, so the bookkeeping can go with the half-made folder.
            let sidecar = Sidecar.name(for: name)
            TreeRemover.remove(sidecar, in: userFd, path: PathUtil.join(root.userFolder, sidecar), failures: &ignored)
            if request.persistent {
                servedBefore.served.remove(request.vmKey)
                servedBefore.leases[name] = nil
            }
            withExtendedLifetime(lease) {}
            if let error = error as? StorageError { throw error }
            throw StorageError(
                .ioFailure,
                path: stagingPath,
                reason: "could not be prepared: \(error)",
                subject: "local storage folder"
            )
        }
    }

    /// Copies what one mirror entry matches on this host into the open staging folder.
    private static func mirror(
        _ entry: MirrorEntry,
        into stagingFd: Int32,
        stagingPath: String,
        mirrored: MirroredStorage,
        copier: TreeCopier,
        options: Options
    ) throws {
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
        // A glob's matches are entries of their folders: a symlink among them stays a symlink, as it
        // would inside a copied tree. A path named without a glob is followed, as the user named it.
        let followLinks = pattern.isEmpty
        let targetPath = PathUtil.join(stagingPath, entry.target)
        let targetFd = try makeDirectories(entry.target, in: stagingFd, path: targetPath)
        defer { SystemCall.close(targetFd) }
        // Matches of one glob have distinct names unless they come from different folders;
        // only then may they be copied concurrently without racing for the same name.
        let distinct = Set(matches.map(PathUtil.lastComponent)).count == matches.count
        if matches.count == 1 || !distinct || options.parallelism <= 1 {
            for source in matches {
                try copier.copyTopLevel(
                    source: source,
                    into: targetFd,
                    dstPath: targetPath,
                    followLinks: followLinks,
                    parallelism: options.parallelism
                )
            }
        } else {
            try copier.runInParallel(count: matches.count, threads: options.parallelism) { index, threadCopier in
                try threadCopier.copyTopLevel(
                    source: matches[index],
                    into: targetFd,
                    dstPath: targetPath,
                    followLinks: followLinks
                )
            }
        }
    }

    /// True when the persistent folder `name` exists as a folder and its owner record names this request's
    /// run and VM, made on this host since its last boot.
    private static func isReusable(
        _ name: String,
        in userFd: Int32,
        userFolder: String,
        request: StorageRequest,
        maker: ProcessIdentity
    ) -> Bool {
        var st = stat()
        guard SystemCall.value("fstatat", { fstatat(userFd, name, &st, AT_SYMLINK_NOFOLLOW) }).succeeded,
            st.st_mode & S_IFMT == S_IFDIR,
            let sidecarFd = try? Sidecar.open(for: name, in: userFd, userFolder: userFolder, create: false)
        else { return false }
        defer { SystemCall.close(sidecarFd) }
        return OwnerRecord.read(in: sidecarFd)?.matches(request, maker: maker) == true
    }

    /// Takes the lease of a folder's sidecar, or throws `.inUse` naming who holds it.
    private static func takeLease(
        in sidecarFd: Int32,
        folder: String,
        userFolder: String,
        holder: String
    ) throws
        -> StorageLease
    {
        let sidecarPath = PathUtil.join(userFolder, Sidecar.name(for: PathUtil.lastComponent(folder)))
        switch try StorageLease.take(in: sidecarFd, path: sidecarPath, holder: holder) {
        case .taken(let lease)?: return lease
        case .held(let other)?:
            throw StorageError(
                .inUse,
                path: folder,
                reason: StorageLease.inUseText(other),
                subject: "local storage folder"
            )
        case nil:
            throw StorageError(.inUse, path: folder, reason: "has no lease file", subject: "local storage folder")
        }
    }

    /// Reserves `<base>-<n>` for the first free `n`: creating its sidecar with mkdir is atomic, so two
    /// tasks (on one host, or on several sharing the folder) never get the same name. A name whose folder
    /// exists without a sidecar (left by something else) is skipped. The new folder is leased and its
    /// owner record written before the name is returned.
    static func reserveName(
        base: String,
        in userFd: Int32,
        userFolder: String,
        holder: String = "a task",
        record: OwnerRecord
    ) throws -> (name: String, lease: StorageLease) {
        var n = 1
        while true {
            let name = "\(base)-\(n)"
            n += 1
            let sidecar = Sidecar.name(for: name)
            let sidecarPath = PathUtil.join(userFolder, sidecar)
            let made = SystemCall.value("mkdirat") { mkdirat(userFd, sidecar, 0o700) }
            if made.failed(with: EEXIST) { continue }
            try made.get("created", path: sidecarPath, subject: "storage bookkeeping folder")
            var st = stat()
            if SystemCall.value("fstatat", { fstatat(userFd, name, &st, AT_SYMLINK_NOFOLLOW) }).succeeded {
                _ = SystemCall.value("unlinkat") { unlinkat(userFd, sidecar, AT_REMOVEDIR) }
                continue
            }
            do {
                let sidecarFd = try Sidecar.open(for: name, in: userFd, userFolder: userFolder, create: false)
                defer { SystemCall.close(sidecarFd) }
                let lease = try takeLease(
                    in: sidecarFd,
                    folder: PathUtil.join(userFolder, name),
                    userFolder: userFolder,
                    holder: holder
                )
                try record.write(in: sidecarFd, path: sidecarPath)
                return (name, lease)
            } catch {
                var ignored: [String: String] = [:]
                TreeRemover.remove(sidecar, in: userFd, path: sidecarPath, failures: &ignored)
                throw error
            }
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
        var fd = try SystemCall.value("dup") { dup(parent) }.get("opened", path: path, subject: "mirror target")
        for component in PathUtil.components(normalized) {
            let c = String(component)
            let made = SystemCall.value("mkdirat") { mkdirat(fd, c, 0o777) }
            if let failure = made.failure, failure.errno != EEXIST {
                SystemCall.close(fd)
                throw failure.storageError("created", path: path, subject: "mirror target")
            }
            let next = SystemCall.value("openat") { openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            SystemCall.close(fd)
            fd = try next.get("opened (a file or link is in the way?)", path: path, subject: "mirror target")
        }
        return fd
    }

    /// Throws unless `path` is a directory (following links, as chdir will).
    private static func requireDirectory(_ path: String, subject: String, shownAs: String? = nil) throws {
        var st = stat()
        if let failure = SystemCall.value("stat", { stat(path, &st) }).failure {
            throw StorageError(
                .missingSource,
                path: shownAs ?? path,
                reason: "does not exist: \(failure.text)",
                subject: subject,
                call: "stat",
                errnoCode: failure.errno
            )
        }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            throw StorageError(.missingSource, path: shownAs ?? path, reason: "is not a directory", subject: subject)
        }
    }
}
