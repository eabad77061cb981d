import Foundation
import Glibc
import Testing

@testable import ParallelVM
@testable import ParallelVMCodec
@testable import ParallelVMStorage

// MARK: - Helpers

/// A fresh folder under /tmp, canonicalised, removed when the test ends.
private final class Scratch {
    let path: String

    init() throws {
        var template = Array("/tmp/storage-test-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw StorageError(.ioFailure, path: "/tmp", reason: "mkdtemp failed")
        }
        path = PathUtil.realPath(String(cString: made))!
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func sub(_ relative: String) -> String { path + "/" + relative }

    @discardableResult
    func dir(_ relative: String) throws -> String {
        let p = sub(relative)
        try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }

    @discardableResult
    func file(_ relative: String, _ text: String = "data", mode: Int? = nil) throws -> String {
        let p = sub(relative)
        try FileManager.default.createDirectory(
            atPath: (p as NSString).deletingLastPathComponent,
            withIntermediateDirectories: true
        )
        try Data(text.utf8).write(to: URL(fileURLWithPath: p))
        if let mode { chmod(p, mode_t(mode)) }
        return p
    }

    func link(_ relative: String, to target: String) throws {
        try FileManager.default.createSymbolicLink(atPath: sub(relative), withDestinationPath: target)
    }
}

private func read(_ path: String) -> String? {
    (try? Data(contentsOf: URL(fileURLWithPath: path))).map { String(decoding: $0, as: UTF8.self) }
}

private func exists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
}

private func isSymlink(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFLNK
}

private func mode(_ path: String) -> Int {
    var st = stat()
    _ = lstat(path, &st)
    return Int(st.st_mode & 0o7777)
}

private func entries(_ path: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
}

private func storage(_ folders: String..., env: [String: String] = [:]) -> MirroredStorage {
    var environment = env
    environment["PARALLEL_MIRRORED_STORAGE"] = folders.joined(separator: ":")
    return MirroredStorage(environment: environment)
}

private func localRoot(_ scratch: Scratch, _ name: String = "local") throws -> LocalStorageRoot {
    try LocalStorageRoot(environment: ["PARALLEL_LOCAL_STORAGE": scratch.sub(name)])
}

private func expectStorageError(_ code: StorageError.Code, _ body: () throws -> Void) -> StorageError? {
    do {
        try body()
        Issue.record("expected StorageError.\(code), nothing was thrown")
        return nil
    } catch let error as StorageError {
        #expect(error.code == code, "\(error)")
        return error
    } catch {
        Issue.record("expected StorageError.\(code), got \(error)")
        return nil
    }
}

private let identity = SpawnerIdentity(host: "spawnhost", pid: 4242, startTime: 777, bootID: "boot-a")

/// Options naming the worker's host "workerhost", so folder names are known in advance.
private func workerOptions(pid: Int32? = nil, host: String = "workerhost") -> TaskStorage.Options {
    var options = TaskStorage.Options()
    options.hostName = host
    if let pid { options.workerPID = pid }
    return options
}

