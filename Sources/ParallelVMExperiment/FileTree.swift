import Glibc
import ParallelVMStorage

/// Offset of `d_name` in `struct dirent`.
private let direntNameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!

/// fd-relative file tree operations that never follow a symbolic link: listing, copying and removing.
///
/// Errors are `SystemCallError`s with the relative path they concern; the caller turns them into an
/// `ExperimentError` with the full path.
enum FileTree {
    struct Failure: Error {
        let error: SystemCallError
        /// Path of the entry, relative to the folder the operation started in.
        let relative: String
        /// What was being done: "read", "copied", "removed".
        let operation: String
    }

    /// What `fstatat` without following links says an entry is.
    enum Kind {
        case file, directory, symlink, other
    }

    static func kind(of mode: mode_t) -> Kind {
        switch mode & S_IFMT {
        case S_IFREG: return .file
        case S_IFDIR: return .directory
        case S_IFLNK: return .symlink
        default: return .other
        }
    }

    /// `fstatat` without following a link.
    static func status(_ name: String, in dirFd: Int32) -> Result<stat, SystemCallError> {
        var st = stat()
        return SystemCall.value("fstatat") { fstatat(dirFd, name, &st, AT_SYMLINK_NOFOLLOW) }.map { _ in st }
    }

    /// Opens a folder entry as a folder, refusing a symbolic link.
    static func openDirectory(_ name: String, in dirFd: Int32) -> Result<Int32, SystemCallError> {
        SystemCall.value("openat") { openat(dirFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
    }

    /// The names in an open folder (other than `.` and `..`), sorted; `dirFd` stays open.
    static func names(in dirFd: Int32) -> Result<[String], SystemCallError> {
        let copy: Result<Int32, SystemCallError> = SystemCall.value("dup") { fcntl(dirFd, F_DUPFD_CLOEXEC, 0) }
        guard case .success(let fd) = copy else { return copy.map { _ in [] } }
        guard let dir = fdopendir(fd) else {
            let failure = SystemCallError(call: "fdopendir", errno: errno)
            SystemCall.close(fd)
            return .failure(failure)
        }
        defer { closedir(dir) }
        rewinddir(dir)
        var names: [String] = []
        while true {
            errno = 0
            guard let entry = readdir(dir) else {
                if errno != 0 { return .failure(SystemCallError(call: "readdir", errno: errno)) }
                break
            }
            let name = String(
                cString: UnsafeRawPointer(entry).advanced(by: direntNameOffset).assumingMemoryBound(to: CChar.self)
            )
            if name != "." && name != ".." { names.append(name) }
        }
        return .success(names.sorted())
    }

    // MARK: - Copying

    /// Copies the entry `name` of `srcDir` into `dstDir` under the same name: a file with its mode and
    /// times, a folder as a tree, a symbolic link as a link with the same text (never followed). Every
    /// file and folder made is `fsync`ed, so a later rename publishes complete data.
    static func copy(_ name: String, from srcDir: Int32, to dstDir: Int32, relative: String) throws(Failure) {
        let st: stat
        switch status(name, in: srcDir) {
        case .success(let value): st = value
        case .failure(let error): throw Failure(error: error, relative: relative, operation: "read")
        }
        switch kind(of: st.st_mode) {
        case .file: try copyFile(name, from: srcDir, to: dstDir, status: st, relative: relative)
        case .directory:
            let src = try check(openDirectory(name, in: srcDir), relative, "read")
            defer { SystemCall.close(src) }
            try check(SystemCall.value("mkdirat") { mkdirat(dstDir, name, 0o700) }, relative, "copied")
            let dst = try check(openDirectory(name, in: dstDir), relative, "copied")
            defer { SystemCall.close(dst) }
            for child in try check(names(in: src), relative, "read") {
                try copy(child, from: src, to: dst, relative: relative + "/" + child)
            }
            try check(SystemCall.value("fchmod") { fchmod(dst, st.st_mode & 0o7777) }, relative, "copied")
            try check(SystemCall.value("fsync") { fsync(dst) }, relative, "copied")
        case .symlink:
            var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let size = target.count - 1
            let length = try check(
                SystemCall.value("readlinkat") { readlinkat(srcDir, name, &target, size) },
                relative,
                "read"
            )
            target[length] = 0
            try check(SystemCall.value("symlinkat") { symlinkat(target, dstDir, name) }, relative, "copied")
        case .other:
            throw Failure(
                error: SystemCallError(call: "fstatat", errno: EINVAL),
                relative: relative,
                operation: "copied (it is neither a file, a folder nor a symbolic link)"
            )
        }
    }

    private static func copyFile(
        _ name: String,
        from srcDir: Int32,
        to dstDir: Int32,
        status st: stat,
        relative: String
    ) throws(Failure) {
        let src = try check(
            SystemCall.value("openat") { openat(srcDir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) },
            relative,
            "read"
        )
        defer { SystemCall.close(src) }
        let dst = try check(
            SystemCall.value("openat") {
                openat(dstDir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            },
            relative,
            "copied"
        )
        defer { SystemCall.close(dst) }
        let size = 1 << 20
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n = try check(SystemCall.value("read") { read(src, buffer, size) }, relative, "read")
            if n == 0 { break }
            try check(SystemCall.writeAll(dst, UnsafeRawBufferPointer(start: buffer, count: n)), relative, "copied")
        }
        try check(SystemCall.value("fchmod") { fchmod(dst, st.st_mode & 0o7777) }, relative, "copied")
        var times = [st.st_atim, st.st_mtim]
        try check(SystemCall.value("futimens") { futimens(dst, &times) }, relative, "copied")
        try check(SystemCall.value("fsync") { fsync(dst) }, relative, "copied")
    }

    // MARK: - Removing

    /// Removes the entry `name` of `dirFd` and, for a folder, everything in it; links are removed, never
    /// followed. A missing entry is not an error.
    static func remove(_ name: String, in dirFd: Int32, relative: String) throws(Failure) {
        let st: stat
        switch status(name, in: dirFd) {
        case .success(let value): st = value
        case .failure(let error) where error.errno == ENOENT: return
        case .failure(let error): throw Failure(error: error, relative: relative, operation: "removed")
        }
        if kind(of: st.st_mode) == .directory {
            let fd = try check(openDirectory(name, in: dirFd), relative, "removed")
            defer { SystemCall.close(fd) }
            for child in try check(names(in: fd), relative, "removed") {
                try remove(child, in: fd, relative: relative + "/" + child)
            }
            let removed = SystemCall.value("unlinkat") { unlinkat(dirFd, name, AT_REMOVEDIR) }
            if !removed.failed(with: ENOENT) { try check(removed, relative, "removed") }
        } else {
            let removed = SystemCall.value("unlinkat") { unlinkat(dirFd, name, 0) }
            if !removed.failed(with: ENOENT) { try check(removed, relative, "removed") }
        }
    }

    @discardableResult
    private static func check<T>(
        _ result: Result<T, SystemCallError>,
        _ relative: String,
        _ operation: String
    ) throws(Failure) -> T {
        switch result {
        case .success(let value): return value
        case .failure(let error): throw Failure(error: error, relative: relative, operation: operation)
        }
    }
}

/// Glob patterns matched against a folder's entries with `fnmatch(3)`, one component at a time, through
/// fd-relative calls that never enter a symbolic link, so that a pattern cannot reach outside the folder.
///
/// A component is a `fnmatch` pattern (`*`, `?`, `[...]`; a leading `.` must be matched literally), and
/// `**` matches any number of folders (zero included).
enum Glob {
    /// The pattern's components, or nil when it is empty, absolute or climbs with `..`.
    static func components(_ pattern: String) -> [String]? {
        guard !pattern.isEmpty, !pattern.hasPrefix("/") else { return nil }
        let parts = pattern.split(separator: "/", omittingEmptySubsequences: true).map(String.init).filter { $0 != "." }
        guard !parts.isEmpty, !parts.contains("..") else { return nil }
        return parts
    }

    static func hasWildcard(_ component: String) -> Bool {
        component.contains { $0 == "*" || $0 == "?" || $0 == "[" }
    }

    /// The paths (relative to `dirFd`'s folder) that `components` matches, sorted, without any path that
    /// lies inside another match.
    static func matches(_ components: [String], in dirFd: Int32) -> Result<[String], SystemCallError> {
        var found: Set<String> = []
        if let failure = walk(dirFd, prefix: "", components[...], &found) { return .failure(failure) }
        let sorted = found.sorted()
        var kept: [String] = []
        for path in sorted where !kept.contains(where: { path.hasPrefix($0 + "/") }) { kept.append(path) }
        return .success(kept)
    }

    private static func walk(
        _ dirFd: Int32,
        prefix: String,
        _ components: ArraySlice<String>,
        _ found: inout Set<String>
    ) -> SystemCallError? {
        guard let component = components.first else {
            if !prefix.isEmpty { found.insert(prefix) }
            return nil
        }
        let rest = components.dropFirst()
        func path(_ name: String) -> String { prefix.isEmpty ? name : prefix + "/" + name }
        /// Goes on with `rest` inside the entry `name` (a folder), or records it when nothing is left.
        func step(_ name: String, _ rest: ArraySlice<String>) -> SystemCallError? {
            if rest.isEmpty {
                found.insert(path(name))
                return nil
            }
            guard case .success(let st) = FileTree.status(name, in: dirFd), FileTree.kind(of: st.st_mode) == .directory
            else { return nil }
            switch FileTree.openDirectory(name, in: dirFd) {
            case .success(let fd):
                defer { SystemCall.close(fd) }
                return walk(fd, prefix: path(name), rest, &found)
            case .failure(let failure): return failure
            }
        }
        if component == "**" {
            if let failure = walk(dirFd, prefix: prefix, rest, &found) { return failure }
            let names: [String]
            switch FileTree.names(in: dirFd) {
            case .success(let value): names = value
            case .failure(let failure): return failure
            }
            for name in names where !name.hasPrefix(".") {
                if rest.isEmpty {
                    found.insert(path(name))
                } else if let failure = step(name, components) {
                    return failure
                }
            }
            return nil
        }
        if !hasWildcard(component) {
            guard FileTree.status(component, in: dirFd).failure == nil else { return nil }
            return step(component, rest)
        }
        let names: [String]
        switch FileTree.names(in: dirFd) {
        case .success(let value): names = value
        case .failure(let failure): return failure
        }
        for name in names where fnmatch(component, name, FNM_PERIOD) == 0 {
            if let failure = step(name, rest) { return failure }
        }
        return nil
    }
}
