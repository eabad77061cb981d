import Foundation
import Glibc
import Synchronization
import Testing

@testable import ParallelVMStorage

/// A "shared" storage seen at two different paths (two folders with identical content stand in for one
/// share mounted in two places; only `which-mount` tells them apart) and one local storage root per rank.
struct StorageFixture {
    let root: URL
    var shareA: String { root.appendingPathComponent("shareA").path }
    var shareB: String { root.appendingPathComponent("shareB").path }
    var outside: String { root.appendingPathComponent("outside").path }
    func local(_ rank: Int) -> String { root.appendingPathComponent("local\(rank)").path }

    init() throws {
        let manager = FileManager.default
        root = manager.temporaryDirectory.appendingPathComponent("parallelvm-storage-\(UUID().uuidString)")
        for (share, mount) in [("shareA", "A"), ("shareB", "B")] {
            let data = root.appendingPathComponent("\(share)/data")
            try manager.createDirectory(at: data.appendingPathComponent("sub"), withIntermediateDirectories: true)
            try "\(mount)\n".write(to: data.appendingPathComponent("which-mount"), atomically: true, encoding: .utf8)
            try "alpha".write(to: data.appendingPathComponent("a.txt"), atomically: true, encoding: .utf8)
            try "beta".write(to: data.appendingPathComponent("b.txt"), atomically: true, encoding: .utf8)
            try Data(repeating: 7, count: 300_000).write(to: data.appendingPathComponent("sub/c.bin"))
            try manager.createSymbolicLink(
                atPath: data.appendingPathComponent("link").path,
                withDestinationPath: "a.txt"
            )
        }
        try manager.createDirectory(atPath: outside, withIntermediateDirectories: true)
        _ = manager.createFile(atPath: outside + "/keep-me", contents: Data("keep".utf8))
    }

    /// Rank 0 sees the share as shareA, workers as shareB; each rank has its own local storage root.
    func environments(ranks: Int, worker: [String: String] = [:]) -> [[String: String]] {
        (0..<ranks).map { rank in
            var environment = [
                "PARALLEL_MIRRORED_STORAGE": rank == 0 ? shareA : shareB,
                "PARALLEL_LOCAL_STORAGE": local(rank),
            ]
            if rank > 0 { environment.merge(worker) { $1 } }
            return environment
        }
    }

    /// A copy of the share's data that only the spawner is told about (`PARALLEL_UNSHARED_STORAGE`), its
    /// `which-mount` saying `P`; returns the folder to declare.
    func makeUnsharedCopy() throws -> String {
        let unshared = root.appendingPathComponent("private").path
        try FileManager.default.copyItem(atPath: shareA, toPath: unshared)
        try "P\n".write(toFile: unshared + "/data/which-mount", atomically: true, encoding: .utf8)
        return unshared
    }

    func remove() { try? FileManager.default.removeItem(at: root) }
}