/// The owner record in the sidecar of `name` in the per-user folder, nil when there is none.
private func ownerRecord(_ root: LocalStorageRoot, _ name: String) -> OwnerRecord? {
    let fd = open(root.userFolder + "/." + name + ".parallelvm", O_RDONLY | O_DIRECTORY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    return OwnerRecord.read(in: fd)
}

// MARK: - Path translation

@Suite struct PathTranslationTests {
    @Test func prefixMatchesWholeComponentsOnly() throws {
        let s = try Scratch()
        try s.dir("home/ab")
        try s.file("home/abc/f")
        try s.file("home/ab/f")
        let m = storage(s.sub("home/ab"))
        #expect(try m.abstractPath(for: s.sub("home/ab/f")) == AbstractPath(index: 0, suffix: "f"))
        #expect(try m.abstractPath(for: s.sub("home/ab")) == AbstractPath(index: 0, suffix: ""))
        let error = expectStorageError(.outsideMirroredStorage) { _ = try m.abstractPath(for: s.sub("home/abc/f")) }
        #expect(error?.description.contains(s.sub("home/abc/f")) == true)
        #expect(
            error?.description.contains(
                "is outside every mirrored folder (PARALLEL_MIRRORED_STORAGE=\(s.sub("home/ab")))"
            ) == true
        )
    }

    @Test func severalEntriesFirstMatchWins() throws {
        let s = try Scratch()
        try s.file("a/b/x")
        try s.file("c/y")
        let m = storage(s.sub("a"), s.sub("a/b"), s.sub("c"))
        #expect(try m.abstractPath(for: s.sub("a/b/x")) == AbstractPath(index: 0, suffix: "b/x"))
        #expect(try m.abstractPath(for: s.sub("c/y")) == AbstractPath(index: 2, suffix: "y"))
        let m2 = storage(s.sub("a/b"), s.sub("a"))
        #expect(try m2.abstractPath(for: s.sub("a/b/x")) == AbstractPath(index: 0, suffix: "x"))
    }

    @Test func tildeIsExpandedInEntriesAndPaths() throws {
        let s = try Scratch()
        try s.file("home/me/proj/f")
        let m = storage("~/proj", env: ["HOME": s.sub("home/me")])
        #expect(m.entries == [s.sub("home/me/proj")])
        #expect(try m.abstractPath(for: "~/proj/f") == AbstractPath(index: 0, suffix: "f"))
        // Default: the home folder alone.
        let d = MirroredStorage(environment: ["HOME": s.sub("home/me")])
        #expect(d.entries == [s.sub("home/me")])
        #expect(try d.abstractPath(for: "~/proj/f") == AbstractPath(index: 0, suffix: "proj/f"))
    }

    @Test func symlinkedRootsAndDotDot() throws {
        let s = try Scratch()
        try s.file("real/sub/f")
        try s.link("link", to: s.sub("real"))
        // The entry is a symlink, the path uses the real location.
        let viaLink = storage(s.sub("link"))
        #expect(try viaLink.abstractPath(for: s.sub("real/sub/f")) == AbstractPath(index: 0, suffix: "sub/f"))
        // The entry is real, the path goes through the symlink.
        let real = storage(s.sub("real"))
        #expect(try real.abstractPath(for: s.sub("link/sub/f")) == AbstractPath(index: 0, suffix: "sub/f"))
        // `.` and `..` are resolved; a `..` that leaves the entry is outside.
        #expect(try real.abstractPath(for: s.sub("real/sub/./../sub/f")) == AbstractPath(index: 0, suffix: "sub/f"))
        _ = expectStorageError(.outsideMirroredStorage) { _ = try real.abstractPath(for: s.sub("real/../elsewhere")) }
        // A path that does not exist yet is standardised.
        #expect(try real.abstractPath(for: s.sub("real/new/../newer/g")) == AbstractPath(index: 0, suffix: "newer/g"))
    }

    @Test func globSuffixIsKept() throws {
        let s = try Scratch()
        try s.file("real/data/x1.txt")
        try s.link("link", to: s.sub("real"))
        let m = storage(s.sub("real"))
        #expect(try m.abstractPath(for: s.sub("link/data/*.txt")) == AbstractPath(index: 0, suffix: "data/*.txt"))
        #expect(try m.abstractPath(for: s.sub("real/d*/x?.[tx]xt")) == AbstractPath(index: 0, suffix: "d*/x?.[tx]xt"))
        let worker = storage(s.sub("other"))
        #expect(try worker.localPath(for: AbstractPath(index: 0, suffix: "data/*.txt")) == s.sub("other/data/*.txt"))
        let (literal, pattern) = try worker.localPattern(for: AbstractPath(index: 0, suffix: "data/*.txt"))
        #expect(literal == s.sub("other/data") && pattern == "*.txt")
    }

    @Test func globCharactersInWorkerFolderAreLiteral() throws {
        let s = try Scratch()
        try s.file("run[1]/data/a.txt")
        try s.file("run1/data/b.txt")  // what `run[1]` would match as a pattern
        let worker = storage(s.sub("run[1]"))
        let (literal, pattern) = try worker.localPattern(for: AbstractPath(index: 0, suffix: "data/*.txt"))
        #expect(Glob.expand(literal: literal, pattern: pattern) == [s.sub("run[1]/data/a.txt")])
    }

    @Test func badIndexNamesIndexAndList() throws {
        let s = try Scratch()
        try s.dir("w")
        let worker = storage(s.sub("w"))
        let error = expectStorageError(.badMirroredIndex) {
            _ = try worker.localPath(for: AbstractPath(index: 3, suffix: "x"))
        }
        #expect(error?.description.contains("index 3") == true)
        #expect(error?.description.contains("PARALLEL_MIRRORED_STORAGE=\(s.sub("w"))") == true)
        _ = expectStorageError(.invalidPath) { _ = try worker.localPath(for: AbstractPath(index: 0, suffix: "../x")) }
    }
}

