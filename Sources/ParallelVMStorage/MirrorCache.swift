import Crypto
import Foundation
import Glibc
import Synchronization

/// A host's store of the files a spawner sent for mirroring from folders the workers cannot see, so that a
/// host receives each content once, and task folders are made from it by hard links.
///
/// It lives in the per-user folder of the local storage, as `mirror-cache`:
/// - `blobs/<2 hex digits>/<SHA-256 in hex>[x]`: one file per content, read-only, its modification time set
///   to a fixed stamp so that a task that writes into its hard link in place is caught;
/// - `trees/<digest>`: each tree a spawner sent (a `MirrorTree`), and `trees/<digest>.pin`, share-locked by
///   every live worker process that uses the tree;
/// - `incoming/`: contents being received, renamed into `blobs/` once complete and checked;
/// - `lock`: share-locked while contents are stored or linked, locked alone while the cache is trimmed.
///
/// The cache is bounded (`PARALLEL_MIRROR_CACHE_LIMIT`, bytes with an optional K, M, G or T; default
/// 10G): after storing a tree, the trees no live process pins go, least recently used first, with the
/// contents no remaining tree needs, until the cache is within its limit. Its sidecar's lease is
/// share-locked by every process using it, so `clearLocalStorage` leaves it while a run uses it, and
/// removes it otherwise.
package final class MirrorCache {
    package static let folderName = "mirror-cache"
    package static let limitVariable = "PARALLEL_MIRROR_CACHE_LIMIT"
    package static let defaultLimit: UInt64 = 10 << 30
    /// The modification time every stored content gets (2000-01-01 00:00:00 UTC).
    static let stamp = timespec(tv_sec: 946_684_800, tv_nsec: 0)

    /// The cache folder's path.
    package let path: String
    private let fd: Int32
    private let blobsFd: Int32
    private let treesFd: Int32
    private let incomingFd: Int32
    private let lockFd: Int32
    /// The cache's sidecar lease, share-locked while this object lives.
    private let leaseFd: Int32

    /// Opens the cache of `root`, making it when missing.
    package init(root: LocalStorageRoot) throws {
        try root.ensureUserFolder()
        let userFd = try root.openUserFolder()
        defer { SystemCall.close(userFd) }
        path = PathUtil.join(root.userFolder, Self.folderName)
        var opened: [Int32] = []
        func close() { for fd in opened { SystemCall.close(fd) } }
        do {
            // The lease first: a clear that holds it alone finishes before this goes on.
            let sidecarFd = try Sidecar.open(
                for: Self.folderName,
                in: userFd,
                userFolder: root.userFolder,
                create: true
            )
            defer { SystemCall.close(sidecarFd) }
            let leasePath = PathUtil.join(root.userFolder, Sidecar.name(for: Self.folderName))
            let lease = try SystemCall.value("openat") {
                openat(sidecarFd, Sidecar.leaseName, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
            }.get("opened", path: leasePath, subject: "mirror cache lease")
            opened.append(lease)
            try SystemCall.value("flock") { flock(lease, LOCK_SH) }
                .get("locked", path: leasePath, subject: "mirror cache lease")
            var st = stat()
            if fstat(lease, &st) == 0, st.st_size == 0 {
                let text = Array("the mirror cache of a running VM".utf8)
                _ = text.withUnsafeBytes { pwrite(lease, $0.baseAddress, $0.count, 0) }
            }
            let made = SystemCall.value("mkdirat") { mkdirat(userFd, Self.folderName, 0o700) }
            if !made.failed(with: EEXIST) { try made.get("created", path: path, subject: "mirror cache") }
            let cacheFd = try SystemCall.value("openat") {
                openat(userFd, Self.folderName, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }.get("opened", path: path, subject: "mirror cache")
            opened.append(cacheFd)
            var folders: [Int32] = []
            for name in ["blobs", "trees", "incoming"] {
                let madeSub = SystemCall.value("mkdirat") { mkdirat(cacheFd, name, 0o700) }
                if !madeSub.failed(with: EEXIST) {
                    try madeSub.get("created", path: PathUtil.join(path, name), subject: "mirror cache")
                }
                let sub = try SystemCall.value("openat") {
                    openat(cacheFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                }.get("opened", path: PathUtil.join(path, name), subject: "mirror cache")
                opened.append(sub)
                folders.append(sub)
            }
            let lock = try SystemCall.value("openat") {
                openat(cacheFd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
            }.get("opened", path: PathUtil.join(path, "lock"), subject: "mirror cache")
            opened.append(lock)
            leaseFd = lease
            fd = cacheFd
            blobsFd = folders[0]
            treesFd = folders[1]
            incomingFd = folders[2]
            lockFd = lock
        } catch {
            close()
            throw error
        }
    }

    deinit {
        for descriptor in [blobsFd, treesFd, incomingFd, lockFd, fd, leaseFd] { SystemCall.close(descriptor) }
    }

    /// The limit from `PARALLEL_MIRROR_CACHE_LIMIT` (bytes, with an optional K, M, G or T).
    /// - Throws: `StorageError.invalidPath` naming the variable's value when it is not such a size.
    package static func limit(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> UInt64 {
        guard let raw = environment[limitVariable]?.trimmingCharacters(in: .whitespaces), !raw.isEmpty else {
            return defaultLimit
        }
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var digits = Substring(raw)
        var unit: UInt64 = 1
        if let last = digits.last?.uppercased().first, let factor = units[last] {
            unit = factor
            digits = digits.dropLast()
        }
        guard let value = UInt64(digits), value.multipliedReportingOverflow(by: unit).overflow == false else {
            throw StorageError(
                .invalidPath,
                path: "\(limitVariable)=\(raw)",
                reason: "is not a size in bytes (such as 4000000000, 500M or 10G)",
                subject: "setting"
            )
        }
        return value * unit
    }

    // MARK: - Receiving a tree

    /// Keeps a tree's contents in the cache for as long as the process that holds it lives.
    package final class Pin: @unchecked Sendable {
        private let fds: [Int32]
        init(fds: [Int32]) { self.fds = fds }
        deinit { for fd in fds { SystemCall.close(fd) } }
    }

    /// The pins this process holds: they last until it exits.
    private static let heldPins = Mutex<[String: Pin]>([:])

    /// Lets go of every tree this process pinned, before it clears its local storage (no task runs then, and
    /// the spawner offers its trees again afterwards).
    package static func releasePins() { heldPins.withLock { $0.removeAll() } }

    /// What a host has of a tree a spawner offers.
    package struct Offer {
        package let tree: MirrorTree
        /// Indices of the blobs the cache lacks, in order: the contents the spawner must send.
        package let missing: [Int]
    }

    /// Takes in a tree a spawner offers: checks it against its digest, keeps it in `trees/`, pins it for the
    /// life of this process and says which of its contents are missing.
    /// - Throws: `StorageError` naming the tree or the cache path.
    package func offer(encoded: [UInt8], digest: String) throws -> Offer {
        guard hexString(Array(SHA256.hash(data: encoded))) == digest else {
            throw StorageError(
                .ioFailure,
                path: digest,
                reason: "arrived damaged (its digest differs)",
                subject: "mirror tree"
            )
        }
        let tree = try MirrorTree(decoding: encoded, shownAs: digest)
        try withLock(LOCK_SH) {
            try pin(digest)
            try writeTree(encoded, digest: digest)
        }
        var missing: [Int] = []
        for (index, blob) in tree.blobs.enumerated() where !hasIntact(blob) { missing.append(index) }
        return Offer(tree: tree, missing: missing)
    }

    /// Share-locks the tree's pin file, and the cache's lease, until this process exits.
    private func pin(_ digest: String) throws {
        if Self.heldPins.withLock({ $0[digest] != nil }) { return }
        let name = digest + ".pin"
        let pinFd = try SystemCall.value("openat") {
            openat(treesFd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        }.get("opened", path: PathUtil.join(path, "trees/" + name), subject: "mirror cache")
        if let failure = SystemCall.value("flock", { flock(pinFd, LOCK_SH) }).failure {
            SystemCall.close(pinFd)
            throw failure.storageError("locked", path: PathUtil.join(path, "trees/" + name), subject: "mirror cache")
        }
        let leaseCopy = dup(leaseFd)
        Self.heldPins.withLock { $0[digest] = Pin(fds: leaseCopy >= 0 ? [pinFd, leaseCopy] : [pinFd]) }
    }

    /// Writes `trees/<digest>` unless it is there, and marks it used now.
    private func writeTree(_ encoded: [UInt8], digest: String) throws {
        if SystemCall.value("utimensat", { utimensat(treesFd, digest, nil, 0) }).succeeded { return }
        let temporary = ".\(digest).\(UInt64.random(in: 0...UInt64.max))"
        try writeFile(encoded, named: temporary, in: treesFd, mode: 0o600, shownAs: "trees/" + digest)
        try SystemCall.value("renameat") { renameat(treesFd, temporary, treesFd, digest) }
            .get("stored", path: PathUtil.join(path, "trees/" + digest), subject: "mirror cache")
    }

    private func writeFile(
        _ bytes: [UInt8],
        named name: String,
        in folder: Int32,
        mode: mode_t,
        shownAs: String
    )
        throws
    {
        let shown = PathUtil.join(path, shownAs)
        let out = try SystemCall.value("openat") {
            openat(folder, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        }.get("created", path: shown, subject: "mirror cache")
        defer { SystemCall.close(out) }
        var written = 0
        while written < bytes.count {
            let n = try bytes.withUnsafeBytes { raw in
                try SystemCall.value("write") { write(out, raw.baseAddress! + written, raw.count - written) }
                    .get("written", path: shown, subject: "mirror cache")
            }
            written += n
        }
    }

    /// Whether the cache holds `blob` as stored: its size and its stamp (a write in place changes the time).
    private func hasIntact(_ blob: MirrorTree.Blob) -> Bool {
        var st = stat()
        guard fstatat(blobsFd, Self.blobPath(blob), &st, AT_SYMLINK_NOFOLLOW) == 0 else { return false }
        return st.st_mode & S_IFMT == S_IFREG && UInt64(st.st_size) == blob.size
            && st.st_mtim.tv_sec == Self.stamp.tv_sec && st.st_mtim.tv_nsec == Self.stamp.tv_nsec
    }

    static func blobPath(_ blob: MirrorTree.Blob) -> String {
        let name = blob.name
        return String(name.prefix(2)) + "/" + name
    }

    /// Runs `body` holding the cache's lock (`LOCK_SH` or `LOCK_EX`).
    private func withLock<T>(_ operation: Int32, _ body: () throws -> T) throws -> T {
        try SystemCall.value("flock") { flock(lockFd, operation) }
            .get("locked", path: PathUtil.join(path, "lock"), subject: "mirror cache")
        defer { _ = flock(lockFd, LOCK_UN) }
        return try body()
    }

    // MARK: - Storing contents

    /// Stores the missing contents of `offer` as they arrive in one byte stream, in the order of
    /// `offer.missing`, cut anywhere. Each content is checked against its SHA-256 before it enters the cache.
    package final class Sink {
        private let cache: MirrorCache
        private let offer: Offer
        private var position = 0
        private var out: Int32 = -1
        private var temporary = ""
        private var remaining: UInt64 = 0
        private var hasher = SHA256()
        /// The folders of `blobs/` made (or found) so far.
        private var folders: Set<String> = []
        /// Bytes still expected.
        package private(set) var expected: UInt64

        /// `blobs/`-relative path of each missing content, worked out once.
        private let paths: [String]
        /// Whether the current content is written at its final path (else at `temporary` in `incoming/`).
        private var inPlace = false

        init(cache: MirrorCache, offer: Offer) throws {
            self.cache = cache
            self.offer = offer
            paths = offer.missing.map { MirrorCache.blobPath(offer.tree.blobs[$0]) }
            expected = offer.missing.reduce(0) { $0 + offer.tree.blobs[$1].size }
            try cache.withLock(LOCK_SH) { try startNext() }
        }

        deinit {
            if out >= 0 {
                SystemCall.close(out)
                discardCurrent()
            }
        }

        /// Removes the content being written (its digest differs, or the stream ended).
        private func discardCurrent() {
            if inPlace {
                _ = unlinkat(cache.blobsFd, paths[position], 0)
            } else {
                _ = unlinkat(cache.incomingFd, temporary, 0)
            }
        }

        /// Whether every missing content is stored.
        package var isComplete: Bool { position >= offer.missing.count }

        /// Takes the next bytes of the stream.
        /// - Throws: `StorageError` when a content differs from its digest, the stream runs past its end, or
        ///   the cache cannot be written.
        package func take(_ bytes: UnsafeRawBufferPointer) throws {
            try cache.withLock(LOCK_SH) {
                var offset = 0
                while offset < bytes.count {
                    guard !isComplete else {
                        throw StorageError(
                            .ioFailure,
                            path: cache.path,
                            reason: "received \(bytes.count - offset) bytes more than the tree's missing contents",
                            subject: "mirror cache"
                        )
                    }
                    let count = Int(min(UInt64(bytes.count - offset), remaining))
                    let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])
                    hasher.update(bufferPointer: slice)
                    var written = 0
                    while written < count {
                        let n = try SystemCall.value("write") {
                            write(out, slice.baseAddress! + written, count - written)
                        }.get(
                            "written",
                            path: PathUtil.join(cache.path, "blobs/" + paths[position]),
                            subject: "mirror cache"
                        )
                        written += n
                    }
                    offset += count
                    remaining -= UInt64(count)
                    expected -= UInt64(count)
                    if remaining == 0 { try finishCurrent() }
                }
            }
        }

        /// Opens the file of the next missing content; finishes empty ones at once. A content is written at its
        /// final path when that is free: its stamp, set last, tells readers it is complete. When the path is
        /// taken (a damaged copy, or another process writing the same content), it is written in `incoming/` and
        /// renamed over it.
        private func startNext() throws {
            while position < offer.missing.count {
                let blob = offer.tree.blobs[offer.missing[position]]
                let path = paths[position]
                let mode: mode_t = blob.executable ? 0o555 : 0o444
                let flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
                let folder = String(path.prefix(2))
                if folders.insert(folder).inserted { _ = mkdirat(cache.blobsFd, folder, 0o700) }
                let direct = SystemCall.value("openat") { openat(cache.blobsFd, path, flags, mode) }
                if case .success(let descriptor) = direct {
                    out = descriptor
                    inPlace = true
                } else {
                    temporary = "\(PathUtil.lastComponent(path)).\(UInt64.random(in: 0...UInt64.max))"
                    out = try SystemCall.value("openat") { openat(cache.incomingFd, temporary, flags, mode) }
                        .get(
                            "created",
                            path: PathUtil.join(cache.path, "incoming/" + temporary),
                            subject: "mirror cache"
                        )
                    inPlace = false
                }
                remaining = blob.size
                hasher = SHA256()
                if remaining > 0 { return }
                try finishCurrent(startingNext: false)
            }
        }

        /// Checks the content just written and stamps it complete (moving it into `blobs/` when written aside).
        private func finishCurrent(startingNext: Bool = true) throws {
            let blob = offer.tree.blobs[offer.missing[position]]
            let descriptor = out
            out = -1
            defer { SystemCall.close(descriptor) }
            guard Array(hasher.finalize()) == blob.digest else {
                discardCurrent()
                let item = offer.tree.items.first { $0.kind == .file && $0.blob == offer.missing[position] }
                throw StorageError(
                    .ioFailure,
                    path: item?.path ?? blob.name,
                    reason: "changed on the spawner's host after the VM read it (its content no longer matches)",
                    subject: "mirrored file"
                )
            }
            var times = [MirrorCache.stamp, MirrorCache.stamp]
            _ = futimens(descriptor, &times)
            if !inPlace {
                try SystemCall.value("renameat") {
                    renameat(cache.incomingFd, temporary, cache.blobsFd, paths[position])
                }.get("stored", path: PathUtil.join(cache.path, "blobs/" + paths[position]), subject: "mirror cache")
            }
            position += 1
            if startingNext { try startNext() }
        }
    }

    /// A sink for the contents `offer` lacks.
    package func sink(for offer: Offer) throws -> Sink { try Sink(cache: self, offer: offer) }

    // MARK: - Making task folders

    /// Makes the tree `digest` inside the open folder `folderFd` (shown as `folderPath`): its folders and links,
    /// and each file as a hard link to its content in the cache.
    /// - Returns: files linked and their bytes.
    /// - Throws: `StorageError` naming the path: the tree is not in the cache (cleared?), a content was changed
    ///   in place, or a path is taken by a folder.
    package func materialize(
        _ digest: String,
        into folderFd: Int32,
        folderPath: String
    ) throws -> (files: Int, bytes: UInt64) {
        try withLock(LOCK_SH) {
            let tree = try readTree(digest)
            var parent = ParentFolder(root: folderFd, rootPath: folderPath)
            defer { parent.close() }
            var files = 0
            var bytes: UInt64 = 0
            var modes: [(String, UInt32)] = []
            for item in tree.items {
                let (parentFd, name) = try parent.open(forItem: item.path)
                let shown = PathUtil.join(folderPath, item.path)
                switch item.kind {
                case .directory:
                    let made = SystemCall.value("mkdirat") { mkdirat(parentFd, name, 0o700) }
                    if let failure = made.failure, failure.errno != EEXIST {
                        throw failure.storageError("created", path: shown, subject: "mirror target")
                    }
                    modes.append((item.path, item.mode))
                case .file:
                    let blob = tree.blobs[item.blob]
                    guard hasIntact(blob) else {
                        throw StorageError(
                            .ioFailure,
                            path: shown,
                            reason: "cannot be made: its content in the mirror cache \(path) is missing or was "
                                + "changed in place (mirrored files are hard links; write new files instead)",
                            subject: "mirrored file"
                        )
                    }
                    try replaceable(name, in: parentFd, shownAs: shown)
                    try SystemCall.value("linkat") { linkat(blobsFd, Self.blobPath(blob), parentFd, name, 0) }
                        .get("linked from the mirror cache", path: shown, subject: "mirrored file")
                    files += 1
                    bytes += blob.size
                case .symlink:
                    try replaceable(name, in: parentFd, shownAs: shown)
                    try SystemCall.value("symlinkat") { symlinkat(item.linkTarget, parentFd, name) }
                        .get("created", path: shown, subject: "mirrored link")
                }
            }
            parent.close()
            // Folder modes last, deepest first, so that a read-only folder is filled before it becomes read-only.
            for (relative, mode) in modes.reversed() {
                _ = fchmodat(folderFd, relative, mode_t(mode), 0)
            }
            return (files, bytes)
        }
    }

    /// Removes a file or link in the way of a mirrored one (a later mirror entry wins, as in copying).
    private func replaceable(_ name: String, in folder: Int32, shownAs shown: String) throws {
        var st = stat()
        guard fstatat(folder, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return }
        guard st.st_mode & S_IFMT != S_IFDIR else {
            throw StorageError(.invalidTarget, path: shown, reason: "is a folder already", subject: "mirror target")
        }
        try SystemCall.value("unlinkat") { unlinkat(folder, name, 0) }
            .get("replaced", path: shown, subject: "mirror target")
    }

    private func readTree(_ digest: String) throws -> MirrorTree {
        let shown = PathUtil.join(path, "trees/" + digest)
        let opened = SystemCall.value("openat") { openat(treesFd, digest, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) }
        if opened.failed(with: ENOENT) {
            throw StorageError(
                .missingSource,
                path: shown,
                reason: "is not in this host's mirror cache (was the local storage cleared during the run?)",
                subject: "mirror tree"
            )
        }
        let input = try opened.get("opened", path: shown, subject: "mirror tree")
        defer { SystemCall.close(input) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        let capacity = buffer.count
        while true {
            let n = try SystemCall.value("read") { read(input, &buffer, capacity) }.get(
                "read",
                path: shown,
                subject: "mirror tree"
            )
            if n == 0 { break }
            bytes.append(contentsOf: buffer[0..<n])
        }
        return try MirrorTree(decoding: bytes, shownAs: shown)
    }

    // MARK: - Trimming

    /// Adds `bytes` stored to the cache's running total (the file `size`) and trims the cache when the total
    /// passes `limit`, so that the contents are counted one by one only then. The total is what this and
    /// other processes stored since the last trim, which counted them all.
    package func noteStored(_ bytes: UInt64, limit: UInt64) {
        let sizeFd = openat(fd, "size", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard sizeFd >= 0 else { return }
        defer { SystemCall.close(sizeFd) }
        guard flock(sizeFd, LOCK_EX) == 0 else { return }
        defer { _ = flock(sizeFd, LOCK_UN) }
        var total: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &total) { pread(sizeFd, $0.baseAddress, 8, 0) }
        total = UInt64(littleEndian: total) &+ bytes
        if total > limit { total = trim(limit: limit).size }
        var stored = total.littleEndian
        _ = withUnsafeBytes(of: &stored) { pwrite(sizeFd, $0.baseAddress, 8, 0) }
    }

    /// What trimming removed.
    package struct Trim: Equatable {
        package var trees = 0
        package var blobs = 0
        package var bytes: UInt64 = 0
        /// The cache's size afterwards.
        package var size: UInt64 = 0
    }

    /// Brings the cache within `limit` bytes: contents no tree names go first, then the trees no live
    /// process pins, least recently used first, with the contents only they named. Pinned trees and their
    /// contents stay, even above the limit. Does nothing when another process trims or uses the cache.
    @discardableResult
    package func trim(limit: UInt64) -> Trim {
        var result = Trim()
        guard flock(lockFd, LOCK_EX | LOCK_NB) == 0 else { return result }
        defer { _ = flock(lockFd, LOCK_UN) }
        // Every content, with its size.
        var sizes: [String: UInt64] = [:]
        for folder in (try? listing(blobsFd)) ?? [] {
            guard
                let sub = try? SystemCall.value(
                    "openat",
                    { openat(blobsFd, folder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
                ).get()
            else { continue }
            for name in (try? listing(sub)) ?? [] {
                var st = stat()
                if fstatat(sub, name, &st, AT_SYMLINK_NOFOLLOW) == 0 { sizes[folder + "/" + name] = UInt64(st.st_size) }
            }
            SystemCall.close(sub)
        }
        var total = sizes.values.reduce(0, +)
        result.size = total
        guard total > limit else { return result }
        // Every tree: whether a live process pins it, when it was last used, what it names.
        struct Entry {
            var digest: String
            var pinned: Bool
            var used: Int
            var blobs: Set<String>
        }
        var entries: [Entry] = []
        for name in (try? listing(treesFd)) ?? [] where !name.hasPrefix(".") && !name.hasSuffix(".pin") {
            guard let tree = try? readTree(name) else { continue }
            var st = stat()
            _ = fstatat(treesFd, name, &st, 0)
            var pinned = false
            let pinFd = openat(treesFd, name + ".pin", O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            if pinFd >= 0 {
                pinned = flock(pinFd, LOCK_EX | LOCK_NB) != 0
                SystemCall.close(pinFd)
            }
            entries.append(
                Entry(digest: name, pinned: pinned, used: st.st_mtim.tv_sec, blobs: Set(tree.blobs.map(Self.blobPath)))
            )
        }
        func remove(_ blob: String) {
            guard let size = sizes[blob], unlinkat(blobsFd, blob, 0) == 0 else { return }
            sizes[blob] = nil
            total -= size
            result.blobs += 1
            result.bytes += size
        }
        var named = entries.reduce(into: Set<String>()) { $0.formUnion($1.blobs) }
        for blob in sizes.keys where !named.contains(blob) { remove(blob) }
        var kept = entries.filter(\.pinned)
        var candidates = entries.filter { !$0.pinned }.sorted { $0.used < $1.used }
        while total > limit, !candidates.isEmpty {
            let oldest = candidates.removeFirst()
            _ = unlinkat(treesFd, oldest.digest, 0)
            _ = unlinkat(treesFd, oldest.digest + ".pin", 0)
            result.trees += 1
            named = (kept + candidates).reduce(into: Set<String>()) { $0.formUnion($1.blobs) }
            for blob in oldest.blobs where !named.contains(blob) { remove(blob) }
        }
        kept += candidates
        result.size = total
        return result
    }

    /// The names in an open folder, from its start (a duplicate descriptor shares the read position).
    private func listing(_ folder: Int32) throws -> [String] {
        let copy = try SystemCall.value("dup") { dup(folder) }.get()
        _ = lseek(copy, 0, SEEK_SET)
        return try DirectoryStream(taking: copy).names()
    }
}

/// The open folder that holds the current item while a tree is made: consecutive items mostly share one,
/// so it is kept open, and each folder on the way is opened without following links.
private struct ParentFolder {
    let root: Int32
    let rootPath: String
    private var current: (path: String, fd: Int32)?

    init(root: Int32, rootPath: String) {
        self.root = root
        self.rootPath = rootPath
    }

    /// The open folder holding `item` (a relative path) and the item's own name.
    mutating func open(forItem item: String) throws -> (Int32, String) {
        let slash = item.lastIndex(of: "/")
        let parentPath = slash.map { String(item[..<$0]) } ?? ""
        let name = slash.map { String(item[item.index(after: $0)...]) } ?? item
        if parentPath.isEmpty { return (root, name) }
        if let current, current.path == parentPath { return (current.fd, name) }
        close()
        var fd = try SystemCall.value("dup") { dup(root) }.get("opened", path: rootPath, subject: "mirror target")
        for component in PathUtil.components(parentPath) {
            let c = String(component)
            let next = SystemCall.value("openat") { openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            SystemCall.close(fd)
            fd = try next.get(
                "opened (a file or link is in the way?)",
                path: PathUtil.join(rootPath, parentPath),
                subject: "mirror target"
            )
        }
        current = (parentPath, fd)
        return (fd, name)
    }

    mutating func close() {
        if let current { SystemCall.close(current.fd) }
        current = nil
    }
}
