import Foundation
import Glibc
import Testing

@testable import ParallelVMStorage

/// The host side of mirroring without a shared folder: the tree a spawner reads, the cache that stores its
/// contents once, the task folders linked from it, and the limit on its size.
@Suite(.serialized)
struct MirrorCacheTests {
    /// A source folder, a local storage root and a folder to make task folders in.
    struct Place {
        let root: String
        var source: String { root + "/source" }
        var local: String { root + "/local" }
        var task: String { root + "/task" }

        init() throws {
            root = NSTemporaryDirectory() + "parallelvm-mirror-cache-\(UUID().uuidString)"
            let manager = FileManager.default
            try manager.createDirectory(atPath: source + "/sub", withIntermediateDirectories: true)
            try manager.createDirectory(atPath: task, withIntermediateDirectories: true)
            try "alpha".write(toFile: source + "/a.txt", atomically: true, encoding: .utf8)
            try "alpha".write(toFile: source + "/sub/same-as-a.txt", atomically: true, encoding: .utf8)
            try Data(repeating: 3, count: 100_000).write(to: URL(fileURLWithPath: source + "/sub/big.bin"))
            _ = manager.createFile(atPath: source + "/empty", contents: Data())
            try manager.createSymbolicLink(atPath: source + "/link", withDestinationPath: "a.txt")
            chmod(source + "/a.txt", 0o755)
        }

        func remove() {
            MirrorCache.releasePins()
            _ = try? FileManager.default.removeItem(atPath: root)
        }

        func storageRoot() throws -> LocalStorageRoot {
            try LocalStorageRoot(environment: ["PARALLEL_LOCAL_STORAGE": local])
        }

        func snapshot(_ path: String? = nil, target: String = "") throws -> MirrorSnapshot {
            var builder = MirrorTreeBuilder()
            try builder.add(source: path ?? source, target: target, followLinks: true)
            return builder.snapshot()
        }
    }

    /// Opens a folder for the `*at` calls, or fails the test.
    func openFolder(_ path: String) throws -> Int32 {
        let fd = open(path, O_RDONLY | O_DIRECTORY)
        try #require(fd >= 0, "cannot open \(path)")
        return fd
    }

    /// The bytes of the contents `missing` names, in order, as the spawner streams them.
    func stream(_ snapshot: MirrorSnapshot, _ missing: [Int]) throws -> [UInt8] {
        try missing.flatMap { Array(try Data(contentsOf: URL(fileURLWithPath: snapshot.sources[$0]))) }
    }