/// Local storage and mirroring under mpirun, with a different environment on each rank.
@Suite(.serialized)
struct StorageRunTests {
    @Test(arguments: [2, 3])
    func mirroredFilesArriveFromTheWorkersOwnMountAndAreRemovedAfterTheTask(ranks: Int) throws {
        let fixture = try StorageFixture()
        defer { fixture.remove() }
        let run = try MPIRun.scenario(
            "storage-mirror",
            rankEnvironments: fixture.environments(ranks: ranks),
            arguments: [fixture.shareA + "/data"]
        )
        #expect(run.status == 0, "\(run)")
        #expect(run.value("tasks") == "\(ranks - 1)")
        for slot in 1..<ranks {
            // The worker copied from its own path of the share (B), not the spawner's (A).
            #expect(run.value("mount\(slot)") == "B", "\(run)")
            #expect(
                run.value("entries\(slot)")
                    == "d:data,f:data/a.txt,f:data/b.txt,l:data/link->a.txt,d:data/sub,f:data/sub/c.bin,f:data/which-mount"
            )
            #expect(run.value("inside\(slot)") == "true")
            #expect(run.value("removedAfter\(slot)") == "true")
        }
        #expect(run.value("globEntries") == "f:a.txt,f:b.txt")
        #expect(run.value("globStartsIn") == "true")
        #expect(run.value("globInside") == "true")
    }

    /// A folder only the spawner sees (`PARALLEL_UNSHARED_STORAGE`): its files reach the workers through their
    /// host's mirror cache, once per cache, as hard links; a file changed after the VM read it is refused.
    @Test func filesFromAnUnsharedFolderAreSentOncePerCacheAndLinkedIntoTaskFolders() throws {
        let fixture = try StorageFixture()
        defer { fixture.remove() }
        let manager = FileManager.default
        let unshared = try fixture.makeUnsharedCopy()
        let scratch = unshared + "/scratch"
        try manager.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        var environments = fixture.environments(ranks: 3, worker: ["PARALLEL_LOCAL_STORAGE": fixture.local(1)])
        environments[0]["PARALLEL_UNSHARED_STORAGE"] = unshared
        let run = try MPIRun.scenario(
            "storage-unshared",
            rankEnvironments: environments,
            arguments: [unshared + "/data", scratch]
        )
        #expect(run.status == 0, "\(run)")
        #expect(run.value("tasks") == "4", "\(run)")
        // Offered to each worker rank once; the contents (4 distinct) crossed once, as both ranks share a cache.
        #expect(run.value("mirrorSentEvents") == "2", "\(run)")
        #expect(run.value("contentsSent") == "4", "\(run)")
        #expect(run.value("treeFiles") == "4", "\(run)")
        for slot in 1...2 {
            #expect(
                run.value("entries\(slot)")
                    == "d:data,f:data/a.txt,f:data/b.txt,l:data/link->a.txt,d:data/sub,f:data/sub/c.bin,f:data/which-mount",
                "\(run)"
            )
            // From the spawner's private folder, not from the share the workers see.
            #expect(run.value("mount\(slot)") == "P", "\(run)")
            #expect(run.value("inside\(slot)") == "true")
            #expect(run.value("removedAfter\(slot)") == "true")
        }
        #expect(run.value("linkContent") == "alpha")
        #expect(Int(run.value("linkCount") ?? "") ?? 0 >= 2, "\(run)")
        #expect(run.value("globEntries") == "f:a.txt,f:b.txt", "\(run)")
        #expect(run.value("globStartsIn") == "true")
        #expect(run.value("changedSpawn") == "storage", "\(run)")
        let changed = run.value("changedMessage") ?? ""
        #expect(changed.contains("changing.txt") && changed.contains("changed on the spawner's host"), "\(changed)")
        #expect(run.value("afterwards") == "1")
        // The cache stays for later runs: the four contents, read-only, and no half-received file.
        let cache =
            try LocalStorageRoot(environment: ["PARALLEL_LOCAL_STORAGE": fixture.local(1)]).userFolder
            + "/mirror-cache"
        let blobs = try manager.subpathsOfDirectory(atPath: cache + "/blobs").filter { $0.contains("/") }
        #expect(blobs.count == 4, "\(blobs)")
        #expect(try manager.contentsOfDirectory(atPath: cache + "/incoming").isEmpty)
        // Nothing of the spawner's own is changed, and its local storage has no cache (no task ran there).
        #expect(try String(contentsOfFile: unshared + "/data/a.txt", encoding: .utf8) == "alpha")
    }

    /// Two runs at once whose workers share one host cache: both get every file, the contents end up in the
    /// cache once, and nothing half-received is left.
    @Test func twoRunsAtOnceShareOneMirrorCacheSafely() throws {
        let fixture = try StorageFixture()
        defer { fixture.remove() }
        let manager = FileManager.default
        let unshared = try fixture.makeUnsharedCopy()
        let runs = Mutex<[RunOutput]>([])
        DispatchQueue.concurrentPerform(iterations: 2) { index in
            let scratch = unshared + "/scratch\(index)"
            try? manager.createDirectory(atPath: scratch, withIntermediateDirectories: true)
            var environments = fixture.environments(ranks: 3, worker: ["PARALLEL_LOCAL_STORAGE": fixture.local(1)])
            environments[0]["PARALLEL_UNSHARED_STORAGE"] = unshared
            environments[0]["PARALLEL_LOCAL_STORAGE"] = fixture.local(0) + "-\(index)"
            if let run = try? MPIRun.scenario(
                "storage-unshared",
                rankEnvironments: environments,
                arguments: [unshared + "/data", scratch],
                timeout: 120
            ) {
                runs.withLock { $0.append(run) }
            }
        }
        let finished = runs.withLock { $0 }
        #expect(finished.count == 2)
        var sent = 0
        for run in finished {
            #expect(run.status == 0, "\(run)")
            #expect(run.value("tasks") == "4", "\(run)")
            for slot in 1...2 { #expect(run.value("mount\(slot)") == "P", "\(run)") }
            sent += Int(run.value("contentsSent") ?? "") ?? 0
        }
        // Each content crossed at least once and at most once per run.
        #expect((4...8).contains(sent), "\(sent)")
        let cache =
            try LocalStorageRoot(environment: ["PARALLEL_LOCAL_STORAGE": fixture.local(1)]).userFolder
            + "/mirror-cache"
        #expect(try manager.subpathsOfDirectory(atPath: cache + "/blobs").filter { $0.contains("/") }.count == 4)
        #expect(try manager.contentsOfDirectory(atPath: cache + "/incoming").isEmpty)
    }

    @Test func persistentStorageIsReusedButNeverFromAnotherRunAndClearingRemovesExactlyIt() throws {
        let fixture = try StorageFixture()
        defer { fixture.remove() }
        let run = try MPIRun.scenario(
            "storage-persistent",
            rankEnvironments: fixture.environments(ranks: 2),
            arguments: [fixture.shareA + "/data", fixture.outside]
        )
        #expect(run.status == 0, "\(run)")
        #expect(run.value("firstSentinel") == "false")
        #expect(run.value("reused") == "true")
        #expect(run.value("keptAfterExit") == "true")
        #expect(run.value("staleReused") == "false")
        #expect(run.value("staleRemirrored") == "true")
        #expect(run.value("plantedIsTaskFolder") == "true")
        #expect(run.value("firstServeReused") == "false")
        #expect(run.value("reportHosts") == "1")
        #expect(run.value("reportFailures") == "0")
        #expect(run.value("removedTaskFolder") == "true")
        #expect(run.value("taskFolderGone") == "true")
        #expect(run.value("userFolderGone") == "true")
        #expect(run.value("outsideSurvives") == "true")
        #expect(run.value("afterClear") == "true")
        #expect(FileManager.default.fileExists(atPath: fixture.outside + "/keep-me"))
    }

    @Test func foldersOfDeadRunsAreRemovedOnEveryRankWhenTheVMStarts() throws {
        let fixture = try StorageFixture()
        defer { fixture.remove() }
        let me = SpawnerIdentity.current()
        let ended = Process()
        ended.executableURL = URL(fileURLWithPath: "/bin/true")
        try ended.run()
        ended.waitUntilExit()
        func plant(_ rank: Int, _ name: String, maker pid: Int32, host: String = me.host) throws -> String {
            let root = try LocalStorageRoot(environment: ["PARALLEL_LOCAL_STORAGE": fixture.local(rank)])
            let record = OwnerRecord(
                maker: ProcessIdentity(host: host, pid: pid, startTime: me.startTime, bootID: me.bootID),
                spawner: me,
                vmIndex: 0
            )
            let side = root.userFolder + "/." + name + ".parallelvm"
            try FileManager.default.createDirectory(
                atPath: root.userFolder + "/" + name,
                withIntermediateDirectories: true
            )
            try FileManager.default.createDirectory(atPath: side, withIntermediateDirectories: true)
            try Data(record.text.utf8).write(to: URL(fileURLWithPath: side + "/owner"))
            return root.userFolder + "/" + name
        }
        var dead: [String] = []
        var kept: [String] = []
        for rank in 0..<2 {
            dead.append(try plant(rank, "dead-run", maker: ended.processIdentifier))
            kept.append(try plant(rank, "live-run", maker: getpid()))  // this test process lives on
            kept.append(try plant(rank, "other-host", maker: ended.processIdentifier, host: "another-host"))
        }
        let run = try MPIRun.scenario(
            "storage-worker-errors",
            rankEnvironments: fixture.environments(ranks: 2),
            arguments: [fixture.shareA + "/data"]
        )
        #expect(run.status == 0, "\(run)")
        for path in dead { #expect(!FileManager.default.fileExists(atPath: path), "\(path) was left") }
        for path in kept { #expect(FileManager.default.fileExists(atPath: path + "/"), "\(path) was removed") }
    }

    @Test func badMirrorSettingsAreRefusedOnTheSpawnerNamingThePath() throws {
        let fixture = try StorageFixture()
        defer { fixture.remove() }
        let run = try MPIRun.scenario(
            "storage-errors",
            ranks: 1,
            arguments: [fixture.shareA],
            environment: ["PARALLEL_MIRRORED_STORAGE": fixture.shareA, "PARALLEL_LOCAL_STORAGE": fixture.local(0)]
        )
        #expect(run.status == 0, "\(run)")
        #expect(
            run.value("outside")?.contains("/definitely/not/shared is outside every mirrored folder") == true,
            "\(run)"
        )
        #expect(run.value("absoluteTarget")?.contains("/etc") == true)
        #expect(run.value("absoluteTarget")?.contains("must be relative") == true, "\(run)")
        #expect(run.value("escapingTarget")?.contains("sub/../../x") == true, "\(run)")
        #expect(run.value("noMatch")?.contains("*.nothing") == true, "\(run)")
        #expect(run.value("noMatchWarn")?.hasPrefix("warnings:") == true, "\(run)")
        #expect(run.value("fineTarget") == "no error")
    }

    @Test func anIndexBeyondTheWorkersMirroredStorageFailsTheTaskOnly() throws {
        let fixture = try StorageFixture()
        defer { fixture.remove() }
        let extra = fixture.root.appendingPathComponent("shareC").path
        try FileManager.default.createDirectory(atPath: extra + "/more", withIntermediateDirectories: true)
        var environments = fixture.environments(ranks: 2)
        environments[0]["PARALLEL_MIRRORED_STORAGE"] = fixture.shareA + ":" + extra
        let run = try MPIRun.scenario(
            "storage-worker-errors",
            rankEnvironments: environments,
            arguments: [extra + "/more"]
        )
        #expect(run.status == 0, "\(run)")
        #expect(run.value("failure")?.contains("index 1") == true, "\(run)")
        #expect(run.value("afterwards") == "succeeded")
    }

    @Test func anUnwritableLocalStorageRootFailsTheTaskNamingThePath() throws {
        let fixture = try StorageFixture()
        defer { fixture.remove() }
        let run = try MPIRun.scenario(
            "storage-worker-errors",
            rankEnvironments: fixture.environments(
                ranks: 2,
                worker: ["PARALLEL_LOCAL_STORAGE": "/proc/parallelvm-cannot-exist"]
            ),
            arguments: [fixture.shareA + "/data"]
        )
        #expect(run.status == 0, "\(run)")
        #expect(run.value("failure")?.contains("/proc/parallelvm-cannot-exist") == true, "\(run)")
        #expect(run.value("afterwards") == "succeeded")
    }

    @Test func aCopyThatFailsLeavesNoFolderBehind() throws {
        let fixture = try StorageFixture()
        defer { fixture.remove() }
        // A FIFO cannot be mirrored; it exists on the worker's side of the share only at copy time.
        for share in [fixture.shareA, fixture.shareB] {
            try FileManager.default.createDirectory(atPath: share + "/pipes", withIntermediateDirectories: true)
            _ = FileManager.default.createFile(atPath: share + "/pipes/plain.txt", contents: Data("x".utf8))
            #expect(mkfifo(share + "/pipes/zz-fifo", 0o600) == 0)
        }
        let run = try MPIRun.scenario(
            "storage-worker-errors",
            rankEnvironments: fixture.environments(ranks: 2),
            arguments: [fixture.shareA + "/pipes"]
        )
        #expect(run.status == 0, "\(run)")
        #expect(run.value("failure")?.contains("zz-fifo") == true, "\(run)")
        #expect(run.value("afterwards") == "succeeded")
        let userFolders = (try? FileManager.default.contentsOfDirectory(atPath: fixture.local(1))) ?? []
        for folder in userFolders {
            let left = try FileManager.default.contentsOfDirectory(atPath: fixture.local(1) + "/" + folder)
            #expect(left.isEmpty, "left behind: \(left)")
        }
    }
}
