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
    /// The list a dispatch reads each time, from three variables, is the list of the whole environment.
    @Test func theProcessListIsTheWholeEnvironmentsList() throws {
        let whole = MirroredStorage(environment: ProcessInfo.processInfo.environment)
        let own = MirroredStorage.ofThisProcess()
        #expect(own.entries == whole.entries)
        #expect(own.unsharedEntries == whole.unsharedEntries)
        for path in [whole.entries[0] + "/experiments/sweep", "~/experiments/sweep", "/proc/1"] {
            #expect((try? own.abstractPath(for: path)) == (try? whole.abstractPath(for: path)), "\(path)")
        }
    }

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
        let first = try TaskStorage.prepare(
            req,
            mirrored: m,
            root: root,
            servedBefore: &served,
            options: workerOptions()
        )
        let second = try TaskStorage.prepare(
            req,
            mirrored: m,
            root: root,
            servedBefore: &served,
            options: workerOptions()
        )
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
        try FileManager.default.removeItem(
            atPath: root.userFolder + "/.spawnhost-4242-3@workerhost-w556.parallelvm/owner"
        )
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

// MARK: - Checked system calls

@Suite(.serialized) struct SystemCallTests {
    @Test func aFailedCallNamesTheCallThePathAndErrno() throws {
        let s = try Scratch()
        let path = s.sub("missing/child")
        let error = expectStorageError(.ioFailure) {
            try SystemCall.value("mkdirat") { mkdirat(AT_FDCWD, path, 0o700) }
                .get("created", path: path, subject: "local storage folder")
        }
        #expect(
            error?.description == "local storage folder \(path) could not be created: mkdirat: "
                + "No such file or directory (errno 2)"
        )
        #expect(error?.call == "mkdirat" && error?.errnoCode == ENOENT && error?.path == path)
        // The call and errno travel with the error to the spawner.
        let data = try JSONEncoder().encode(error)
        #expect(try JSONDecoder().decode(StorageError.self, from: data) == error)
    }

    /// What the reading thread saw; written by it before `done` is signalled, read after.
    private final class ReaderState: @unchecked Sendable {
        var thread = pthread_t()
        var attempts = 0
        var result: Result<Int, SystemCallError>?
        let ready = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
    }

    /// Interrupts a `read` blocked on an empty pipe with a real signal (a handler without SA_RESTART),
    /// then writes one byte. The reader is a thread of our own: pool threads block signals.
    private func readInterrupted(retry: Bool) throws -> (Result<Int, SystemCallError>, attempts: Int) {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        action.sa_flags = 0
        sigemptyset(&action.sa_mask)
        var previous = sigaction()
        #expect(sigaction(SIGUSR1, &action, &previous) == 0)
        defer { sigaction(SIGUSR1, &previous, nil) }
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer {
            close(fds[0])
            close(fds[1])
        }
        let state = ReaderState()
        let readEnd = fds[0]
        let reader = Thread {
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGUSR1)
            pthread_sigmask(SIG_UNBLOCK, &set, nil)
            state.thread = pthread_self()
            state.ready.signal()
            var byte: UInt8 = 0
            state.result = SystemCall.value("read", retryOnInterrupt: retry) {
                state.attempts += 1
                return read(readEnd, &byte, 1)
            }
            state.done.signal()
        }
        reader.start()
        state.ready.wait()
        usleep(200_000)
        pthread_kill(state.thread, SIGUSR1)
        usleep(200_000)
        var byte: UInt8 = 42
        #expect(write(fds[1], &byte, 1) == 1)
        state.done.wait()
        return (try #require(state.result), state.attempts)
    }

    @Test func anInterruptedCallIsRetried() throws {
        let (retried, attempts) = try readInterrupted(retry: true)
        #expect(try retried.get() == 1)
        #expect(attempts >= 2, "the signal should have interrupted the first read")
        let (once, _) = try readInterrupted(retry: false)
        #expect(once.failure?.errno == EINTR)
        #expect(once.failure?.text == "read: Interrupted system call (errno 4)")
    }
}

// MARK: - Safety of clearing and removal

/// Runs a program and waits for it; returns its status and what it printed.
private func runProgram(_ path: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    process.waitUntilExit()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    return (process.terminationStatus, output)
}

/// A bind mount made with `mount --bind`, undone by `unmount()`.
private struct BindMount {
    let target: String

