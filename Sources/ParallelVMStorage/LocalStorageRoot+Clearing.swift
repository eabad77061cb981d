import Glibc

/// The entries of the per-user folder that belong to one storage folder: the folder itself, its
/// staging folders and its sidecar, removed together and in that order (the sidecar, which holds the
/// lease, last).
struct FolderGroup: Equatable {
    /// The storage folder's name.
    var name: String
    /// Existing entries other than the sidecar (the folder, staging folders, in name order).
    var entries: [String]
    /// Whether the sidecar `.<name>.parallelvm` exists.
    var hasSidecar: Bool

    /// Groups the names found in the per-user folder by the storage folder they belong to.
    static func grouping(_ names: [String]) -> [FolderGroup] {
        var groups: [String: FolderGroup] = [:]
        for entry in names.sorted() {
            let name = Sidecar.folderName(ofEntry: entry)
            var group = groups[name] ?? FolderGroup(name: name, entries: [], hasSidecar: false)
            if entry == Sidecar.name(for: name) {
                group.hasSidecar = true
            } else if entry == name {
                group.entries.insert(entry, at: 0)
            } else {
                group.entries.append(entry)
            }
            groups[name] = group
        }
        return groups.keys.sorted().map { groups[$0]! }
    }
}

extension LocalStorageRoot {
    /// Removes this user's local storage on this host: every entry of the per-user folder (task
    /// folders, persistent folders, leftover staging folders, their bookkeeping) and the folder itself
    /// when it is empty then, and nothing else.
    ///
    /// Never removed, and reported in `failures` instead: a folder in use (its lease is held by a
    /// running task or a live worker's persistent folder; the report says by whom) and a mount point
    /// inside (with everything below it). Links are removed, never followed, and nothing outside
    /// `userFolder` is touched.
    ///
    /// Ranks of one host may clear at the same time, each finding the folders the others are removing in
    /// use; the per-user folder is therefore tried last by each, and the last to finish removes it.
    /// - Parameter beforeRemovingUserFolder: runs after the groups are removed and before the per-user
    ///   folder is; tests use it to stand for another process of this host finishing its part meanwhile.
    package func clear(beforeRemovingUserFolder: () -> Void = {}) -> ClearReport {
        removeGroups(beforeRemovingUserFolder: beforeRemovingUserFolder) { _, _ in true }
    }

    /// Removes the folders (and staging folders) in this user's storage whose maker is provably gone,
    /// and reports what was removed. Meant for the start of a VM, on each host.
    ///
    /// A folder is removed only when its owner record was made on this host (`host`) and the maker ran
    /// before the last reboot (another boot ID), or its PID is free, or the PID now belongs to a process
    /// that started at another time. Folders whose record is missing, malformed or from another host,
    /// folders of live makers and leased folders are left alone and not reported.
    /// - Parameters: `host` and `bootID` stand for this host's; tests change them.
    package func removeStale(
        host: String = PathUtil.hostName(),
        bootID: String = SpawnerIdentity.current().bootID
    ) -> ClearReport {
        var report = removeGroups(removingUserFolder: false) { group, sidecarFd in
            guard let sidecarFd, let record = OwnerRecord.read(in: sidecarFd) else { return false }
            return record.makerGone(thisHost: host, bootID: bootID) != nil
        }
        // A folder found in use here is not stale; that is not a failure.
        report.failures = report.failures.filter { !$0.value.hasPrefix("is in use") }
        return report
    }

