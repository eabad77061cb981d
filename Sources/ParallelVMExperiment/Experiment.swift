public import Foundation
import Glibc
import ParallelVMStorage
import Synchronization

/// The experiments open in this process, for `Experiment.syncOpenExperiments(logging:)`.
private let openExperiments = Mutex<[ObjectIdentifier: Experiment]>([:])

/// A named folder that keeps what a parallel run did, so that a later run can resume it.
///
/// The folder `<parent>/<name>/` holds:
/// - `experiment.log`: timestamped lines of what the spawner distributed and when;
/// - `tasks/<task>.log`: one file per task session, with its log lines, standard output and error;
/// - `journal`: every finished job's result, appended as it arrives and readable after a crash
///   (see `JournalReader`, and `JournalWriter` for how often it is written and synced);
/// - `manifest.json`: the identity of the inputs, start and end times, the hosts, the counts;
/// - `outputs/<job>/`: files collected from a job's task folder, each folder published whole;
/// - `lock`: held by the run that has the experiment open, naming it.
///
/// Creating an `Experiment` only checks the name; `open()` creates the folder and takes the lock, so
/// two runs of one experiment never write it at once while different experiments never interfere.
public final class Experiment: Sendable {
    /// The experiment's name, a single file name component.
    public let name: String
    /// The experiment folder, absolute.
    public let folder: String

    /// The experiment folder as a URL.
    public var folderURL: URL { URL(fileURLWithPath: folder, isDirectory: true) }
    /// `journal` in the folder.
    public var journalPath: String { Paths.join(folder, Self.journalName) }
    /// `experiment.log` in the folder.
    public var logPath: String { Paths.join(folder, Self.logName) }
    /// `manifest.json` in the folder.
    public var manifestPath: String { Paths.join(folder, Manifest.fileName) }
    /// `tasks/` in the folder.
    public var tasksFolder: String { Paths.join(folder, Self.tasksName) }
    /// `outputs/` in the folder.
    public var outputsFolder: String { Paths.join(folder, Self.outputsName) }

    static let journalName = "journal"
    static let logName = "experiment.log"
    static let tasksName = "tasks"
    static let outputsName = "outputs"

    /// What an open experiment holds; nil when closed.
    private struct Session: @unchecked Sendable {
        // @unchecked: the descriptors are plain integers owned by this session and closed once, in
        // `close()`, under the experiment's mutex; the objects are themselves Sendable.
        var lock: ExperimentLock
        var folderFd: Int32
        var tasksFd: Int32
        var outputsFd: Int32
        var journal: JournalWriter
        var log: ExperimentLog
        var resume: ResumeTable
        var manifest: Manifest
        var taskLogs: [TaskLog]
    }

    private let session: Mutex<Session?> = Mutex(nil)
    private let lastRunSummary: Mutex<DispatchSummary?> = Mutex(nil)

    /// How the latest run of this object ended (its counts), or nil before one ended; still readable
    /// after `close()`. A run that threw leaves the previous summary.
    public var lastRun: DispatchSummary? { lastRunSummary.withLock { $0 } }

    /// An experiment called `name` in the folder `parent` (absolute, or relative to the current folder).
    ///
    /// Throws `.invalidName` for an empty name, one with `/` or `..`, one with a character that is not
    /// printable, or one longer than 255 bytes.
    public init(name: String, in parent: String) throws(ExperimentError) {
        let folder = Paths.join(Paths.absolute(parent), name)
        if let problem = Self.problem(withName: name) {
            throw ExperimentError(
                .invalidName,
                experiment: name,
                path: folder,
                reason: problem,
                subject: "experiment folder"
            )
        }
        self.name = name
        self.folder = folder
    }

    /// Why `name` cannot name an experiment, or nil when it can.
    static func problem(withName name: String) -> String? {
        if name.isEmpty { return "cannot be made: an experiment's name must not be empty" }
        if name.contains("/") { return "cannot be made: an experiment's name must not contain /" }
        if name.contains("..") { return "cannot be made: an experiment's name must not contain .." }
        if name == "." { return "cannot be made: an experiment's name must not be ." }
        if name.utf8.count > 255 { return "cannot be made: an experiment's name must be at most 255 bytes" }
        let unprintable = name.unicodeScalars.first { scalar in
            switch scalar.properties.generalCategory {
            case .control, .format, .surrogate, .privateUse, .unassigned, .lineSeparator, .paragraphSeparator:
                return true
            default: return false
            }
        }
        if let unprintable {
            return "cannot be made: an experiment's name must be printable (it holds U+"
                + String(unprintable.value, radix: 16, uppercase: true) + ")"
        }
        return nil
    }