    /// Mounts `source` on `target`, or cancels the test (reported as skipped) saying why it cannot.
    init(_ source: String, on target: String) throws {
        self.target = target
        let (status, output) = try runProgram("/usr/bin/mount", ["--bind", source, target])
        if status != 0 {
            let reason = "cannot bind-mount as uid \(geteuid()): mount exited \(status): \(output)"
            print("skipped: \(reason)")
            try Test.cancel(Comment(rawValue: reason))
        }
    }

    func unmount() { _ = try? runProgram("/usr/bin/umount", [target]) }
}

/// Writes a storage folder `name` with one file, and its sidecar with `record` (or `recordText`).
private func plantFolder(
    _ root: LocalStorageRoot,
    _ name: String,
    record: OwnerRecord? = nil,
    recordText: String? = nil,
    sidecar: Bool = true
) throws {
    let folder = root.userFolder + "/" + name
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    try Data("content".utf8).write(to: URL(fileURLWithPath: folder + "/file"))
    guard sidecar else { return }
    let side = root.userFolder + "/." + name + ".parallelvm"
    try FileManager.default.createDirectory(atPath: side, withIntermediateDirectories: true)
    if let text = recordText ?? record?.text {
        try Data(text.utf8).write(to: URL(fileURLWithPath: side + "/owner"))
    }
}

/// A PID that no process has: a child's, after it has been waited for.
private func deadPID() throws -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/true")
    try process.run()
    process.waitUntilExit()
    return process.processIdentifier
}

@Suite(.serialized) struct StorageSafetyTests {
    private func source(_ s: Scratch) throws -> (MirroredStorage, StorageRequest) {
        try s.file("shared/in/a.txt", "alpha")
        let m = storage(s.sub("shared"))
        let (req, _) = try StorageRequest.make(
            mirrorMap: [s.sub("shared/in"): "."],
            vmIndex: 3,
            mirrored: m,
            spawner: identity
        )
        return (m, req)
    }

    /// The storage of a task running now as `holder` (its lease held), under a fresh local root.
    private func runningTaskStorage(_ s: Scratch, holder: String) throws -> (LocalStorageRoot, PreparedStorage) {
        let (m, req) = try source(s)
        let root = try localRoot(s)
        var served = PersistentFolders()
        let prepared = try TaskStorage.prepare(
            req,
            mirrored: m,
            root: root,
            servedBefore: &served,
            holder: holder,
            options: workerOptions()
        )
        return (root, prepared)
    }

    @Test func clearAndCleanupLeaveABindMountInsideAlone() throws {
        let s = try Scratch()
        try s.file("outside/precious.txt", "keep")
        let (m, req) = try source(s)
        let root = try localRoot(s)
        var served = PersistentFolders()
        let folder = root.userFolder + "/spawnhost-4242-3@workerhost-1"
        var prepared: PreparedStorage? = try TaskStorage.prepare(
            req,
            mirrored: m,
            root: root,
            servedBefore: &served,
            options: workerOptions()
        )
        #expect(prepared?.folder == folder)
        try s.dir("local/\(root.userFolderName)/\(PathUtil.lastComponent(folder))/mnt")
        let mount = try BindMount(s.sub("outside"), on: folder + "/mnt")
        defer { mount.unmount() }

        // A task's cleanup stops at the mount point and names it; then the task ends (and its lease).
        let error = expectStorageError(.ioFailure) { try prepared?.cleanup() }
        prepared = nil
        #expect(error?.path == folder + "/mnt")
        #expect(error?.description.contains("is a mount point") == true, "\(String(describing: error))")
        #expect(read(s.sub("outside/precious.txt")) == "keep")
        #expect(read(folder + "/mnt/precious.txt") == "keep")

        // Clearing too: the rest goes, the mount point and what leads to it stay, and are reported.
        let report = root.clear()
        #expect(report.failures[folder + "/mnt"] == TreeRemover.mountPointReason, "\(report)")
        #expect(!report.removed.contains(root.userFolder))
        #expect(read(s.sub("outside/precious.txt")) == "keep")
        #expect(!exists(folder + "/in/a.txt"))

        // Once it is unmounted, the folder can go.
        mount.unmount()
        let after = root.clear()
        #expect(after.failures.isEmpty, "\(after)")
        #expect(!exists(root.userFolder))
        #expect(read(s.sub("outside/precious.txt")) == "keep")
    }

