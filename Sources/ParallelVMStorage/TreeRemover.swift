import Glibc

/// What `clearLocalStorage` (or a task's cleanup) removed on one host and what it could not remove.
public struct ClearReport: Codable, Sendable, Hashable {
    /// The host the report comes from.
    public var host: String
    /// Paths removed: the entries of the per-user folder, then the per-user folder itself.
    public var removed: [String]
    /// Paths that were not removed, with the reason: an errno text, "is a mount point", "is in use by ...".
    public var failures: [String: String]

    /// Creates a report.
    public init(host: String, removed: [String] = [], failures: [String: String] = [:]) {
        self.host = host
        self.removed = removed
        self.failures = failures
    }
}

/// `statx(2)`, looked up at run time like `copy_file_range`: Swift's Glibc module does not import it.
private let statxFunction:
    (@convention(c) (Int32, UnsafePointer<CChar>, Int32, UInt32, UnsafeMutableRawPointer) -> Int32)? = {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "statx") else { return nil }
        return unsafeBitCast(
            symbol,
            to: (@convention(c) (Int32, UnsafePointer<CChar>, Int32, UInt32, UnsafeMutableRawPointer) -> Int32).self
        )
    }()

/// Where a folder lives: its device and, where the kernel says, its mount. A bind mount of a folder
/// from the same filesystem has the same device as its parent but another mount ID.
struct MountIdentity: Equatable {
    var device: UInt64
    var mountID: UInt64?

    /// The identity of the open folder `fd`; nil when even `fstat` fails.
    init?(of fd: Int32) {
        var st = stat()
        guard SystemCall.value("fstat", { fstat(fd, &st) }).succeeded else { return nil }
        device = UInt64(st.st_dev)
        mountID = Self.mountID(of: fd)
    }

    /// `stx_mnt_id` (Linux 5.8 and later). The buffer stands for `struct statx` (256 bytes), whose layout
    /// is fixed by the kernel ABI: `stx_mask` at 0, `stx_mnt_id` at 144.
    private static func mountID(of fd: Int32) -> UInt64? {
        guard let statxFunction else { return nil }
        let statxMountID: UInt32 = 0x1000  // STATX_MNT_ID
        let atEmptyPath: Int32 = 0x1000  // AT_EMPTY_PATH, behind _GNU_SOURCE
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 256, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: 256)
        let done = SystemCall.value("statx") { statxFunction(fd, "", atEmptyPath, statxMountID, buffer) }
        guard done.succeeded, buffer.load(fromByteOffset: 0, as: UInt32.self) & statxMountID != 0 else { return nil }
        return buffer.load(fromByteOffset: 144, as: UInt64.self)
    }

    /// True when `child` is on another mount than this folder, its parent.
    func isBoundary(to child: MountIdentity) -> Bool {
        if device != child.device { return true }
        if let mountID, let other = child.mountID { return mountID != other }
        return false
    }
}

/// Removes folder trees with fd-relative calls that never follow a symbolic link and never cross into
/// another filesystem.
///
/// Each level is opened with `O_NOFOLLOW | O_DIRECTORY` relative to its already-open parent, and a
/// symlink is removed with `unlinkat`, so a link inside local storage pointing at `/home` removes the
/// link and leaves `/home` alone, even if someone swaps a folder for a link while we work. A folder that
/// is a mount point (another device, or another mount of the same one, as a bind mount is) is left alone
/// with everything in it and reported, like `rm --one-file-system`.
enum TreeRemover {
    /// The reason given for a mount point that was not entered.
    static let mountPointReason = "is a mount point (another filesystem is mounted there); left alone"

    /// Removes `name` (file, link or whole folder) inside the open folder `parent`.
    /// - Returns: true when it no longer exists; failures are recorded under their full path.
    @discardableResult
    static func remove(_ name: String, in parent: Int32, path: String, failures: inout [String: String]) -> Bool {
        guard let parentMount = MountIdentity(of: parent) else {
            failures[path] = "its folder could not be examined"
            return false
        }
        return name.withCString {
            remove($0, in: parent, parentMount: parentMount, path: path, isDirectory: false, failures: &failures)
        }
    }

    /// Removes `name` inside `parent`; `isDirectory` is a hint from `d_type` that skips a failing unlink.
    private static func remove(
        _ name: UnsafePointer<CChar>,
        in parent: Int32,
        parentMount: MountIdentity,
        path: @autoclosure () -> String,
        isDirectory: Bool,
        failures: inout [String: String]
    ) -> Bool {
        if !isDirectory {
            let unlinked = SystemCall.value("unlinkat") { unlinkat(parent, name, 0) }
            guard let failure = unlinked.failure else { return true }
            if failure.errno == ENOENT { return true }
            if failure.errno == EBUSY {
                failures[path()] = mountPointReason  // a file bind-mounted over a file
                return false
            }
            guard failure.errno == EISDIR || failure.errno == EPERM else {
                failures[path()] = failure.text
                return false
            }
        }
        let flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
        var opened = SystemCall.value("openat") { openat(parent, name, flags) }
        if opened.failed(with: EACCES) {
            // A copied folder may have had no read permission; it is ours, so grant it and retry.
            // AT_SYMLINK_NOFOLLOW makes this fail (rather than follow) if it became a link.
            if SystemCall.value("fchmodat", { fchmodat(parent, name, 0o700, AT_SYMLINK_NOFOLLOW) }).succeeded {
                opened = SystemCall.value("openat") { openat(parent, name, flags) }
            }
        }
        let fd: Int32
        switch opened {
        case .success(let value): fd = value
        case .failure(let failure):
            if failure.errno == ENOENT { return true }
            if failure.errno == ENOTDIR || failure.errno == ELOOP {
                // Not a folder after all (it was swapped): unlink whatever it is now.
                if SystemCall.value("unlinkat", { unlinkat(parent, name, 0) }).succeeded { return true }
            }
            failures[path()] = failure.text
            return false
        }
        guard let mount = MountIdentity(of: fd), !parentMount.isBoundary(to: mount) else {
            SystemCall.close(fd)
            failures[path()] = mountPointReason
            return false
        }
        var st = stat()
        if SystemCall.value("fstat", { fstat(fd, &st) }).succeeded, st.st_mode & 0o700 != 0o700 {
            // Read-only copies (mode 0555) would refuse to let us unlink their entries.
            _ = SystemCall.value("fchmod") { fchmod(fd, (st.st_mode & 0o7777) | 0o700) }
        }
        let folderPath = path()
        var ok = true
        do throws(SystemCallError) {
            let stream = try DirectoryStream(taking: fd)
            while let entry = try stream.next() {
                if !remove(
                    entry.name,
                    in: stream.fd,
                    parentMount: mount,
                    path: PathUtil.join(folderPath, String(cString: entry.name)),
                    isDirectory: entry.type == UInt8(DT_DIR),
                    failures: &failures
                ) {
                    ok = false
                }
            }
        } catch {
            failures[folderPath] = error.text
            return false
        }
        guard ok else { return false }
        let removed = SystemCall.value("unlinkat") { unlinkat(parent, name, AT_REMOVEDIR) }
        if let failure = removed.failure, failure.errno != ENOENT {
            failures[folderPath] = failure.errno == EBUSY ? mountPointReason : failure.text
            return false
        }
        return true
    }
}