// MARK: - Mirror specification

@Suite struct MirrorSpecificationTests {
    @Test func targetValidation() throws {
        #expect(try StorageRequest.validateTarget(".", subject: "mirror target") == "")
        #expect(try StorageRequest.validateTarget("a/../b", subject: "mirror target") == "b")
        #expect(try StorageRequest.validateTarget("./x/y/", subject: "mirror target") == "x/y")
        let abs = expectStorageError(.invalidTarget) {
            _ = try StorageRequest.validateTarget("/etc", subject: "mirror target")
        }
        #expect(abs?.description == "mirror target /etc must be relative to the local storage folder")
        _ = expectStorageError(.invalidTarget) {
            _ = try StorageRequest.validateTarget("../x", subject: "mirror target")
        }
        let esc = expectStorageError(.invalidTarget) {
            _ = try StorageRequest.validateTarget("a/../../x", subject: "mirror target")
        }
        #expect(esc?.description.contains("a/../../x") == true)
    }

    @Test func mirrorMapValidation() throws {
        let s = try Scratch()
        try s.file("shared/in/a.txt")
        try s.file("outside/b.txt")
        let m = storage(s.sub("shared"))
        let (request, warnings) = try StorageRequest.make(
            mirrorMap: [s.sub("shared/in/*.txt"): "inputs", s.sub("shared/in"): "."],
            mirrored: m,
            spawner: identity
        )
        #expect(warnings.isEmpty)
        #expect(
            request.mirror == [
                MirrorEntry(source: AbstractPath(index: 0, suffix: "in"), target: ""),
                MirrorEntry(source: AbstractPath(index: 0, suffix: "in/*.txt"), target: "inputs"),
            ]
        )
        let outside = expectStorageError(.outsideMirroredStorage) {
            _ = try StorageRequest.make(mirrorMap: [s.sub("outside/b.txt"): "."], mirrored: m, spawner: identity)
        }
        #expect(
            outside?.description.hasPrefix("mirror source \(s.sub("outside/b.txt")) is outside every mirrored folder")
                == true
        )
        _ = expectStorageError(.invalidTarget) {
            _ = try StorageRequest.make(mirrorMap: [s.sub("shared/in"): "/abs"], mirrored: m, spawner: identity)
        }
        let missing = expectStorageError(.missingSource) {
            _ = try StorageRequest.make(mirrorMap: [s.sub("shared/in/*.csv"): "."], mirrored: m, spawner: identity)
        }
        #expect(missing?.description.contains("matches nothing") == true)
        let (warned, list) = try StorageRequest.make(
            mirrorMap: [s.sub("shared/in/*.csv"): ".", s.sub("shared/in/a.txt"): "."],
            mirrored: m,
            missing: .warn,
            spawner: identity
        )
        #expect(warned.mirror.count == 1)
        #expect(list.count == 1 && list[0].contains("*.csv"))
    }

    @Test func startupDirHandling() throws {
        let s = try Scratch()
        try s.dir("shared/work")
        let m = storage(s.sub("shared"))
        let (withMirror, _) = try StorageRequest.make(
            mirrorMap: [s.sub("shared/work"): "."],
            startupDir: "work/./",
            mirrored: m,
            spawner: identity
        )
        #expect(withMirror.startupDir == "work" && withMirror.startupAbstract == nil)
        _ = expectStorageError(.invalidTarget) {
            _ = try StorageRequest.make(
                mirrorMap: [s.sub("shared/work"): "."],
                startupDir: "../x",
                mirrored: m,
                spawner: identity
            )
        }
        let (translated, _) = try StorageRequest.make(
            mirrorMap: nil,
            startupDir: s.sub("shared/work"),
            mirrored: m,
            spawner: identity
        )
        #expect(translated.startupAbstract == AbstractPath(index: 0, suffix: "work"))
        let (raw, _) = try StorageRequest.make(
            mirrorMap: nil,
            startupDir: "/anywhere",
            translateStartupDir: false,
            mirrored: m,
            spawner: identity
        )
        #expect(raw.startupDir == "/anywhere" && raw.startupAbstract == nil)
        // Codable round trip: this is what travels with a spawn request.
        let data = try JSONEncoder().encode(withMirror)
        #expect(try JSONDecoder().decode(StorageRequest.self, from: data) == withMirror)
    }

    @Test func spawnerIdentity() {
        let text = "1234 (my (odd) proc) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21"
        #expect(SpawnerIdentity.processStartTime(statText: text) == 987654)
        #expect(SpawnerIdentity.processStartTime(statText: nil) == nil)
        #expect(SpawnerIdentity.processStartTime(statText: "garbage") == nil)
        let me = SpawnerIdentity.current()
        #expect(me.pid == getpid())
        #expect(me.startTime > 0)
        #expect(me == SpawnerIdentity.current())
        #expect(!me.bootID.isEmpty)  // Linux with /proc
    }
}