    /// Feeds `bytes` to `sink` in pieces of `piece` bytes.
    func feed(_ bytes: [UInt8], to sink: MirrorCache.Sink, piece: Int) throws {
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + piece)
            try bytes[offset..<end].withUnsafeBytes { try sink.take($0) }
            offset = end
        }
    }

    @Test func aTreeIsStoredOnceAndTaskFoldersAreLinkedFromIt() throws {
        let place = try Place()
        defer { place.remove() }
        let snapshot = try place.snapshot()
        // Two files with the same content are one blob; the executable one is kept apart from a plain copy.
        #expect(snapshot.tree.files == 4)
        #expect(snapshot.tree.blobs.count == 4)
        let cache = try MirrorCache(root: try place.storageRoot())
        let offer = try cache.offer(encoded: snapshot.encoded, digest: snapshot.digest)
        #expect(offer.missing == Array(0..<4))
        let sink = try cache.sink(for: offer)
        // The stream is cut anywhere, here into pieces of 7 bytes that straddle contents.
        try feed(try stream(snapshot, offer.missing), to: sink, piece: 7)
        #expect(sink.isComplete)
        // A second offer of the same tree (another rank, a later run) needs nothing.
        #expect(try cache.offer(encoded: snapshot.encoded, digest: snapshot.digest).missing.isEmpty)

        let folder = try openFolder(place.task)
        defer { close(folder) }
        let made = try cache.materialize(snapshot.digest, into: folder, folderPath: place.task)
        #expect(made.files == 4)
        let base = place.task + "/source"
        #expect(try String(contentsOfFile: base + "/a.txt", encoding: .utf8) == "alpha")
        #expect(try String(contentsOfFile: base + "/sub/same-as-a.txt", encoding: .utf8) == "alpha")
        #expect(try Data(contentsOf: URL(fileURLWithPath: base + "/sub/big.bin")) == Data(repeating: 3, count: 100_000))
        #expect(try Data(contentsOf: URL(fileURLWithPath: base + "/empty")).isEmpty)
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: base + "/link") == "a.txt")
        var st = stat()
        #expect(lstat(base + "/sub/big.bin", &st) == 0 && st.st_nlink == 2)
        // Read-only, and the executable bit kept.
        #expect(lstat(base + "/a.txt", &st) == 0 && st.st_mode & 0o777 == 0o555)
        #expect(lstat(base + "/sub/big.bin", &st) == 0 && st.st_mode & 0o777 == 0o444)
    }

    @Test func aContentThatDiffersFromItsDigestNeverEntersTheCache() throws {
        let place = try Place()
        defer { place.remove() }
        let snapshot = try place.snapshot()
        let cache = try MirrorCache(root: try place.storageRoot())
        let offer = try cache.offer(encoded: snapshot.encoded, digest: snapshot.digest)
        var bytes = try stream(snapshot, offer.missing)
        bytes[bytes.count - 1] ^= 0xFF
        let sink = try cache.sink(for: offer)
        #expect(throws: StorageError.self) { try feed(bytes, to: sink, piece: 4096) }
        let incoming = cache.path + "/incoming"
        // The damaged one is not stored, and nothing half-written is left once the sink goes.
        #expect(try cache.offer(encoded: snapshot.encoded, digest: snapshot.digest).missing.count >= 1)
        _ = consume sink
        #expect(try FileManager.default.contentsOfDirectory(atPath: incoming).isEmpty)
        // A tree whose own bytes were damaged is refused before anything is stored.
        var tree = snapshot.encoded
        tree[0] ^= 1
        #expect(throws: StorageError.self) { try cache.offer(encoded: tree, digest: snapshot.digest) }
    }

    @Test func aLinkedFileWrittenInPlaceIsCaughtAndSentAgain() throws {
        let place = try Place()
        defer { place.remove() }
        let snapshot = try place.snapshot()
        let cache = try MirrorCache(root: try place.storageRoot())
        let offer = try cache.offer(encoded: snapshot.encoded, digest: snapshot.digest)
        try feed(try stream(snapshot, offer.missing), to: try cache.sink(for: offer), piece: 1 << 20)
        let folder = try openFolder(place.task)
        defer { close(folder) }
        _ = try cache.materialize(snapshot.digest, into: folder, folderPath: place.task)
        // A task (as root, so the read-only mode does not stop it) rewrites its input in place.
        let linked = place.task + "/source/sub/big.bin"
        chmod(linked, 0o644)
        let handle = try #require(FileHandle(forWritingAtPath: linked))
        handle.write(Data(repeating: 9, count: 100_000))
        try handle.close()
        try FileManager.default.removeItem(atPath: place.task + "/source")
        let again = try openFolder(place.task)
        defer { close(again) }
        #expect {
            try cache.materialize(snapshot.digest, into: again, folderPath: place.task)
        } throws: { error in
            "\(error)".contains("changed in place") && "\(error)".contains("big.bin")
        }
        // The next offer asks for that content again; sent again, it replaces the damaged copy.
        let index = try #require(snapshot.tree.blobs.firstIndex { $0.size == 100_000 })
        let resent = try cache.offer(encoded: snapshot.encoded, digest: snapshot.digest)
        #expect(resent.missing == [index])
        try feed(try stream(snapshot, resent.missing), to: try cache.sink(for: resent), piece: 1 << 20)
        _ = try cache.materialize(snapshot.digest, into: again, folderPath: place.task)
        #expect(try Data(contentsOf: URL(fileURLWithPath: linked)) == Data(repeating: 3, count: 100_000))
        #expect(try FileManager.default.contentsOfDirectory(atPath: cache.path + "/incoming").isEmpty)
    }

    @Test func trimmingRemovesUnpinnedTreesOldestFirstAndKeepsPinnedOnes() throws {
        let place = try Place()
        defer { place.remove() }
        let root = try place.storageRoot()
        // Three trees of 100 kB each, with different contents.
        var snapshots: [MirrorSnapshot] = []
        for n in 0..<3 {
            let folder = place.root + "/tree\(n)"
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try Data(repeating: UInt8(n), count: 100_000).write(to: URL(fileURLWithPath: folder + "/data.bin"))
            snapshots.append(try place.snapshot(folder))
        }
        let cache = try MirrorCache(root: root)
        for (n, snapshot) in snapshots.enumerated() {
            let offer = try cache.offer(encoded: snapshot.encoded, digest: snapshot.digest)
            try feed(try stream(snapshot, offer.missing), to: try cache.sink(for: offer), piece: 1 << 16)
            // Tree 0 used longest ago, tree 2 last.
            var times = [timespec(tv_sec: 1_000_000 + n, tv_nsec: 0), timespec(tv_sec: 1_000_000 + n, tv_nsec: 0)]
            #expect(utimensat(AT_FDCWD, cache.path + "/trees/" + snapshot.digest, &times, 0) == 0)
        }
        // Pinned by this process: nothing may go, even above the limit.
        var trim = cache.trim(limit: 150_000)
        #expect(trim.trees == 0 && trim.size == 300_000)
        // Once no process pins them, the oldest go until the cache is within its limit.
        MirrorCache.releasePins()
        trim = cache.trim(limit: 150_000)
        #expect(trim.trees == 2 && trim.blobs == 2 && trim.size == 100_000, "\(trim)")
        let trees = try FileManager.default.contentsOfDirectory(atPath: cache.path + "/trees")
        #expect(trees.contains(snapshots[2].digest) && !trees.contains(snapshots[0].digest))
        #expect(try cache.offer(encoded: snapshots[0].encoded, digest: snapshots[0].digest).missing == [0])
        #expect(try MirrorCache.limit(environment: ["PARALLEL_MIRROR_CACHE_LIMIT": "500M"]) == 500 << 20)
        #expect(throws: StorageError.self) {
            try MirrorCache.limit(environment: ["PARALLEL_MIRROR_CACHE_LIMIT": "lots"])
        }
    }

    @Test func clearingLeavesACacheInUseAndRemovesItOtherwise() throws {
        let place = try Place()
        defer { place.remove() }
        let root = try place.storageRoot()
        let snapshot = try place.snapshot()
        do {
            let cache = try MirrorCache(root: root)
            let offer = try cache.offer(encoded: snapshot.encoded, digest: snapshot.digest)
            try feed(try stream(snapshot, offer.missing), to: try cache.sink(for: offer), piece: 1 << 16)
        }
        let cachePath = root.userFolder + "/" + MirrorCache.folderName
        var report = root.clear()
        #expect(report.failures[cachePath]?.contains("mirror cache of a running VM") == true, "\(report)")
        #expect(FileManager.default.fileExists(atPath: cachePath + "/blobs"))
        MirrorCache.releasePins()
        report = root.clear()
        #expect(report.failures.isEmpty, "\(report)")
        #expect(!FileManager.default.fileExists(atPath: cachePath))
        // Stale removal at a VM's start never takes the cache.
        do {
            let cache = try MirrorCache(root: root)
            _ = try cache.offer(encoded: snapshot.encoded, digest: snapshot.digest)
        }
        MirrorCache.releasePins()
        _ = root.removeStale()
        #expect(FileManager.default.fileExists(atPath: cachePath + "/trees/" + snapshot.digest))
    }

    @Test func unsharedSourcesAreReadOnTheSpawnerAndSharedOnesTranslated() throws {
        let place = try Place()
        defer { place.remove() }
        let share = place.root + "/share"
        try FileManager.default.createDirectory(atPath: share, withIntermediateDirectories: true)
        try "s".write(toFile: share + "/s.txt", atomically: true, encoding: .utf8)
        let mirrored = MirroredStorage(environment: [
            "PARALLEL_MIRRORED_STORAGE": share, "PARALLEL_UNSHARED_STORAGE": place.root + "/source",
        ])
        let made = try StorageRequest.makeSending(
            mirrorMap: [share + "/s.txt": ".", place.source + "/sub/*.bin": "inputs"],
            mirrored: mirrored
        )
        #expect(made.request.mirror.count == 1)
        let snapshot = try #require(made.snapshot)
        #expect(made.request.sentTree == snapshot.reference)
        #expect(snapshot.tree.items.map(\.path) == ["inputs", "inputs/big.bin"])
        // A source in no folder of either list is refused, naming both.
        #expect {
            _ = try StorageRequest.makeSending(mirrorMap: [place.local: "."], mirrored: mirrored)
        } throws: { error in
            "\(error)".contains(place.local) && "\(error)".contains("outside every mirrored folder")
        }
        #expect(throws: StorageError.self) {
            _ = try StorageRequest.makeSending(mirrorMap: [place.source + "/nothing-*": "."], mirrored: mirrored)
        }
    }
}
