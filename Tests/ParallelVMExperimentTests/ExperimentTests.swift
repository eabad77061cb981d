import Foundation
import Glibc
import ParallelVMCodec
import Testing

@testable import ParallelVMExperiment

@Suite("Experiments: names, layout, lock, resume, logs, manifest")
struct ExperimentTests {
    @Test("names are validated", arguments: ["", "a/b", "..", "a..b", ".", "tab\there", "new\nline", "bell\u{7}"])
    func invalidNames(name: String) throws {
        let error = try #require(throws: ExperimentError.self) { try Experiment(name: name, in: "/tmp") }
        #expect(error.code == .invalidName)
    }

    @Test("a valid name gives parent/name, absolute")
    func folder() throws {
        let experiment = try Experiment(name: "run 1 (α)", in: "/data//runs/")
        #expect(experiment.folder == "/data/runs/run 1 (α)")
        #expect(experiment.folderURL.path == "/data/runs/run 1 (α)")
        #expect(experiment.journalPath == "/data/runs/run 1 (α)/journal")
    }

    @Test("open creates the layout, missing parents included")
    func layout() throws {
        let parent = try TemporaryFolder()
        let experiment = try Experiment(name: "e", in: parent.sub("a/b"))
        try experiment.open()
        defer { try? experiment.close() }
        for entry in ["experiment.log", "tasks", "outputs", "journal", "manifest.json", "lock"] {
            #expect(FileManager.default.fileExists(atPath: experiment.folder + "/" + entry), "\(entry)")
        }
        #expect(try experiment.manifest().name == "e")
        let reopen = try #require(throws: ExperimentError.self) { try experiment.open() }
        #expect(reopen.code == .alreadyOpen)
    }

    @Test("a second opener in this process is refused, naming the holder; closing frees the lock")
    func lockInProcess() throws {
        let parent = try TemporaryFolder()
        let first = try Experiment(name: "e", in: parent.path)
        try first.open()
        let second = try Experiment(name: "e", in: parent.path)
        let error = try #require(throws: ExperimentError.self) { try second.open() }
        #expect(error.code == .inUse)
        #expect(error.experiment == "e")
        #expect(error.path == first.folder)
        #expect(error.description.contains("process \(getpid()) on host \(Paths.hostName())"))
        #expect(error.description.contains("started 20"))
        #expect(!second.isOpen)
        try first.close()
        try second.open()
        try second.close()
    }

    @Test("a run in another process holds the lock until it is killed with SIGKILL")
    func lockAcrossProcesses() throws {
        let parent = try TemporaryFolder()
        let (child, line) = try Support.startProbe(parent: parent.path, name: "shared")
        defer {
            if child.isRunning { kill(child.processIdentifier, SIGKILL) }
            child.waitUntilExit()
        }
        #expect(line == "open")
        let experiment = try Experiment(name: "shared", in: parent.path)
        let error = try #require(throws: ExperimentError.self) { try experiment.open() }
        #expect(error.code == .inUse)
        #expect(error.description.contains("experiment shared"))
        #expect(error.description.contains(experiment.folder))
        #expect(error.description.contains("process \(child.processIdentifier) on host"))

        kill(child.processIdentifier, SIGKILL)
        child.waitUntilExit()
        try experiment.open()
        try experiment.close()
        // And the other way round: a child cannot open what this process holds.
        try experiment.open()
        let (refused, refusal) = try Support.startProbe(parent: parent.path, name: "shared")
        refused.waitUntilExit()
        #expect(refusal.hasPrefix("error: experiment shared"))
        #expect(refusal.contains("process \(getpid())"))
        try experiment.close()
    }

    @Test("the farm's key maker gives every job the key it would have alone, across changes of function")
    func keyMakerMatchesSingleKeys() throws {
        var maker = JobKeyMaker()
        let jobs: [(String, [UInt8])] = [
            ("double", try BinaryEncoder.encode(3)), ("double", try BinaryEncoder.encode(4)),
            ("triple", try BinaryEncoder.encode(3)), ("double", try BinaryEncoder.encode(3)),
            ("", []), ("double", []),
        ]
        let made = jobs.map { maker.key(function: $0.0, encodedArguments: $0.1) }
        #expect(made == jobs.map { JobKey(function: $0.0, encodedArguments: $0.1) })
        #expect(made[0] == made[3] && made[0] != made[1] && made[0] != made[2] && made[4] != made[5])
    }