// MARK: - Local storage root

@Suite struct LocalStorageRootTests {
    @Test func resolutionAndCreation() throws {
        let s = try Scratch()
        let root = try LocalStorageRoot(environment: ["PARALLEL_LOCAL_STORAGE": "~/deep/local", "HOME": s.sub("home")])
        #expect(root.path == s.sub("home/deep/local"))
        #expect(root.userFolder == s.sub("home/deep/local/\(root.userFolderName)"))
        #expect(root.userFolderName.hasPrefix("parallelvm-"))
        #expect(mode(root.userFolder) == 0o700)
        let viaTmp = try LocalStorageRoot(environment: ["TMPDIR": s.sub("tmpdir")])
        #expect(viaTmp.path == s.sub("tmpdir"))
        try s.link("lnk", to: s.sub("tmpdir"))
        let viaLink = try LocalStorageRoot(environment: ["PARALLEL_LOCAL_STORAGE": s.sub("lnk")])
        #expect(viaLink.path == s.sub("tmpdir"))
    }

    @Test func unwritableRootIsAClearError() throws {
        let s = try Scratch()
        try s.file("plainfile")
        let error = expectStorageError(.unwritableRoot) {
            _ = try LocalStorageRoot(environment: ["PARALLEL_LOCAL_STORAGE": s.sub("plainfile/sub")])
        }
        #expect(error?.description.contains(s.sub("plainfile")) == true)
        #expect(
            error?.description.contains("Not a directory") == true
                || error?.description.contains("not a directory") == true
        )
        // A symlink planted where the per-user folder belongs is refused, not followed.
        try s.dir("root")
        try s.dir("elsewhere")
        try s.link("root/parallelvm-victim", to: s.sub("elsewhere"))
        _ = expectStorageError(.unwritableRoot) {
            _ = try LocalStorageRoot(environment: ["PARALLEL_LOCAL_STORAGE": s.sub("root")], userName: "victim")
        }
    }
}

// MARK: - Task storage

@Suite struct TaskStorageTests {
    /// A shared tree: proj/{main.txt, exec.sh (0751), sub/deep.txt, link -> sub/deep.txt, ro/ (0555)}, single.txt.
    private func makeSource(_ s: Scratch, at folder: String = "shared") throws {
        try s.file("\(folder)/proj/main.txt", "main")
        try s.file("\(folder)/proj/exec.sh", "#!/bin/sh", mode: 0o751)
        try s.file("\(folder)/proj/sub/deep.txt", "deep")
        try s.link("\(folder)/proj/link", to: "sub/deep.txt")
        try s.link("\(folder)/proj/abs-link", to: "/nonexistent/target")
        try s.file("\(folder)/proj/ro/r.txt", "r")
        chmod(s.sub("\(folder)/proj/ro"), 0o555)
        try s.file("\(folder)/single.txt", "single")
    }

    private func request(
        _ map: [String: String],
        _ m: MirroredStorage,
        persistent: Bool = false,
        startupDir: String? = nil,
        spawner: SpawnerIdentity = identity
    ) throws -> StorageRequest {
        try StorageRequest.make(
            mirrorMap: map,
            startupDir: startupDir,
            persistent: persistent,
            vmIndex: 3,
            mirrored: m,
            spawner: spawner
        ).request
    }

