import Glibc
import Synchronization

/// `copy_file_range(2)`, looked up at run time: Swift's Glibc module does not import it (it needs
/// `_GNU_SOURCE`), and glibc has exported it since 2.27. Nil when the C library lacks it.
private let copyFileRange:
    (
        @convention(c) (
            Int32, UnsafeMutablePointer<Int64>?, Int32, UnsafeMutablePointer<Int64>?, Int, UInt32
        ) -> Int
    )? = {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "copy_file_range") else { return nil }
        return unsafeBitCast(
            symbol,
            to: (@convention(c) (
                Int32, UnsafeMutablePointer<Int64>?, Int32, UnsafeMutablePointer<Int64>?, Int, UInt32
            ) -> Int).self
        )
    }()

/// `FICLONE` = `_IOW(0x94, 9, int)`; the C macro is not importable.
private let FICLONE: UInt = 0x4004_9409

/// The process umask, read once from /proc (reading it with umask(2) would briefly change it for
/// every thread). Nil when unknown: permissions are then always set explicitly.
private let processUmask: mode_t? = {
    guard let status = SpawnerIdentity.readSmallFile("/proc/self/status") else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("Umask:") {
        return mode_t(String(line.dropFirst(6).filter { !$0.isWhitespace }), radix: 8)
    }
    return nil
}()

/// Copies files and folder trees into a destination folder using only fd-relative system calls.
///
/// Built for many small files: names go from `readdir` straight into `openat` without String
/// conversion, entry types come from `d_type` (no `stat` per entry), file data is moved by the
/// kernel (`FICLONE` reflink, else `copy_file_range`), and paths are only spelled out for folders and
/// error messages. Symbolic links inside trees are recreated as links, never followed. One instance
/// is used by one thread; `TaskStorage` runs several on disjoint subtrees.
final class TreeCopier {
    /// Regular files copied.
    private(set) var files = 0
    /// Bytes of file data copied.
    private(set) var bytes: UInt64 = 0
    /// Called after every regular file with the running count; tests throw from it to simulate a
    /// failure half way through.
    var afterFile: ((Int) throws -> Void)?

    /// Devices for which reflinking failed with "unsupported", so it is not retried for every file.
    private var noCloneDevices: Set<UInt64> = []
    /// Whether copy_file_range is usable at all (cleared on ENOSYS and friends).
    private var rangeCopyWorks = copyFileRange != nil
    /// Read/write fallback buffer, allocated only if needed and reused for every file.
    private var buffer: UnsafeMutableRawPointer?
    private let bufferSize = 1 << 20

    init() {}
    deinit { buffer?.deallocate() }