    /// Reads the journal as it is on disk, open or not (for inspecting a run, even one that crashed).
    public func readJournal() throws(ExperimentError) -> JournalContents {
        try JournalReader(path: journalPath, experiment: name).read()
    }

    // MARK: - Opening and closing

    /// Creates the folder and its layout when missing, takes the experiment's lock, cuts off a torn
    /// journal tail and reads the journal into the resume table.
    ///
    /// With `beginningRunOn`, also records the start of a run on those hosts as ``beginRun(keys:hosts:)``
    /// does (with no keys yet), in the manifest's one write of the open.
    ///
    /// Throws `.inUse` naming the holder when another run has the experiment open, `.alreadyOpen` when
    /// this object is, and `.corruptJournal` when the journal is damaged before its last record.
    package func open(
        journalPolicy: JournalWriter.Policy = JournalWriter.Policy(),
        beginningRunOn hosts: [String]? = nil
    ) throws(ExperimentError) {
        try session.withLock { (session: inout Session?) throws(ExperimentError) in
            guard session == nil else {
                throw ExperimentError(
                    .alreadyOpen,
                    experiment: name,
                    path: folder,
                    reason: "is already open in this run",
                    subject: "experiment folder"
                )
            }
            session = try makeSession(journalPolicy, beginningRunOn: hosts)
        }
        openExperiments.withLock { $0[ObjectIdentifier(self)] = self }
    }

    /// Writes and syncs the journal and the log of every experiment open in this process, after logging
    /// `reason`: for a process about to end without closing them (an interrupt), so that not even the last
    /// few milliseconds of results are lost.
    package static func syncOpenExperiments(logging reason: String) {
        for experiment in openExperiments.withLock({ Array($0.values) }) {
            try? experiment.journal().sync()
            if let log = try? experiment.log() {
                try? log.log(reason)
                try? log.flush()
            }
        }
    }