    @Test func aRunningTasksFolderSurvivesClearAndSaysWhoUsesIt() throws {
        let s = try Scratch()
        let (root, p) = try runningTaskStorage(s, holder: "task 1:7")
        let folder = try #require(p.folder)
        let report = root.clear()
        #expect(
            report.failures[folder] == "is in use by task 1:7 of run spawnhost:4242 (VM 3) on host workerhost",
            "\(report)"
        )
        #expect(read(folder + "/in/a.txt") == "alpha")
        #expect(exists(root.userFolder))
        // Stale removal does not touch it either (its maker, this process, lives).
        #expect(root.removeStale().removed.isEmpty)
        try p.cleanup()
        #expect(entries(root.userFolder).isEmpty)
    }

    @Test func theLastOfTwoClearersRemovesTheUserFolder() throws {
        // Two ranks of a host clear at once: this one finds the other's folder in use, and the other
        // removes it and tries the user folder before this one is done. This one must remove it then.
        let s = try Scratch()
        let (root, p) = try runningTaskStorage(s, holder: "task 1:8")
        let folder = try #require(p.folder)
        var cleaned = false
        let report = root.clear(beforeRemovingUserFolder: {
            cleaned = (try? p.cleanup()) != nil
        })
        #expect(cleaned)
        #expect(report.failures[folder]?.hasPrefix("is in use by task 1:8") == true, "\(report)")
        #expect(report.failures[root.userFolder] == nil, "\(report)")
        #expect(report.removed.contains(root.userFolder), "\(report)")
        #expect(!exists(root.userFolder))
    }

    @Test func aWorkersClearingCreatesNothingAndFindsNothingMissing() throws {
        // The ranks of a host clear at once; one of them may find the user folder (or the whole root)
        // gone already. That is no failure, and nothing is made just to be removed.
        let s = try Scratch()
        let absent = ["PARALLEL_LOCAL_STORAGE": s.path + "/never/made"]
        let none = Worker.clearLocalStorageHere(environment: absent)
        #expect(none.failures.isEmpty && none.removed.isEmpty, "\(none)")
        #expect(!exists(s.path + "/never"))

        let (root, p) = try runningTaskStorage(s, holder: "task 1:9")
        try p.cleanup()
        let environment = ["PARALLEL_LOCAL_STORAGE": root.path]
        let first = Worker.clearLocalStorageHere(environment: environment)
        #expect(first.failures.isEmpty && first.removed == [root.userFolder], "\(first)")
        let second = Worker.clearLocalStorageHere(environment: environment)
        #expect(second.failures.isEmpty && second.removed.isEmpty, "\(second)")
        #expect(!exists(root.userFolder))
        #expect(exists(root.path))
    }

    @Test func aLeaseHeldByAnotherProcessProtectsTheFolderUntilThatProcessDies() throws {
        let s = try Scratch()
        let (m, req) = try source(s)
        let root = try localRoot(s)
        var served = PersistentFolders()
        let folder: String
        do {
            // The task's storage stays behind without its lease (as after a crash of its worker).
            let p = try TaskStorage.prepare(
                req,
                mirrored: m,
                root: root,
                servedBefore: &served,
                options: workerOptions()
            )
            folder = try #require(p.folder)
        }
        let name = PathUtil.lastComponent(folder)
        // Make its record name a dead maker, so only the lease keeps it.
        let dead = OwnerRecord(
            maker: ProcessIdentity(host: PathUtil.hostName(), pid: try deadPID(), startTime: 1, bootID: ""),
            spawner: identity,
            vmIndex: 3
        )
        try Data(dead.text.utf8).write(to: URL(fileURLWithPath: root.userFolder + "/.\(name).parallelvm/owner"))

        let holder = Process()
        // One process (the shell, then sleep in its place) opens the lease file, locks it and holds it.
        holder.executableURL = URL(fileURLWithPath: "/bin/sh")
        holder.arguments = [
            "-c", "exec 9<>\"$0\" && flock 9 && echo locked && exec sleep 60",
            root.userFolder + "/.\(name).parallelvm/lease",
        ]
        let pipe = Pipe()
        holder.standardOutput = pipe
        try holder.run()
        defer {
            if holder.isRunning { kill(holder.processIdentifier, SIGKILL) }
            holder.waitUntilExit()
        }
        let line = String(decoding: pipe.fileHandleForReading.availableData, as: UTF8.self)
        #expect(line.hasPrefix("locked"))

        #expect(root.removeStale().removed.isEmpty)
        let report = root.clear()
        #expect(report.failures[folder]?.hasPrefix("is in use by") == true, "\(report)")
        #expect(read(folder + "/in/a.txt") == "alpha")

        kill(holder.processIdentifier, SIGKILL)
        holder.waitUntilExit()
        let stale = root.removeStale()
        #expect(stale.failures.isEmpty, "\(stale)")
        #expect(stale.removed.contains(folder) && stale.removed.contains(root.userFolder + "/.\(name).parallelvm"))
        #expect(entries(root.userFolder).isEmpty)
    }

    @Test func aUserFileNamedLikeTheBookkeepingIsMirroredUntouched() throws {
        let s = try Scratch()
        try s.file("shared/in/.parallelvm-owner", "mine")
        try s.file("shared/in/sub/.parallelvm-owner", "mine too")
        try s.file("shared/in/lease", "not a lock")
        let m = storage(s.sub("shared"))
        let root = try localRoot(s)
        let (req, _) = try StorageRequest.make(
            mirrorMap: [s.sub("shared/in"): "."],
            persistent: true,
            mirrored: m,
            spawner: identity
        )
        var served = PersistentFolders()
        let first = try TaskStorage.prepare(req, mirrored: m, root: root, servedBefore: &served)
        let folder = try #require(first.folder)
        #expect(read(folder + "/in/.parallelvm-owner") == "mine")
        #expect(read(folder + "/in/sub/.parallelvm-owner") == "mine too")
        #expect(read(folder + "/in/lease") == "not a lock")
        #expect(entries(folder) == ["in"])
        // The record beside it still lets the next task reuse the folder.
        let second = try TaskStorage.prepare(req, mirrored: m, root: root, servedBefore: &served)
        #expect(second.reused && read(folder + "/in/.parallelvm-owner") == "mine")
    }

    @Test func staleRemovalTakesOnlyFoldersOfProvablyGoneMakers() throws {
        let s = try Scratch()
        let root = try localRoot(s)
        let me = SpawnerIdentity.current()
        let host = PathUtil.hostName()
        func record(
            pid: Int32,
            startTime: UInt64 = me.startTime,
            bootID: String = me.bootID,
            host: String = host
        )
            -> OwnerRecord
        {
            OwnerRecord(
                maker: ProcessIdentity(host: host, pid: pid, startTime: startTime, bootID: bootID),
                spawner: identity,
                vmIndex: 0
            )
        }
        let dead = try deadPID()
        try plantFolder(root, "dead-pid", record: record(pid: dead))
        try s.dir("local/\(root.userFolderName)/.dead-pid.staging-1a2b")
        try plantFolder(root, "other-boot", record: record(pid: getpid(), bootID: "an-earlier-boot"))
        try plantFolder(root, "reused-pid", record: record(pid: getpid(), startTime: me.startTime + 1))
        try s.dir("local/\(root.userFolderName)/.half-made.staging-99")
        try plantFolder(root, "half-made", record: record(pid: dead), sidecar: true)
        try FileManager.default.removeItem(atPath: root.userFolder + "/half-made")
        try plantFolder(root, "live", record: record(pid: getpid()))
        try plantFolder(root, "other-host", record: record(pid: dead, host: "another-host"))
        try plantFolder(root, "garbled", recordText: "host=\(host)\npid=notanumber\n")
        try plantFolder(root, "no-record")
        try plantFolder(root, "old-layout", sidecar: false)

        let report = root.removeStale()
        #expect(report.failures.isEmpty, "\(report)")
        let user = root.userFolder
        #expect(
            Set(report.removed) == [
                "\(user)/dead-pid", "\(user)/.dead-pid.staging-1a2b", "\(user)/.dead-pid.parallelvm",
                "\(user)/other-boot", "\(user)/.other-boot.parallelvm",
                "\(user)/reused-pid", "\(user)/.reused-pid.parallelvm",
                "\(user)/.half-made.staging-99", "\(user)/.half-made.parallelvm",
            ]
        )
        #expect(
            entries(user) == [
                ".garbled.parallelvm", ".live.parallelvm", ".no-record.parallelvm", ".other-host.parallelvm",
                "garbled", "live", "no-record", "old-layout", "other-host",
            ]
        )
        #expect(read(user + "/live/file") == "content")
    }

    @Test func workersOnTwoHostsSharingLocalStorageNeverShareAFolder() throws {
        let s = try Scratch()
        let (m, req) = try source(s)
        let (persistentReq, _) = try StorageRequest.make(
            mirrorMap: [s.sub("shared/in"): "."],
            persistent: true,
            vmIndex: 3,
            mirrored: m,
            spawner: identity
        )
        let shared = try localRoot(s)
        var servedA = PersistentFolders()
        var servedB = PersistentFolders()
        let a = workerOptions(pid: 700, host: "node-a")
        let b = workerOptions(pid: 700, host: "node-b")
        let taskA = try TaskStorage.prepare(req, mirrored: m, root: shared, servedBefore: &servedA, options: a)
        let taskB = try TaskStorage.prepare(req, mirrored: m, root: shared, servedBefore: &servedB, options: b)
        #expect(taskA.folder == shared.userFolder + "/spawnhost-4242-3@node-a-1")
        #expect(taskB.folder == shared.userFolder + "/spawnhost-4242-3@node-b-1")
        let keepA = try TaskStorage.prepare(
            persistentReq,
            mirrored: m,
            root: shared,
            servedBefore: &servedA,
            options: a
        )
        let keepB = try TaskStorage.prepare(
            persistentReq,
            mirrored: m,
            root: shared,
            servedBefore: &servedB,
            options: b
        )
        #expect(keepA.folder == shared.userFolder + "/spawnhost-4242-3@node-a-w700")
        #expect(keepB.folder == shared.userFolder + "/spawnhost-4242-3@node-b-w700")
        try taskA.cleanup()
        #expect(read(try #require(taskB.folder) + "/in/a.txt") == "alpha")
        try taskB.cleanup()

        // Reuse checks the record's host and boot ID, not only the name.
        let ownerPath = shared.userFolder + "/.spawnhost-4242-3@node-a-w700.parallelvm/owner"
        let original = try #require(read(ownerPath))
        for (field, forged) in [("bootID=", "bootID=an-earlier-boot"), ("host=", "host=node-b")] {
            let text = original.split(separator: "\n").map { $0.hasPrefix(field) ? forged : String($0) }
            try Data((text.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: ownerPath))
            try s.file("local/\(shared.userFolderName)/spawnhost-4242-3@node-a-w700/marker")
            let again = try TaskStorage.prepare(
                persistentReq,
                mirrored: m,
                root: shared,
                servedBefore: &servedA,
                options: a
            )
            #expect(!again.reused, "a record with \(forged) was accepted")
            #expect(!exists(shared.userFolder + "/spawnhost-4242-3@node-a-w700/marker"))
        }
        let last = try TaskStorage.prepare(persistentReq, mirrored: m, root: shared, servedBefore: &servedA, options: a)
        #expect(last.reused)
        withExtendedLifetime((keepA, keepB)) {}
    }

    @Test func aSymlinkMatchedByAGlobIsMirroredAsASymlink() throws {
        let s = try Scratch()
        try s.file("shared/in/a.txt", "alpha")
        try s.file("shared/in/sub/x.txt", "x")
        try s.link("shared/in/to-a", to: "a.txt")
        try s.link("shared/in/to-sub", to: "sub")
        try s.link("shared/in/dangling", to: "/nonexistent/target")
        let m = storage(s.sub("shared"))
        let (req, _) = try StorageRequest.make(mirrorMap: [s.sub("shared/in/*"): "."], mirrored: m, spawner: identity)
        let root = try localRoot(s)
        var served = PersistentFolders()
        let p = try TaskStorage.prepare(req, mirrored: m, root: root, servedBefore: &served)
        let folder = try #require(p.folder)
        #expect(entries(folder) == ["a.txt", "dangling", "sub", "to-a", "to-sub"])
        for (name, target) in [("to-a", "a.txt"), ("to-sub", "sub"), ("dangling", "/nonexistent/target")] {
            #expect(isSymlink(folder + "/" + name), "\(name) was not mirrored as a symlink")
            #expect(try FileManager.default.destinationOfSymbolicLink(atPath: folder + "/" + name) == target)
        }
        #expect(read(folder + "/sub/x.txt") == "x" && !isSymlink(folder + "/sub"))
        #expect(p.files == 2)
        try p.cleanup()
    }

    @Test func entriesAreGroupedByTheFolderTheyBelongTo() {
        #expect(Sidecar.folderName(ofEntry: ".h-1-0-1.parallelvm") == "h-1-0-1")
        #expect(Sidecar.folderName(ofEntry: ".h-1-0-1.staging-ab12") == "h-1-0-1")
        #expect(Sidecar.folderName(ofEntry: "h-1-0-1") == "h-1-0-1")
        #expect(Sidecar.folderName(ofEntry: ".parallelvm") == ".parallelvm")
        #expect(
            FolderGroup.grouping([".a.parallelvm", "b", ".a.staging-1", "a"]) == [
                FolderGroup(name: "a", entries: ["a", ".a.staging-1"], hasSidecar: true),
                FolderGroup(name: "b", entries: ["b"], hasSidecar: false),
            ]
        )
    }
}