    @Test func folderNamingAndNumericSuffix() throws {
        let s = try Scratch()
        let root = try localRoot(s)
        let req = StorageRequest(
            mirror: [],
            startupDir: nil,
            translateStartupDir: false,
            startupAbstract: nil,
            persistent: false,
            vmIndex: 3,
            spawner: SpawnerIdentity(host: "node/1", pid: 99, startTime: 1, bootID: "b")
        )
        #expect(TaskStorage.baseName(for: req, workerHost: "w/2") == "node_1-99-3@w_2")
        let fd = open(root.userFolder, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        let record = OwnerRecord(maker: SpawnerIdentity.current(), spawner: req.spawner, vmIndex: 3)
        func reserve() throws -> String {
            try TaskStorage.reserveName(base: "h-1-0", in: fd, userFolder: root.userFolder, record: record).name
        }
        #expect(try reserve() == "h-1-0-1")
        #expect(try reserve() == "h-1-0-2")
        // The sidecar reserves a name; a folder of that name left by something else is skipped too.
        try FileManager.default.removeItem(atPath: root.userFolder + "/.h-1-0-1.parallelvm")
        #expect(try reserve() == "h-1-0-1")
        #expect(mkdir(root.userFolder + "/h-1-0-3", 0o700) == 0)
        #expect(try reserve() == "h-1-0-4")
        #expect(ownerRecord(root, "h-1-0-4") == record)
    }

    @Test func prepareAndCleanupNonPersistent() throws {
        let s = try Scratch()
        try makeSource(s)
        let m = storage(s.sub("shared"))
        let root = try localRoot(s)
        let req = try request(
            [s.sub("shared/proj"): ".", s.sub("shared/*.txt"): "inputs/x/.."],
            m,
            startupDir: "proj/sub"
        )
        var served = PersistentFolders()
        let first = try TaskStorage.prepare(req, mirrored: m, root: root, servedBefore: &served, options: workerOptions())
        let second = try TaskStorage.prepare(req, mirrored: m, root: root, servedBefore: &served, options: workerOptions())
        let folder = try #require(first.folder)
        #expect(folder == root.userFolder + "/spawnhost-4242-3@workerhost-1")
        #expect(second.folder == root.userFolder + "/spawnhost-4242-3@workerhost-2")
        #expect(first.workingDirectory == folder + "/proj/sub")
        #expect(!first.reused && first.files == 5 && first.bytes == UInt64("main#!/bin/shdeeprsingle".utf8.count))
        #expect(read(folder + "/proj/main.txt") == "main")
        #expect(read(folder + "/proj/sub/deep.txt") == "deep")
        #expect(read(folder + "/inputs/single.txt") == "single")
        #expect(isSymlink(folder + "/proj/link"))
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: folder + "/proj/link") == "sub/deep.txt")
        #expect(isSymlink(folder + "/proj/abs-link"))  // dangling, still copied as a link
        #expect(mode(folder + "/proj/exec.sh") == 0o751)
        #expect(mode(folder + "/proj/ro") == 0o555)
        let record = try #require(ownerRecord(root, "spawnhost-4242-3@workerhost-1"))
        #expect(record.matches(req, maker: workerOptions().maker))
        #expect(record.maker.host == "workerhost" && record.maker.pid == getpid())
        // No staging folder is left behind; the bookkeeping is beside the folders, not in them.
        #expect(
            entries(root.userFolder) == [
                ".spawnhost-4242-3@workerhost-1.parallelvm", ".spawnhost-4242-3@workerhost-2.parallelvm",
                "spawnhost-4242-3@workerhost-1", "spawnhost-4242-3@workerhost-2",
            ]
        )
        #expect(entries(folder + "/proj") == ["abs-link", "exec.sh", "link", "main.txt", "ro", "sub"])
        try first.cleanup()
        try second.cleanup()
        #expect(entries(root.userFolder).isEmpty)
        #expect(read(s.sub("shared/proj/main.txt")) == "main")  // sources untouched
    }

    @Test func noMirroringUsesStartupDir() throws {
        let s = try Scratch()
        try s.dir("spawner/work")
        try s.dir("worker/work")
        let root = try localRoot(s)
        var served = PersistentFolders()
        let (req, _) = try StorageRequest.make(
            mirrorMap: nil,
            startupDir: s.sub("spawner/work"),
            mirrored: storage(s.sub("spawner")),
            spawner: identity
        )
        let p = try TaskStorage.prepare(req, mirrored: storage(s.sub("worker")), root: root, servedBefore: &served)
        #expect(p.workingDirectory == s.sub("worker/work") && p.folder == nil)
        let (none, _) = try StorageRequest.make(mirrorMap: [:], mirrored: storage(s.sub("spawner")), spawner: identity)
        #expect(
            try TaskStorage.prepare(none, mirrored: storage(s.sub("worker")), root: root, servedBefore: &served)
                .workingDirectory == nil
        )
        try p.cleanup()  // nothing to remove
        #expect(exists(s.sub("worker/work")))
    }

    @Test func sharedStorageSeenAtTwoPaths() throws {
        let s = try Scratch()
        try makeSource(s, at: "spawnerView")
        try makeSource(s, at: "workerView")
        let spawnerSide = storage(s.sub("spawnerView"))
        let workerSide = storage(s.sub("workerView"))
        let req = try request([s.sub("spawnerView/proj/*.txt"): "."], spawnerSide)
        // Prove the files come from the worker's path: the spawner's copy disappears.
        chmod(s.sub("spawnerView/proj/ro"), 0o755)
        try FileManager.default.removeItem(atPath: s.sub("spawnerView"))
        var served = PersistentFolders()
        let p = try TaskStorage.prepare(req, mirrored: workerSide, root: try localRoot(s), servedBefore: &served)
        let folder = try #require(p.folder)
        #expect(read(folder + "/main.txt") == "main")
        #expect(p.files == 1)
        try p.cleanup()
    }

    @Test func persistentStorageIsReused() throws {
        let s = try Scratch()
        try makeSource(s)
        let m = storage(s.sub("shared"))
        let root = try localRoot(s)
        let req = try request([s.sub("shared/proj"): "."], m, persistent: true)
        let options = workerOptions(pid: 555)
        var served = PersistentFolders()
        let folder = root.userFolder + "/spawnhost-4242-3@workerhost-w555"
        let firstFiles: Int
        do {
            let first = try TaskStorage.prepare(req, mirrored: m, root: root, servedBefore: &served, options: options)
            #expect(first.folder == folder)
            #expect(!first.reused && first.files > 0)
            firstFiles = first.files
            try first.cleanup()  // persistent: stays
            #expect(exists(folder))
            try s.file("local/\(root.userFolderName)/spawnhost-4242-3@workerhost-w555/sentinel", "keep")
            let second = try TaskStorage.prepare(req, mirrored: m, root: root, servedBefore: &served, options: options)
            #expect(second.reused && second.files == 0 && second.folder == folder)
            #expect(read(folder + "/sentinel") == "keep")
            // While this worker process lives its persistent folder is leased: clearing leaves it.
            let report = root.clear()
            #expect(report.failures[folder]?.contains("persistent storage of worker process 555") == true)
            #expect(exists(folder + "/sentinel"))
        }
        // The worker process ends (its leases go with it); a new one with the same PID mirrors afresh.
        served.releaseAll()
        var freshServed = PersistentFolders()
        let third = try TaskStorage.prepare(req, mirrored: m, root: root, servedBefore: &freshServed, options: options)
        #expect(!third.reused && third.files == firstFiles)
        #expect(!exists(folder + "/sentinel"))
        #expect(read(folder + "/proj/main.txt") == "main")
    }

    @Test func staleFolderWithSameNameIsNotReused() throws {
        let s = try Scratch()
        try makeSource(s)
        let m = storage(s.sub("shared"))
        let root = try localRoot(s)
        let options = workerOptions(pid: 556)
        // An earlier spawner run with the same host and PID but another start time left this folder.
        var earlier = identity
        earlier.startTime = 1
        let stale = try request([s.sub("shared/proj"): "."], m, persistent: true, spawner: earlier)
        var served = PersistentFolders()
        _ = try TaskStorage.prepare(stale, mirrored: m, root: root, servedBefore: &served, options: options)
        let folder = root.userFolder + "/spawnhost-4242-3@workerhost-w556"
        try s.file("local/\(root.userFolderName)/spawnhost-4242-3@workerhost-w556/stale-marker")
        // Even if this worker believes it served the current VM, the record does not match.
        let current = try request([s.sub("shared/proj"): "."], m, persistent: true)
        served.served.insert(current.vmKey)
        let p = try TaskStorage.prepare(current, mirrored: m, root: root, servedBefore: &served, options: options)
        #expect(!p.reused && p.folder == folder)
        #expect(!exists(folder + "/stale-marker"))
        let record = try #require(ownerRecord(root, "spawnhost-4242-3@workerhost-w556"))
        #expect(record.spawner.startTime == 777)
        // A folder without an owner record is not accepted either.
        try FileManager.default.removeItem(atPath: root.userFolder + "/.spawnhost-4242-3@workerhost-w556.parallelvm/owner")
        try s.file("local/\(root.userFolderName)/spawnhost-4242-3@workerhost-w556/stale-marker")
        let again = try TaskStorage.prepare(current, mirrored: m, root: root, servedBefore: &served, options: options)
        #expect(!again.reused && !exists(folder + "/stale-marker"))
    }

    @Test(arguments: [false, true])
    func failureMidCopyLeavesNothing(persistent: Bool) throws {
        let s = try Scratch()
        try makeSource(s)
        #expect(mkfifo(s.sub("shared/proj/sub/zz-fifo"), 0o644) == 0)
        let m = storage(s.sub("shared"))
        let root = try localRoot(s)
        var served = PersistentFolders()
        let req = try request([s.sub("shared/proj"): "."], m, persistent: persistent)
        let error = expectStorageError(.unsupportedFileType) {
            _ = try TaskStorage.prepare(req, mirrored: m, root: root, servedBefore: &served)
        }
        #expect(error?.path == s.sub("shared/proj/sub/zz-fifo"))
        #expect(entries(root.userFolder).isEmpty)
        #expect(served.isEmpty)

        // An injected failure (think ENOSPC) after two files.
        unlink(s.sub("shared/proj/sub/zz-fifo"))
        var options = TaskStorage.Options()
        options.afterFile = { n in
            if n == 2 {
                throw StorageError(.ioFailure, path: "injected", reason: "could not be copied: No space left on device")
            }
        }
        options.parallelism = 1
        let injected = expectStorageError(.ioFailure) {
            _ = try TaskStorage.prepare(req, mirrored: m, root: root, servedBefore: &served, options: options)
        }
        #expect(injected?.reason.contains("No space") == true)
        #expect(entries(root.userFolder).isEmpty)
    }

    @Test func missingSourceOnWorkerFailsCleanly() throws {
        let s = try Scratch()
        try makeSource(s, at: "spawnerView")
        try s.dir("workerView")
        let req = try request([s.sub("spawnerView/proj/*.txt"): "."], storage(s.sub("spawnerView")))
        let root = try localRoot(s)
        var served = PersistentFolders()
        let error = expectStorageError(.missingSource) {
            _ = try TaskStorage.prepare(req, mirrored: storage(s.sub("workerView")), root: root, servedBefore: &served)
        }
        #expect(error?.path == s.sub("workerView/proj/*.txt"))
        _ = expectStorageError(.badMirroredIndex) {
            _ = try TaskStorage.prepare(
                StorageRequest(
                    mirror: [MirrorEntry(source: AbstractPath(index: 5, suffix: "x"), target: "")],
                    startupDir: nil,
                    translateStartupDir: false,
                    startupAbstract: nil,
                    persistent: false,
                    vmIndex: 0,
                    spawner: identity
                ),
                mirrored: storage(s.sub("workerView")),
                root: root,
                servedBefore: &served
            )
        }
        #expect(entries(root.userFolder).isEmpty)
    }

    @Test func globMatchesCopiedConcurrentlyAndSameNamesInOrder() throws {
        let s = try Scratch()
        for d in 0..<6 { try s.file("shared/runs/r\(d)/data.txt", "run \(d)") }
        try s.file("shared/runs/notes.txt", "notes")
        let m = storage(s.sub("shared"))
        let root = try localRoot(s)
        var served = PersistentFolders()
        var options = TaskStorage.Options()
        options.parallelism = 2
        let req = try request([s.sub("shared/runs/*"): "all", s.sub("shared/runs/r*/data.txt"): "flat"], m)
        let p = try TaskStorage.prepare(req, mirrored: m, root: root, servedBefore: &served, options: options)
        let folder = try #require(p.folder)
        #expect(p.files == 13)
        #expect(entries(folder + "/all") == ["notes.txt", "r0", "r1", "r2", "r3", "r4", "r5"])
        #expect(read(folder + "/all/r4/data.txt") == "run 4")
        // Six matches share the name data.txt: copied in sorted order, so the last one wins.
        #expect(read(folder + "/flat/data.txt") == "run 5")
        try p.cleanup()
    }

    @Test func largeAndManyFilesCopyExactly() throws {
        let s = try Scratch()
        var bytes = [UInt8](repeating: 0, count: 3 << 20)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
        try s.dir("shared")
        try Data(bytes).write(to: URL(fileURLWithPath: s.sub("shared/big.bin")))
        for d in 0..<8 { for f in 0..<20 { try s.file("shared/tree/d\(d)/f\(f)", "file \(d) \(f)") } }
        let m = storage(s.sub("shared"))
        let root = try localRoot(s)
        var served = PersistentFolders()
        let req = try request([s.sub("shared/big.bin"): "data", s.sub("shared/tree"): "."], m)
        let p = try TaskStorage.prepare(req, mirrored: m, root: root, servedBefore: &served)
        let folder = try #require(p.folder)
        #expect(p.files == 161)
        #expect(try Data(contentsOf: URL(fileURLWithPath: folder + "/data/big.bin")) == Data(bytes))
        #expect(read(folder + "/tree/d7/f19") == "file 7 19")
        #expect(entries(folder + "/tree").count == 8)
        try p.cleanup()
        #expect(!exists(folder))
    }
}