    private func makeSession(
        _ policy: JournalWriter.Policy,
        beginningRunOn hosts: [String]?
    ) throws(ExperimentError) -> Session {
        try createFolders(folder)
        let folderFd = try SystemCall.value("open") { Glibc.open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            .get("opened", experiment: name, path: folder, subject: "experiment folder")
        var descriptors = [folderFd]
        do throws(ExperimentError) {
            let lock = try ExperimentLock.take(in: folderFd, folder: folder, experiment: name)
            let tasksFd = try openSubfolder(Self.tasksName, in: folderFd)
            descriptors.append(tasksFd)
            let outputsFd = try openSubfolder(Self.outputsName, in: folderFd)
            descriptors.append(outputsFd)
            let collector = OutputCollector(experiment: name, outputsFd: outputsFd, outputsPath: outputsFolder)
            try collector.removeLeftovers()
            let journal = try JournalWriter(
                directory: folderFd,
                name: Self.journalName,
                path: journalPath,
                experiment: name,
                policy: policy
            )
            let log: ExperimentLog
            do {
                log = try ExperimentLog(directory: folderFd, name: Self.logName, path: logPath, experiment: name)
            } catch {
                try? journal.close()
                throw error
            }
            var manifest = Manifest.read(in: folderFd) ?? Manifest(name: name)
            manifest.name = name
            if let hosts { Self.begin(&manifest, keys: [], hosts: hosts) }
            let recovered = journal.recovered
            do throws(ExperimentError) {
                // Not synced: a run writes it again when it begins (unless this open began it), and
                // synced when it ends.
                try manifest.write(in: folderFd, folder: folder, experiment: name, synced: false)
                var opened = "experiment \(name) opened by process \(getpid()) on host \(Paths.hostName()); "
                opened += "the journal holds \(recovered.records.count) records"
                if let problem = recovered.problem { opened += "; \(problem), \(recovered.ignoredBytes) bytes cut off" }
                try log.log(opened)
                try log.flush()
            } catch {
                try? journal.close()
                log.close()
                throw error
            }
            return Session(
                lock: lock,
                folderFd: folderFd,
                tasksFd: tasksFd,
                outputsFd: outputsFd,
                journal: journal,
                log: log,
                resume: ResumeTable(recovered.records),
                manifest: manifest,
                taskLogs: []
            )
        } catch {
            for fd in descriptors { SystemCall.close(fd) }
            throw error
        }
    }

    /// Syncs and closes the journal, closes the logs and releases the lock. Closing a closed experiment
    /// does nothing.
    package func close() throws(ExperimentError) {
        guard
            let closing = session.withLock({ (session: inout Session?) -> Session? in
                defer { session = nil }
                return session
            })
        else { return }
        openExperiments.withLock { $0[ObjectIdentifier(self)] = nil }
        var firstError: ExperimentError?
        do { try closing.journal.close() } catch { firstError = error }
        for taskLog in closing.taskLogs {
            do { try taskLog.close() } catch { if firstError == nil { firstError = error } }
        }
        do { try closing.log.log("experiment \(name) closed") } catch { if firstError == nil { firstError = error } }
        closing.log.close()
        for fd in [closing.tasksFd, closing.outputsFd, closing.folderFd] { SystemCall.close(fd) }
        withExtendedLifetime(closing.lock) {}
        if let firstError { throw firstError }
    }

    /// True between `open()` and `close()`.
    package var isOpen: Bool { session.withLock { $0 != nil } }

    // MARK: - What an open experiment offers

    /// The journal writer; dispatch appends each finished job's record to it.
    package func journal() throws(ExperimentError) -> JournalWriter { try withSession { $0.journal } }

    /// `experiment.log`.
    package func log() throws(ExperimentError) -> ExperimentLog { try withSession { $0.log } }

    /// The journal's records as they were when the experiment was opened, by index (records appended
    /// since are not in it: a dispatch asks before it runs a job, not after).
    package func resumeTable() throws(ExperimentError) -> ResumeTable { try withSession { $0.resume } }

    /// The record to return instead of running job `index` with key `key`; see `ResumeTable.reusable`.
    package func reusable(
        index: Int,
        key: JobKey,
        includeFailed: Bool = false
    ) throws(ExperimentError) -> JournalRecord? {
        try withSession { $0.resume.reusable(index: index, key: key, includeFailed: includeFailed) }
    }

    /// Opens `tasks/<task>.log` for one task session (appending after a session header); closed by
    /// `TaskLog.close()` or with the experiment.
    package func taskLog(_ task: String) throws(ExperimentError) -> TaskLog {
        guard let fileName = TaskLog.fileName(for: task) else {
            throw ExperimentError(
                .invalidTaskName,
                experiment: name,
                path: tasksFolder,
                reason: "cannot hold the log of a task with an empty name",
                subject: "tasks folder"
            )
        }
        return try session.withLock { (session: inout Session?) throws(ExperimentError) -> TaskLog in
            guard let open = session else { throw notOpenError() }
            let log = try TaskLog(
                task: task,
                directory: open.tasksFd,
                name: fileName,
                path: Paths.join(tasksFolder, fileName),
                experiment: name
            )
            session!.taskLogs.append(log)
            return log
        }
    }

    /// The manifest as last written.
    package func manifest() throws(ExperimentError) -> Manifest { try withSession { $0.manifest } }

    /// Changes the manifest and writes it atomically; with `synced`, also to the disk before returning.
    package func updateManifest(synced: Bool = true, _ change: (inout Manifest) -> Void) throws(ExperimentError) {
        try session.withLock { (session: inout Session?) throws(ExperimentError) in
            guard var open = session else { throw notOpenError() }
            change(&open.manifest)
            open.manifest.name = name
            try open.manifest.write(in: open.folderFd, folder: folder, experiment: name, synced: synced)
            session = open
        }
    }

    /// Records the start of a run: the identity of its inputs (from every job's key, in job order), the
    /// hosts, now as the start and no end yet, counts at zero.
    /// Not synced: the run's end writes it again, synced.
    package func beginRun(keys: [JobKey], hosts: [String]) throws(ExperimentError) {
        try updateManifest(synced: false) { manifest in Self.begin(&manifest, keys: keys, hosts: hosts) }
    }

    private static func begin(_ manifest: inout Manifest, keys: [JobKey], hosts: [String]) {
        manifest.inputs = JobKey.inputsIdentity(of: keys)
        manifest.jobs = keys.count
        manifest.started = Timestamp.now()
        manifest.ended = nil
        manifest.hosts = hosts
        manifest.counts = Manifest.Counts()
    }

    /// Records the end of a run: its counts, now as the end, and the hosts it finished with; with `keys`,
    /// the identity of its inputs from every job's key, in job order (for a run that learnt its jobs as
    /// it went), in the same write.
    ///
    /// The journal is synced meanwhile, on its writer's thread, so that its sync and the manifest's overlap
    /// (``close()`` waits for it).
    package func endRun(counts: Manifest.Counts, hosts: [String]? = nil, keys: [JobKey]? = nil) throws(ExperimentError)
    {
        var jobs = 0
        try journal().startSync()
        try updateManifest { manifest in
            if let keys {
                manifest.inputs = JobKey.inputsIdentity(of: keys)
                manifest.jobs = keys.count
            }
            manifest.counts = counts
            manifest.ended = Timestamp.now()
            if let hosts { manifest.hosts = hosts }
            jobs = manifest.jobs
        }
        let summary = DispatchSummary(jobs: jobs, ran: counts.ran, reused: counts.reused, failed: counts.failed)
        lastRunSummary.withLock { $0 = summary }
    }

    /// Copies what `patterns` (globs relative to `taskFolder`, see `Glob`) match into `outputs/<job>/`,
    /// atomically: when this returns, the outputs are in place, synced; when it throws, no
    /// `outputs/<job>/` of this call exists (an older one stays). Symbolic links are copied as links and
    /// never followed. Returns the matched paths relative to the task folder. The task folder is the
    /// worker's path of it (after path translation); the experiment must be open.
    package func collectOutputs(jobIndex: Int, from taskFolder: String, patterns: [String]) throws -> [String] {
        try collectOutputs(jobIndex: jobIndex, from: taskFolder, patterns: patterns, beforeRename: nil)
    }

    /// `collectOutputs` with a hook called just before the rename (tests look at `outputs/` there).
    func collectOutputs(
        jobIndex: Int,
        from taskFolder: String,
        patterns: [String],
        beforeRename: (() throws -> Void)?
    ) throws -> [String] {
        let outputsFd = try withSession { $0.outputsFd }
        var collector = OutputCollector(experiment: name, outputsFd: outputsFd, outputsPath: outputsFolder)
        collector.beforeRename = beforeRename
        return try collector.collect(jobIndex: jobIndex, from: taskFolder, patterns: patterns)
    }

    // MARK: - Helpers

    private func withSession<T: Sendable>(_ body: (Session) -> T) throws(ExperimentError) -> T {
        guard let open = session.withLock({ $0 }) else { throw notOpenError() }
        return body(open)
    }

    private func notOpenError() -> ExperimentError {
        ExperimentError(
            .notOpen,
            experiment: name,
            path: folder,
            reason: "is not open (call open() first)",
            subject: "experiment folder"
        )
    }

    /// Creates `path` and every missing folder above it.
    private func createFolders(_ path: String) throws(ExperimentError) {
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            let made = SystemCall.value("mkdir") { mkdir(current, 0o755) }
            if made.failed(with: EEXIST) { continue }
            try made.get(
                "created",
                experiment: name,
                path: current,
                subject: current == path ? "experiment folder" : "folder"
            )
        }
    }

    private func openSubfolder(_ subfolder: String, in folderFd: Int32) throws(ExperimentError) -> Int32 {
        let path = Paths.join(folder, subfolder)
        let made = SystemCall.value("mkdirat") { mkdirat(folderFd, subfolder, 0o755) }
        if !made.failed(with: EEXIST) {
            try made.get("created", experiment: name, path: path, subject: "\(subfolder) folder")
        }
        return try FileTree.openDirectory(subfolder, in: folderFd)
            .get("opened", experiment: name, path: path, subject: "\(subfolder) folder")
    }
}