    /// Removes the groups `shouldRemove` accepts, each only while holding its lease.
    private func removeGroups(
        removingUserFolder: Bool = true,
        beforeRemovingUserFolder: () -> Void = {},
        _ shouldRemove: (FolderGroup, Int32?) -> Bool
    ) -> ClearReport {
        var report = ClearReport(host: PathUtil.hostName())
        let rootOpened = SystemCall.value("open") { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard case .success(let rootFd) = rootOpened else {
            if let failure = rootOpened.failure, failure.errno != ENOENT { report.failures[path] = failure.text }
            return report
        }
        defer { SystemCall.close(rootFd) }
        let userOpened = SystemCall.value("openat") {
            openat(rootFd, userFolderName, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        }
        let userFd: Int32
        switch userOpened {
        case .success(let fd): userFd = fd
        case .failure(let failure):
            if failure.errno == ENOENT { return report }
            if removingUserFolder && (failure.errno == ENOTDIR || failure.errno == ELOOP) {
                // Something other than our folder (e.g. a planted symlink) has its name: remove that name only.
                let unlinked = SystemCall.value("unlinkat") { unlinkat(rootFd, userFolderName, 0) }
                if let failure = unlinked.failure {
                    report.failures[userFolder] = failure.text
                } else {
                    report.removed.append(userFolder)
                }
                return report
            }
            report.failures[userFolder] = failure.text
            return report
        }
        defer { SystemCall.close(userFd) }
        if let rootMount = MountIdentity(of: rootFd), let userMount = MountIdentity(of: userFd),
            rootMount.isBoundary(to: userMount)
        {
            report.failures[userFolder] = TreeRemover.mountPointReason
            return report
        }
        let names: [String]
        do throws(SystemCallError) {
            let listing = try SystemCall.value("dup") { dup(userFd) }.get()
            names = try DirectoryStream(taking: listing).names()
        } catch {
            report.failures[userFolder] = error.text
            return report
        }
        for group in FolderGroup.grouping(names) {
            removeGroup(group, in: userFd, report: &report, shouldRemove)
        }
        guard removingUserFolder else { return report }
        beforeRemovingUserFolder()
        // Tried even when something stayed: what stayed may have been removed meanwhile by the process
        // that was using it. If the folder is still not empty, the failures above already say why.
        let removed = SystemCall.value("unlinkat") { unlinkat(rootFd, userFolderName, AT_REMOVEDIR) }
        guard let failure = removed.failure, failure.errno != ENOENT else {
            report.removed.append(userFolder)
            return report
        }
        let notEmpty = failure.errno == ENOTEMPTY || failure.errno == EEXIST
        if !(notEmpty && !report.failures.isEmpty) {
            report.failures[userFolder] = failure.errno == EBUSY ? TreeRemover.mountPointReason : failure.text
        }
        return report
    }

    /// Removes one group when it is not leased and `shouldRemove` agrees; the sidecar goes last, and only
    /// when everything else went.
    private func removeGroup(
        _ group: FolderGroup,
        in userFd: Int32,
        report: inout ClearReport,
        _ shouldRemove: (FolderGroup, Int32?) -> Bool
    ) {
        let folderPath = PathUtil.join(userFolder, group.name)
        var sidecarFd: Int32?
        if group.hasSidecar {
            let opened = SystemCall.value("openat") {
                openat(userFd, Sidecar.name(for: group.name), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }
            if case .success(let fd) = opened { sidecarFd = fd }
        }
        defer { if let sidecarFd { SystemCall.close(sidecarFd) } }
        guard shouldRemove(group, sidecarFd) else { return }
        var lease: StorageLease?
        if let sidecarFd {
            let sidecarPath = PathUtil.join(userFolder, Sidecar.name(for: group.name))
            do {
                switch try StorageLease.take(in: sidecarFd, path: sidecarPath, holder: nil, create: false) {
                case .held(let holder)?:
                    report.failures[folderPath] = StorageLease.inUseText(holder)
                    return
                case .taken(let taken)?: lease = taken
                case nil: break
                }
            } catch {
                report.failures[folderPath] = "its lease could not be checked: \(error)"
                return
            }
        }
        var all = true
        for entry in group.entries {
            let entryPath = PathUtil.join(userFolder, entry)
            if TreeRemover.remove(entry, in: userFd, path: entryPath, failures: &report.failures) {
                report.removed.append(entryPath)
            } else {
                all = false
            }
        }
        if all && group.hasSidecar {
            let name = Sidecar.name(for: group.name)
            let sidecarPath = PathUtil.join(userFolder, name)
            if TreeRemover.remove(name, in: userFd, path: sidecarPath, failures: &report.failures) {
                report.removed.append(sidecarPath)
            }
        }
        withExtendedLifetime(lease) {}
    }
}

/// Same as `root.clear()`.
func clearLocalStorage(root: LocalStorageRoot) -> ClearReport { root.clear() }
