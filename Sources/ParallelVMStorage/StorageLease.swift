import Glibc

/// A claim on a storage folder that says "in use": an exclusive `flock` on its sidecar's lease file.
///
/// The kernel drops the lock when the descriptor is closed, which happens when the lease is released or
/// when the holding process dies, however it dies; so a folder is never "in use" by a process that is gone.
/// `flock` locks belong to an open file description: a second open of the file (in this process or
/// another) cannot take the lock while this one holds it.
package final class StorageLease: Sendable, Hashable {
    /// The locked lease file; closed (and so unlocked) when the lease is released.
    private let fd: Int32

    private init(fd: Int32) { self.fd = fd }

    deinit { SystemCall.close(fd) }

    /// What taking a lease found.
    enum Attempt {
        /// The lease is ours now.
        case taken(StorageLease)
        /// Someone holds it; their description of themselves (possibly empty).
        case held(by: String)
    }

    /// Takes the lease of the sidecar open as `sidecarFd` without waiting, writing `holder` into the
    /// lease file so that whoever finds it held can say by whom.
    /// - Parameter create: false only looks at an existing lease file (a missing one counts as free).
    static func take(in sidecarFd: Int32, path: String, holder: String?, create: Bool = true) throws -> Attempt? {
        let leasePath = PathUtil.join(path, Sidecar.leaseName)
        let opened = SystemCall.value("openat") {
            openat(sidecarFd, Sidecar.leaseName, O_RDWR | (create ? O_CREAT : 0) | O_NOFOLLOW | O_CLOEXEC, 0o600)
        }
        if !create && opened.failed(with: ENOENT) { return nil }
        let fd = try opened.get("opened", path: leasePath, subject: "storage lease")
        let locked = SystemCall.value("flock") { flock(fd, LOCK_EX | LOCK_NB) }
        if locked.failed(with: EWOULDBLOCK) {
            defer { SystemCall.close(fd) }
            return .held(by: contents(of: fd))
        }
        if let failure = locked.failure {
            SystemCall.close(fd)
            throw failure.storageError("locked", path: leasePath, subject: "storage lease")
        }
        let lease = StorageLease(fd: fd)
        if let holder {
            let bytes = Array(holder.utf8)
            _ = try SystemCall.value("ftruncate") { ftruncate(fd, 0) }
                .get("written", path: leasePath, subject: "storage lease")
            _ = try SystemCall.value("pwrite") { bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } }
                .get("written", path: leasePath, subject: "storage lease")
        }
        return .taken(lease)
    }

    /// The holder's description in a lease file.
    private static func contents(of fd: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 1024)
        let count = buffer.count
        guard case .success(let n) = SystemCall.value("pread", { pread(fd, &buffer, count, 0) }) else { return "" }
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }

    /// "in use by task 3 of run host:42 (VM 0) on host h", or a plainer text when the holder said nothing.
    static func inUseText(_ holder: String) -> String {
        holder.isEmpty ? "is in use by a running process (its lease is held)" : "is in use by \(holder)"
    }

    package static func == (lhs: StorageLease, rhs: StorageLease) -> Bool { lhs === rhs }
    package func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

/// The persistent folders one worker process keeps between tasks, and their leases.
///
/// A persistent folder is leased for as long as the worker process that made it lives (or until the
/// worker clears its storage), so no other process's clearing or stale removal takes it away.
package struct PersistentFolders {
    /// VM keys this process has served: a persistent folder is reused only from the second task of a VM on.
    var served: Set<String> = []
    /// Lease of each persistent folder this process made, by folder name.
    var leases: [String: StorageLease] = [:]

    package init() {}

    /// True before the first persistent folder.
    package var isEmpty: Bool { served.isEmpty && leases.isEmpty }

    /// Forgets every VM served and releases every lease (before clearing this process's storage).
    package mutating func releaseAll() {
        served.removeAll()
        leases.removeAll()
    }
}