    @Test("resume: same key reused, changed key runs again, failures only when asked, last record wins")
    func resumeTable() throws {
        let key = JobKey(function: "double", encodedArguments: try BinaryEncoder.encode(3))
        #expect(key == JobKey(function: "double", encodedArguments: try BinaryEncoder.encode(3)))
        #expect(key != JobKey(function: "double", encodedArguments: try BinaryEncoder.encode(4)))
        #expect(key != JobKey(function: "triple", encodedArguments: try BinaryEncoder.encode(3)))
        #expect(try key == JobKey(function: "double", arguments: 3))

        var failed = Support.record(1, key: 11, success: false)
        failed.attempts = 1
        var retried = Support.record(2, key: 22)
        retried.attempts = 2
        let table = ResumeTable([
            Support.record(0, key: 10),
            failed,
            Support.record(2, key: 22, success: false), retried,
            Support.record(3, key: 33), Support.record(3, key: 34, success: false),
        ])
        #expect(table.reusable(index: 0, key: JobKey(value: 10))?.index == 0)
        #expect(table.reusable(index: 0, key: JobKey(value: 99)) == nil)
        #expect(table.reusable(index: 1, key: JobKey(value: 11)) == nil)
        #expect(table.reusable(index: 1, key: JobKey(value: 11), includeFailed: true) == failed)
        #expect(table.reusable(index: 2, key: JobKey(value: 22)) == retried)
        #expect(table.reusable(index: 3, key: JobKey(value: 33)) == nil)
        #expect(table.reusable(index: 3, key: JobKey(value: 34), includeFailed: true)?.succeeded == false)
        #expect(table.reusable(index: 4, key: JobKey(value: 44)) == nil)
    }

    @Test("reopening an experiment resumes from its journal, after a torn tail")
    func resumeAfterReopen() throws {
        let parent = try TemporaryFolder()
        let experiment = try Experiment(name: "e", in: parent.path)
        try experiment.open()
        let journal = try experiment.journal()
        for index in 0..<20 { try journal.append(Support.record(index, success: index != 5)) }
        try experiment.close()
        let size = Support.fileSize(experiment.journalPath)
        Support.truncate(experiment.journalPath, to: size - 3)

        try experiment.open()
        defer { try? experiment.close() }
        #expect(try experiment.resumeTable().count == 19)
        #expect(try experiment.reusable(index: 3, key: Support.record(3).key)?.index == 3)
        #expect(try experiment.reusable(index: 5, key: Support.record(5).key) == nil)
        #expect(try experiment.reusable(index: 19, key: Support.record(19).key) == nil)
        let log = try String(contentsOfFile: experiment.logPath, encoding: .utf8)
        #expect(log.contains("the journal holds 19 records; torn last record"))
    }

