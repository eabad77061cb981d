import Foundation
import Glibc

/// What `clearLocalStorage` (or a task's cleanup) removed on one host and what it could not remove.
public struct ClearReport: Codable, Sendable, Hashable {
    /// The host the report comes from.
    public var host: String
    /// Paths removed: the entries of the per-user folder, then the per-user folder itself.
    public var removed: [String]
    /// Paths that could not be removed, with the reason (errno text).
    public var failures: [String: String]

    /// Creates a report.
    public init(host: String, removed: [String] = [], failures: [String: String] = [:]) {
        self.host = host
        self.removed = removed
        self.failures = failures
    }
}

/// Removes folder trees with fd-relative calls that never follow a symbolic link.
///
/// Each level is opened with `O_NOFOLLOW | O_DIRECTORY` relative to its already-open parent, and a
/// symlink is removed with `unlinkat`, so a link inside local storage pointing at `/home` removes the
/// link and leaves `/home` alone, even if someone swaps a folder for a link while we work.
enum TreeRemover {
    /// Removes `name` (file, link or whole folder) inside the open folder `parent`.
    /// - Returns: true when it no longer exists; failures are recorded under their full path.
    @discardableResult
    static func remove(_ name: String, in parent: Int32, path: String, failures: inout [String: String]) -> Bool {
        name.withCString { remove($0, in: parent, path: path, isDirectory: false, failures: &failures) }
    }

    /// Removes `name` inside `parent`; `isDirectory` is a hint from `d_type` that skips a failing unlink.
    private static func remove(
        _ name: UnsafePointer<CChar>,
        in parent: Int32,
        path: @autoclosure () -> String,
        isDirectory: Bool,
        failures: inout [String: String]
    ) -> Bool {
        if !isDirectory {
            if unlinkat(parent, name, 0) == 0 { return true }
            let err = errno
            if err == ENOENT { return true }
            guard err == EISDIR || err == EPERM else {
                failures[path()] = errnoText(err)
                return false
            }
        }
        var fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 && errno == EACCES {
            // A copied folder may have had no read permission; it is ours, so grant it and retry.
            // AT_SYMLINK_NOFOLLOW makes this fail (rather than follow) if it became a link.
            if fchmodat(parent, name, 0o700, AT_SYMLINK_NOFOLLOW) == 0 {
                fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }
        }
        guard fd >= 0 else {
            let err = errno
            if err == ENOENT { return true }
            if err == ENOTDIR || err == ELOOP {
                // Not a folder after all (it was swapped): unlink whatever it is now.
                if unlinkat(parent, name, 0) == 0 { return true }
            }
            failures[path()] = errnoText(err)
            return false
        }
        var st = stat()
        if fstat(fd, &st) == 0, st.st_mode & 0o700 != 0o700 {
            // Read-only copies (mode 0555) would refuse to let us unlink their entries.
            fchmod(fd, (st.st_mode & 0o7777) | 0o700)
        }
        guard let dir = fdopendir(fd) else {
            let err = errno
            close(fd)
            failures[path()] = errnoText(err)
            return false
        }
        let folderPath = path()
        let dfd = dirfd(dir)
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        var ok = true
        while true {
            errno = 0
            guard let entry = readdir(dir) else {
                if errno != 0 {
                    failures[folderPath] = errnoText(errno)
                    ok = false
                }
                break
            }
            let child = UnsafeRawPointer(entry).advanced(by: nameOffset).assumingMemoryBound(to: CChar.self)
            if child[0] == 0x2E && (child[1] == 0 || (child[1] == 0x2E && child[2] == 0)) { continue }
            let childIsDir = entry.pointee.d_type == UInt8(DT_DIR)
            if !remove(
                child,
                in: dfd,
                path: PathUtil.join(folderPath, String(cString: child)),
                isDirectory: childIsDir,
                failures: &failures
            ) {
                ok = false
            }
        }
        closedir(dir)
        guard ok else { return false }
        if unlinkat(parent, name, AT_REMOVEDIR) != 0 && errno != ENOENT {
            failures[folderPath] = errnoText(errno)
            return false
        }
        return true
    }
}

/// Removes this user's local storage on this host: every entry of the per-user folder (task
/// folders, persistent folders, leftover staging folders) and the folder itself, nothing else.
///
/// Links are removed, never followed, and nothing outside `root.path` is touched. Run it only when
/// no task of this user is running on the host, since their folders go too.
func clearLocalStorage(root: LocalStorageRoot) -> ClearReport {
    var report = ClearReport(host: PathUtil.hostName())
    let rootFd = open(root.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard rootFd >= 0 else {
        let err = errno
        if err != ENOENT { report.failures[root.path] = errnoText(err) }
        return report
    }
    defer { close(rootFd) }
    let userFd = openat(rootFd, root.userFolderName, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    guard userFd >= 0 else {
        let err = errno
        if err == ENOENT { return report }
        if err == ENOTDIR || err == ELOOP {
            // Something other than our folder (e.g. a planted symlink) has its name: remove that name only.
            if unlinkat(rootFd, root.userFolderName, 0) == 0 {
                report.removed.append(root.userFolder)
            } else {
                report.failures[root.userFolder] = errnoText(errno)
            }
            return report
        }
        report.failures[root.userFolder] = errnoText(err)
        return report
    }
    // List the top-level entries first so the report names what was there.
    var names: [String] = []
    if let dir = fdopendir(dup(userFd)) {
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        while let entry = readdir(dir) {
            let name = String(
                cString: UnsafeRawPointer(entry).advanced(by: nameOffset).assumingMemoryBound(to: CChar.self)
            )
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(dir)
    }
    for name in names.sorted() {
        let path = PathUtil.join(root.userFolder, name)
        if TreeRemover.remove(name, in: userFd, path: path, failures: &report.failures) { report.removed.append(path) }
    }
    close(userFd)
    if report.failures.isEmpty {
        if unlinkat(rootFd, root.userFolderName, AT_REMOVEDIR) == 0 || errno == ENOENT {
            report.removed.append(root.userFolder)
        } else {
            report.failures[root.userFolder] = errnoText(errno)
        }
    }
    return report
}

extension LocalStorageRoot {
    /// Same as `clearLocalStorage(root: self)`; handy inside a type whose own `clearLocalStorage(timeout:)`
    /// method would shadow the free function.
    package func clear() -> ClearReport { clearLocalStorage(root: self) }
}