// MARK: - Clearing

@Suite struct ClearLocalStorageTests {
    @Test func removesExactlyThePerUserFolderAndFollowsNoLink() throws {
        let s = try Scratch()
        try s.file("outside/precious.txt", "keep")
        let root = try localRoot(s)
        let user = root.userFolder
        try s.file("local/\(root.userFolderName)/h-1-0-1/a/b.txt")
        try s.dir("local/\(root.userFolderName)/.h-1-0-2.staging-abc/half")
        try s.link("local/\(root.userFolderName)/escape", to: s.sub("outside"))
        try s.link("local/\(root.userFolderName)/h-1-0-1/a/inner-escape", to: s.sub("outside"))
        try s.file("local/\(root.userFolderName)/h-1-0-1/ro/f")
        chmod(user + "/h-1-0-1/ro", 0o500)
        try s.file("local/parallelvm-someoneelse/theirs.txt")
        try s.file("local/unrelated.txt")

        let report = root.clear()
        #expect(report.failures.isEmpty, "\(report.failures)")
        #expect(report.removed.contains(user))
        #expect(report.removed.contains(user + "/escape"))
        #expect(report.removed.contains(user + "/.h-1-0-2.staging-abc"))
        #expect(!exists(user))
        #expect(read(s.sub("outside/precious.txt")) == "keep")
        #expect(exists(s.sub("local/parallelvm-someoneelse/theirs.txt")))
        #expect(exists(s.sub("local/unrelated.txt")))
        // Clearing twice is harmless, and storage can be prepared again afterwards.
        #expect(clearLocalStorage(root: root) == ClearReport(host: report.host))
        try root.ensureUserFolder()
        #expect(exists(user))
        let data = try JSONEncoder().encode(report)
        #expect(try JSONDecoder().decode(ClearReport.self, from: data) == report)
    }

    @Test func cleanupDoesNotFollowALinkReplacingTheFolder() throws {
        let s = try Scratch()
        try s.file("shared/in/a.txt")
        try s.file("outside/precious.txt", "keep")
        let m = storage(s.sub("shared"))
        let root = try localRoot(s)
        var served = PersistentFolders()
        let (req, _) = try StorageRequest.make(mirrorMap: [s.sub("shared/in"): "."], mirrored: m, spawner: identity)
        let p = try TaskStorage.prepare(req, mirrored: m, root: root, servedBefore: &served)
        let folder = try #require(p.folder)
        try FileManager.default.removeItem(atPath: folder)
        try FileManager.default.createSymbolicLink(atPath: folder, withDestinationPath: s.sub("outside"))
        try p.cleanup()
        #expect(!exists(folder))
        #expect(read(s.sub("outside/precious.txt")) == "keep")
    }
}