    @Test("two experiments in one parent, used at once, keep to their own folders")
    func concurrentExperiments() async throws {
        let parent = try TemporaryFolder()
        let names = ["alpha", "beta"]
        let parentPath = parent.path
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (n, name) in names.enumerated() {
                group.addTask {
                    let experiment = try Experiment(name: name, in: parentPath)
                    try experiment.open()
                    let journal = try experiment.journal()
                    for index in 0..<2000 {
                        try journal.append(Support.record(index, key: UInt64(n * 100_000 + index)))
                    }
                    try experiment.log().log("done \(name)")
                    try experiment.taskLog("1:\(n)").log("task of \(name)")
                    try experiment.endRun(counts: Manifest.Counts(ran: 2000))
                    try experiment.close()
                }
            }
            try await group.waitForAll()
        }
        for (n, name) in names.enumerated() {
            let experiment = try Experiment(name: name, in: parent.path)
            let contents = try experiment.readJournal()
            #expect(contents.problem == nil)
            #expect(contents.records.count == 2000)
            #expect(contents.records.allSatisfy { $0.key.value == UInt64(n * 100_000 + $0.index) })
            let log = try String(contentsOfFile: experiment.logPath, encoding: .utf8)
            #expect(log.contains("done \(name)"))
            #expect(!log.contains("done \(names[1 - n])"))
            let tasks = try FileManager.default.contentsOfDirectory(atPath: experiment.tasksFolder)
            #expect(tasks == ["1_\(n).log"])
        }
    }

    @Test("experiment.log lines are timestamped ISO 8601 and reach the file within the flush interval")
    func experimentLog() throws {
        let parent = try TemporaryFolder()
        let experiment = try Experiment(name: "e", in: parent.path)
        try experiment.open()
        defer { try? experiment.close() }
        let log = try experiment.log()
        try log.jobSent(index: 3, task: "1:5", host: "node1")
        try log.jobFinished(Support.record(3, task: "1:5"))
        try log.jobFinished(Support.record(4, success: false))
        try log.log("two\nlines")
        // No flush: the writer's own thread writes the batch about 5 ms after its first line.
        var lines: [Substring] = []
        let deadline = Date().addingTimeInterval(2)
        while Date() < deadline {
            lines = try String(contentsOfFile: experiment.logPath, encoding: .utf8).split(separator: "\n")
            if lines.last == "lines" || lines.last?.hasSuffix(" lines") == true { break }
            usleep(1000)
        }
        let pattern = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z .+$/
        #expect(lines.allSatisfy { $0.wholeMatch(of: pattern) != nil })
        #expect(lines.contains { $0.hasSuffix(" job 3 sent to task 1:5 on host node1") })
        #expect(lines.contains { $0.hasSuffix(" job 3 done in task 1:5 on host host-a after 0.500 s (attempt 1)") })
        #expect(lines.contains { $0.hasSuffix("(attempt 1): Demo.Failure: job 4 failed") })
        #expect(lines.suffix(2).map { $0.split(separator: " ", maxSplits: 1)[1] } == ["two", "lines"])
    }

    @Test("timestamps are exact to the millisecond within a second, across seconds and back in time")
    func timestamps() {
        // 2025-01-31T12:00:00Z, then dates in the same second, the next one, and an earlier one (the
        // text kept for the last second must not leak into another).
        let noon = 1_738_324_800.0
        #expect(Timestamp.format(Date(timeIntervalSince1970: noon + 0.25)) == "2025-01-31T12:00:00.250Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: noon + 0.0)) == "2025-01-31T12:00:00.000Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: noon + 0.9995)) == "2025-01-31T12:00:00.999Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: noon + 1.125)) == "2025-01-31T12:00:01.125Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: noon - 86_400 + 59.5)) == "2025-01-30T12:00:59.500Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: 0.042)) == "1970-01-01T00:00:00.042Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: noon + 0.25)) == "2025-01-31T12:00:00.250Z")
    }

    @Test("job indices are logged as ranges, in the order given")
    func indexRanges() {
        #expect(ExperimentLog.ranges([]) == "")
        #expect(ExperimentLog.ranges([5]) == "5")
        #expect(ExperimentLog.ranges(Array(0...41) + [43] + Array(45...99)) == "0-41, 43, 45-99")
        #expect(ExperimentLog.ranges([3, 2, 7, 8]) == "3, 2, 7-8")
    }

    @Test("task logs: safe names, one file per task, streams tagged, partial lines kept whole")
    func taskLogs() throws {
        #expect(TaskLog.fileName(for: "1:5") == "1_5.log")
        #expect(TaskLog.fileName(for: "1_5") == "1%5F5.log")
        #expect(TaskLog.fileName(for: "../x") == "%2E.%2Fx.log")
        #expect(TaskLog.fileName(for: ".hidden") == "%2Ehidden.log")
        #expect(TaskLog.fileName(for: "a b/c") == "a%20b%2Fc.log")
        #expect(TaskLog.fileName(for: "") == nil)
        #expect(TaskLog.fileName(for: String(repeating: "x", count: 400))!.utf8.count < 255)

        let parent = try TemporaryFolder()
        let experiment = try Experiment(name: "e", in: parent.path)
        try experiment.open()
        let task = try experiment.taskLog("2:7")
        try task.log("starting")
        try task.write("par", to: .stdout)
        try task.write("tial\nnext", to: .stdout)
        try task.write("oops\n", to: .stderr)
        try experiment.taskLog("../escape").log("x")
        try experiment.close()  // closes the task logs: "next" is written then

        let text = try String(contentsOfFile: experiment.tasksFolder + "/2_7.log", encoding: .utf8)
        let lines = text.split(separator: "\n").map { $0.split(separator: " ", maxSplits: 1)[1] }
        #expect(lines[0].hasPrefix("[session] task 2:7 logged by process \(getpid())"))
        #expect(Array(lines.dropFirst()) == ["[log] starting", "[stdout] partial", "[stderr] oops", "[stdout] next"])
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: experiment.tasksFolder).sorted() == [
                "%2E.%2Fescape.log", "2_7.log",
            ]
        )
        #expect(!FileManager.default.fileExists(atPath: parent.path + "/escape.log"))
    }

    @Test("the manifest is written atomically at open, at the start and at the end of a run")
    func manifest() throws {
        let parent = try TemporaryFolder()
        let experiment = try Experiment(name: "e", in: parent.path)
        try experiment.open()
        defer { try? experiment.close() }
        let keys = (0..<10).map { JobKey(function: "f", encodedArguments: [UInt8($0)]) }
        try experiment.beginRun(keys: keys, hosts: ["node1", "node2"])
        var manifest = try readManifest(experiment)
        #expect(manifest.inputs == JobKey.inputsIdentity(of: keys))
        #expect(manifest.inputs != JobKey.inputsIdentity(of: keys.reversed()))
        #expect(manifest.jobs == 10)
        #expect(manifest.ended == nil)
        #expect(manifest.hosts == ["node1", "node2"])
        let json = try String(contentsOfFile: experiment.manifestPath, encoding: .utf8)
        #expect(json.contains("\"ended\" : null"))

        try experiment.endRun(counts: Manifest.Counts(ran: 7, reused: 3, failed: 1))
        manifest = try readManifest(experiment)
        #expect(manifest.counts == Manifest.Counts(ran: 7, reused: 3, failed: 1))
        #expect(manifest.ended != nil)
        #expect(manifest == (try experiment.manifest()))
        // Only the manifest itself: its temporary files were renamed over it.
        let entries = try FileManager.default.contentsOfDirectory(atPath: experiment.folder)
        #expect(!entries.contains { $0.contains("tmp") })
    }

    @Test("the manifest is replaced, not rewritten in place: a reader holding the old one keeps it whole")
    func manifestReplacedByRename() throws {
        let parent = try TemporaryFolder()
        let experiment = try Experiment(name: "e", in: parent.path)
        try experiment.open()
        defer { try? experiment.close() }
        let before = try FileHandle(forReadingFrom: URL(fileURLWithPath: experiment.manifestPath))
        defer { try? before.close() }
        var old = stat()
        fstat(before.fileDescriptor, &old)
        try experiment.beginRun(keys: [JobKey(value: 1)], hosts: ["h"])
        var new = stat()
        stat(experiment.manifestPath, &new)
        #expect(old.st_ino != new.st_ino)
        let oldText = String(decoding: before.readDataToEndOfFile(), as: UTF8.self)
        #expect(oldText.contains("\"jobs\" : 0"))
    }

    @Test("an open that begins a run writes the run's start in the manifest it writes at the open")
    func openBeginningRun() throws {
        let parent = try TemporaryFolder()
        let experiment = try Experiment(name: "e", in: parent.path)
        try experiment.open()
        try experiment.endRun(counts: Manifest.Counts(ran: 2, reused: 0, failed: 0))
        try experiment.close()
        let first = try readManifest(experiment)
        #expect(first.ended != nil)
        // The next run's start is a later timestamp (they have millisecond resolution).
        Thread.sleep(forTimeInterval: 0.01)

        try experiment.open(beginningRunOn: ["node1", "node2"])
        defer { try? experiment.close() }
        let manifest = try readManifest(experiment)
        #expect(manifest.hosts == ["node1", "node2"])
        #expect(manifest.started > first.started)
        #expect(manifest.ended == nil)
        #expect(manifest.counts == Manifest.Counts())
        #expect(manifest.jobs == 0)
        #expect(manifest == (try experiment.manifest()))
    }

    private func readManifest(_ experiment: Experiment) throws -> Manifest {
        try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: experiment.manifestPath)))
    }
}