    /// Copies one top-level mirror source into the folder `dstDir` under its own name: a directory as a
    /// tree, a file as a file. With `followLinks` (a path the user named) a symlink is followed; without
    /// (a glob's match) it is recreated as a symlink, as inside trees.
    func copyTopLevel(
        source: String,
        into dstDir: Int32,
        dstPath: String,
        followLinks: Bool = true,
        parallelism: Int = 1
    ) throws {
        var st = stat()
        let examined =
            followLinks
            ? SystemCall.value("stat") { stat(source, &st) } : SystemCall.value("lstat") { lstat(source, &st) }
        if let failure = examined.failure {
            throw StorageError(
                .missingSource,
                path: source,
                reason: "cannot be read: \(failure.text)",
                subject: "mirror source",
                call: "\(failure.call)",
                errnoCode: failure.errno
            )
        }
        let name = PathUtil.lastComponent(source)
        switch st.st_mode & S_IFMT {
        case S_IFDIR:
            let srcFd = try SystemCall.value("open") { open(source, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
                .get("opened", path: source, subject: "mirror source")
            let dstFd: Int32
            do { dstFd = try makeDirectory(name, in: dstDir, path: PathUtil.join(dstPath, name)) } catch {
                SystemCall.close(srcFd)
                throw error
            }
            try copyDirectory(
                src: srcFd,
                dst: dstFd,
                mode: st.st_mode,
                srcPath: source,
                dstPath: PathUtil.join(dstPath, name),
                parallelism: parallelism
            )
        case S_IFREG:
            let srcFd = try SystemCall.value("open") { open(source, O_RDONLY | O_CLOEXEC | O_NONBLOCK) }
                .get("opened", path: source, subject: "mirror source")
            defer { SystemCall.close(srcFd) }
            try name.withCString { try copyOpenFile(srcFd, name: $0, into: dstDir, srcPath: { source }) }
        case S_IFLNK:
            let parent = PathUtil.parent(source)
            let parentFd = try SystemCall.value("open") { open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
                .get("opened", path: parent, subject: "mirror source folder")
            defer { SystemCall.close(parentFd) }
            try name.withCString { try copySymlink($0, from: parentFd, to: dstDir, srcPath: parent) }
        default:
            throw StorageError(
                .unsupportedFileType,
                path: source,
                reason: "is not a regular file, a directory or a symbolic link",
                subject: "mirror source"
            )
        }
    }

    /// Copies the contents of the open folder `src` into the open folder `dst`, then gives `dst` the
    /// permission bits `mode`. Takes ownership of both descriptors. With `parallelism` > 1 the
    /// subfolders are shared out to that many threads, each with its own copier.
    func copyDirectory(
        src: Int32,
        dst: Int32,
        mode: mode_t,
        srcPath: String,
        dstPath: String,
        parallelism: Int = 1
    ) throws {
        defer { SystemCall.close(dst) }
        let stream: DirectoryStream
        do { stream = try DirectoryStream(taking: src) } catch {
            throw error.storageError("listed", path: srcPath, subject: "mirror source")
        }
        let srcFd = stream.fd
        var subdirectories: [String] = []  // only filled when copying in parallel
        while true {
            let next: (name: UnsafePointer<CChar>, type: UInt8)?
            do { next = try stream.next() } catch {
                throw error.storageError("listed", path: srcPath, subject: "mirror source")
            }
            guard let entry = next else { break }
            let name = entry.name
            var type = entry.type
            var st = stat()
            var haveStat = false
            if type == UInt8(DT_UNKNOWN) || type == UInt8(DT_DIR) {
                // Folders need their mode anyway; DT_UNKNOWN (some filesystems) needs a stat to decide.
                try SystemCall.value("fstatat") { fstatat(srcFd, name, &st, AT_SYMLINK_NOFOLLOW) }
                    .get("examined", path: child(srcPath, name), subject: "mirror source")
                haveStat = true
                type = direntType(st.st_mode)
            }
            switch Int32(type) {
            case Int32(DT_REG):
                let fd = try SystemCall.value("openat") {
                    openat(srcFd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
                }.get("opened", path: child(srcPath, name), subject: "mirror source")
                defer { SystemCall.close(fd) }
                try copyOpenFile(fd, name: name, into: dst, srcPath: { self.child(srcPath, name) })
            case Int32(DT_DIR):
                if parallelism > 1 {
                    subdirectories.append(String(cString: name))
                    continue
                }
                let childSrc = try SystemCall.value("openat") {
                    openat(srcFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                }.get("opened", path: child(srcPath, name), subject: "mirror source")
                let childDstPath = child(dstPath, name)
                let childDst: Int32
                do { childDst = try makeDirectory(name, in: dst, path: childDstPath) } catch {
                    SystemCall.close(childSrc)
                    throw error
                }
                if !haveStat { _ = SystemCall.value("fstat") { fstat(childSrc, &st) } }
                try copyDirectory(
                    src: childSrc,
                    dst: childDst,
                    mode: st.st_mode,
                    srcPath: child(srcPath, name),
                    dstPath: childDstPath
                )
            case Int32(DT_LNK):
                try copySymlink(name, from: srcFd, to: dst, srcPath: srcPath)
            default:
                // FIFOs, sockets and devices: opening a FIFO would block, copying a device is never meant.
                throw StorageError(
                    .unsupportedFileType,
                    path: child(srcPath, name),
                    reason: "is not a regular file, a directory or a symbolic link",
                    subject: "mirror source"
                )
            }
        }
        if !subdirectories.isEmpty {
            try copySubdirectoriesInParallel(
                subdirectories,
                srcFd: srcFd,
                dstFd: dst,
                srcPath: srcPath,
                dstPath: dstPath,
                threads: parallelism
            )
        }
        // Set the mode last so a read-only source folder does not stop us from filling the copy.
        try SystemCall.value("fchmod") { fchmod(dst, mode & 0o7777) }
            .get("given its permissions", path: dstPath, subject: "local copy")
    }

    /// Copies the named subfolders of `srcFd` into `dstFd` on several threads.
    private func copySubdirectoriesInParallel(
        _ names: [String],
        srcFd: Int32,
        dstFd: Int32,
        srcPath: String,
        dstPath: String,
        threads: Int
    ) throws {
        try runInParallel(count: names.count, threads: threads) { index, copier in
            let name = names[index]
            let childSrcPath = PathUtil.join(srcPath, name)
            let childDstPath = PathUtil.join(dstPath, name)
            let src = try SystemCall.value("openat") {
                openat(srcFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }.get("opened", path: childSrcPath, subject: "mirror source")
            var st = stat()
            _ = SystemCall.value("fstat") { fstat(src, &st) }
            let dst: Int32
            do { dst = try copier.makeDirectory(name, in: dstFd, path: childDstPath) } catch {
                SystemCall.close(src)
                throw error
            }
            try copier.copyDirectory(src: src, dst: dst, mode: st.st_mode, srcPath: childSrcPath, dstPath: childDstPath)
        }
    }
    /// Runs jobs `0..<count` on up to `threads` threads, each thread with its own copier (sharing
    /// this one's test hook), adds their counts to this copier and rethrows the first failure. Jobs
    /// not yet started when one fails are skipped. With one thread the jobs run here, in order.
    func runInParallel(count: Int, threads: Int, _ job: @escaping (Int, TreeCopier) throws -> Void) throws {
        let threads = min(threads, count)
        if threads <= 1 {
            for index in 0..<count { try job(index, self) }
            return
        }
        let shared = ParallelCopyState(count: count)
        var pthreads: [pthread_t] = []
        for _ in 0..<threads {
            let context = Unmanaged.passRetained(ParallelCopyJob(state: shared, hook: afterFile, job: job))
            var thread = pthread_t()
            let rc = pthread_create(
                &thread,
                nil,
                { raw in
                    Unmanaged<ParallelCopyJob>.fromOpaque(raw!).takeRetainedValue().run()
                    return nil
                },
                context.toOpaque()
            )
            if rc == 0 {
                pthreads.append(thread)
            } else {
                context.takeRetainedValue().run()  // no thread available: do this share here
            }
        }
        for thread in pthreads { pthread_join(thread, nil) }
        let (files, bytes, error) = shared.result()
        self.files += files
        self.bytes += bytes
        if let error { throw error }
    }

    /// Creates (or reuses, when two mirror entries overlap) a folder and opens it without following links.
    private func makeDirectory(
        _ name: UnsafePointer<CChar>,
        in parent: Int32,
        path: @autoclosure () -> String
    ) throws -> Int32 {
        let made = SystemCall.value("mkdirat") { mkdirat(parent, name, 0o700) }
        if !made.failed(with: EEXIST) { try made.get("created", path: path(), subject: "local copy") }
        return try SystemCall.value("openat") { openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            .get("opened", path: path(), subject: "local copy")
    }

    func makeDirectory(_ name: String, in parent: Int32, path: @autoclosure () -> String) throws -> Int32 {
        try name.withCString { try makeDirectory($0, in: parent, path: path()) }
    }

    /// Copies an open regular file into `dstDir` under `name`, with its permission bits.
    private func copyOpenFile(
        _ src: Int32,
        name: UnsafePointer<CChar>,
        into dstDir: Int32,
        srcPath: () -> String
    ) throws {
        var st = stat()
        try SystemCall.value("fstat") { fstat(src, &st) }.get("examined", path: srcPath(), subject: "mirror source")
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            // It was replaced by something else after it was listed.
            throw StorageError(
                .unsupportedFileType,
                path: srcPath(),
                reason: "is no longer a regular file",
                subject: "mirror source"
            )
        }
        let mode = st.st_mode & 0o7777
        let flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        var created = SystemCall.value("openat") { openat(dstDir, name, flags, mode) }
        if created.failed(with: EEXIST) {
            // Overlapping mirror entries: the later one wins, whatever type the earlier copy was.
            _ = SystemCall.value("unlinkat") { unlinkat(dstDir, name, 0) }
            created = SystemCall.value("openat") { openat(dstDir, name, flags, mode) }
        }
        let dst = try created.get("copied (creating the copy failed)", path: srcPath(), subject: "mirror source")
        defer { SystemCall.close(dst) }
        if let umask = processUmask, mode & umask == 0 {
            // open() already applied exactly these bits.
        } else {
            try SystemCall.value("fchmod") { fchmod(dst, mode) }
                .get("given its permissions", path: srcPath(), subject: "copy of mirror source")
        }
        try copyData(from: src, to: dst, size: Int64(st.st_size), device: UInt64(st.st_dev), srcPath: srcPath)
        files += 1
        bytes += UInt64(st.st_size)
        if let afterFile { try afterFile(files) }
    }

    /// Moves file data with the cheapest mechanism the filesystems support: a reflink (shares
    /// blocks, constant time), then in-kernel `copy_file_range`, then a read/write loop.
    private func copyData(from src: Int32, to dst: Int32, size: Int64, device: UInt64, srcPath: () -> String) throws {
        if size == 0 { return }
        if !noCloneDevices.contains(device) {
            guard let failure = SystemCall.value("ioctl", { ioctl(dst, FICLONE, src) }).failure else { return }
            guard isUnsupported(failure.errno) || failure.errno == EBADF || failure.errno == ETXTBSY else {
                throw failure.storageError("copied", path: srcPath(), subject: "mirror source")
            }
            noCloneDevices.insert(device)
        }
        var copied: Int64 = 0
        if rangeCopyWorks, let copyFileRange {
            while copied < size {
                let chunk = Int(min(size - copied, 1 << 30))
                switch SystemCall.value("copy_file_range", { copyFileRange(src, nil, dst, nil, chunk, 0) }) {
                case .success(0): return  // the file shrank since fstat: what is there has been copied
                case .success(let n): copied += Int64(n)
                case .failure(let failure):
                    if isUnsupported(failure.errno) && copied == 0 {
                        // Only give up on it for good when the system lacks it; EXDEV etc. may be per-pair.
                        if failure.errno == ENOSYS { rangeCopyWorks = false }
                        try readWriteCopy(from: src, to: dst, srcPath: srcPath)
                        return
                    }
                    throw failure.storageError("copied", path: srcPath(), subject: "mirror source")
                }
            }
            return
        }
        try readWriteCopy(from: src, to: dst, srcPath: srcPath)
    }

    /// Plain read/write with one reused buffer, for filesystems without in-kernel copying.
    private func readWriteCopy(from src: Int32, to dst: Int32, srcPath: () -> String) throws {
        if buffer == nil { buffer = .allocate(byteCount: bufferSize, alignment: 4096) }
        let buffer = buffer!
        let size = bufferSize
        while true {
            let n = try SystemCall.value("read") { read(src, buffer, size) }
                .get("copied", path: srcPath(), subject: "mirror source")
            if n == 0 { return }
            var written = 0
            while written < n {
                let offset = written
                written += try SystemCall.value("write") { write(dst, buffer + offset, n - offset) }
                    .get("copied", path: srcPath(), subject: "mirror source")
            }
        }
    }

    /// Recreates a symbolic link with the same (uninterpreted) target text.
    private func copySymlink(_ name: UnsafePointer<CChar>, from srcDir: Int32, to dstDir: Int32, srcPath: String) throws
    {
        var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let capacity = target.count - 1
        let n = try SystemCall.value("readlinkat") { readlinkat(srcDir, name, &target, capacity) }
            .get("read", path: child(srcPath, name), subject: "symbolic link")
        target[n] = 0
        var made = SystemCall.value("symlinkat") { symlinkat(target, dstDir, name) }
        if made.failed(with: EEXIST) {
            _ = SystemCall.value("unlinkat") { unlinkat(dstDir, name, 0) }
            made = SystemCall.value("symlinkat") { symlinkat(target, dstDir, name) }
        }
        try made.get("recreated", path: child(srcPath, name), subject: "symbolic link")
    }

    /// errno values meaning "this mechanism is not available here" rather than a real failure.
    private func isUnsupported(_ err: Int32) -> Bool {
        err == EXDEV || err == ENOSYS || err == EOPNOTSUPP || err == EINVAL || err == ENOTTY || err == EPERM
    }

    private func child(_ folder: String, _ name: UnsafePointer<CChar>) -> String {
        PathUtil.join(folder, String(cString: name))
    }

    private func direntType(_ mode: mode_t) -> UInt8 {
        switch mode & S_IFMT {
        case S_IFREG: UInt8(DT_REG)
        case S_IFDIR: UInt8(DT_DIR)
        case S_IFLNK: UInt8(DT_LNK)
        default: UInt8(DT_UNKNOWN)
        }
    }
}

/// Shared job counter and results for a parallel copy, in a mutex that owns them.
private final class ParallelCopyState: Sendable {
    private struct Progress {
        var next = 0
        var files = 0
        var bytes: UInt64 = 0
        var error: StorageError?
    }
    private let count: Int
    private let progress = Mutex(Progress())

    init(count: Int) {
        self.count = count
    }

    /// The next job index, or nil when all are taken or another thread has failed.
    func take() -> Int? {
        progress.withLock { progress in
            guard progress.error == nil, progress.next < count else { return nil }
            progress.next += 1
            return progress.next - 1
        }
    }

    func finish(files: Int, bytes: UInt64, error: (any Error)?) {
        let failure = error.map {
            $0 as? StorageError
                ?? StorageError(.ioFailure, path: "?", reason: "copy failed: \($0)", subject: "mirror source")
        }
        progress.withLock { progress in
            progress.files += files
            progress.bytes += bytes
            if progress.error == nil, let failure { progress.error = failure }
        }
    }

    func result() -> (Int, UInt64, StorageError?) {
        progress.withLock { ($0.files, $0.bytes, $0.error) }
    }
}

/// One thread's share of a parallel copy: takes job indices until none are left.
private final class ParallelCopyJob {
    let state: ParallelCopyState
    let hook: ((Int) throws -> Void)?
    let job: (Int, TreeCopier) throws -> Void

    init(state: ParallelCopyState, hook: ((Int) throws -> Void)?, job: @escaping (Int, TreeCopier) throws -> Void) {
        self.state = state
        self.hook = hook
        self.job = job
    }

    func run() {
        let copier = TreeCopier()
        copier.afterFile = hook
        var failure: (any Error)?
        while failure == nil, let index = state.take() {
            do { try job(index, copier) } catch { failure = error }
        }
        state.finish(files: copier.files, bytes: copier.bytes, error: failure)
    }
}
