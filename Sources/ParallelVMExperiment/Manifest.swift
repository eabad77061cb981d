package import Foundation
import Glibc
import ParallelVMStorage

/// `manifest.json`: what an experiment's latest run was given and how it went.
///
/// Written whole to a temporary file, synced and renamed over the old one, so a reader (or a crash)
/// sees the previous manifest or the new one, never a mix. `ended` is `null` while a run goes on, and
/// stays `null` after a run that crashed.
package struct Manifest: Codable, Sendable, Hashable {
    /// How the jobs of a run went.
    package struct Counts: Codable, Sendable, Hashable {
        /// Jobs run in this run.
        package var ran = 0
        /// Jobs whose result came from the journal.
        package var reused = 0
        /// Jobs that failed in this run.
        package var failed = 0

        package init(ran: Int = 0, reused: Int = 0, failed: Int = 0) {
            self.ran = ran
            self.reused = reused
            self.failed = failed
        }
    }

    /// The experiment's name.
    package var name: String
    /// `JobKey.inputsIdentity` of the run's jobs, or "" before a run has said.
    package var inputs: String
    /// Number of jobs given to the run.
    package var jobs: Int
    /// When the run started (ISO 8601, UTC).
    package var started: String
    /// When it ended, or nil while running (and after a crash).
    package var ended: String?
    /// The hosts of the run.
    package var hosts: [String]
    /// Jobs ran, reused and failed.
    package var counts: Counts

    package init(
        name: String,
        inputs: String = "",
        jobs: Int = 0,
        started: Date = Date(),
        ended: Date? = nil,
        hosts: [String] = [],
        counts: Counts = Counts()
    ) {
        self.name = name
        self.inputs = inputs
        self.jobs = jobs
        self.started = Timestamp.format(started)
        self.ended = ended.map(Timestamp.format)
        self.hosts = hosts
        self.counts = counts
    }

    private enum CodingKeys: String, CodingKey {
        case name, inputs, jobs, started, ended, hosts, counts
    }

    package init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        inputs = try container.decode(String.self, forKey: .inputs)
        jobs = try container.decode(Int.self, forKey: .jobs)
        started = try container.decode(String.self, forKey: .started)
        ended = try container.decodeIfPresent(String.self, forKey: .ended)
        hosts = try container.decode([String].self, forKey: .hosts)
        counts = try container.decode(Counts.self, forKey: .counts)
    }

    /// Writes `ended` as `null` rather than leaving it out, so a reader sees the field exists.
    package func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try container.encode(inputs, forKey: .inputs)
        try container.encode(jobs, forKey: .jobs)
        try container.encode(started, forKey: .started)
        if let ended { try container.encode(ended, forKey: .ended) } else { try container.encodeNil(forKey: .ended) }
        try container.encode(hosts, forKey: .hosts)
        try container.encode(counts, forKey: .counts)
    }

    /// Name of the manifest in the experiment folder.
    static let fileName = "manifest.json"

    /// The manifest in the open folder, or nil when there is none or it does not parse.
    static func read(in folderFd: Int32) -> Manifest? {
        guard
            case .success(let fd) = SystemCall.value(
                "openat",
                { openat(folderFd, fileName, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) }
            )
        else { return nil }
        defer { SystemCall.close(fd) }
        guard case .success(let bytes) = SystemCall.readAll(fd) else { return nil }
        return try? JSONDecoder().decode(Manifest.self, from: Data(bytes))
    }

    /// Writes the manifest into the open folder atomically: temporary file, `fsync`, rename, folder `fsync`;
    /// without `synced`, the rename only (atomic, but after a host crash the previous manifest may be back,
    /// or a damaged one, which reads as none).
    func write(in folderFd: Int32, folder: String, experiment: String, synced: Bool = true) throws(ExperimentError) {
        let path = Paths.join(folder, Self.fileName)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data: Data
        do {
            data = try encoder.encode(self) + Data("\n".utf8)
        } catch {
            throw ExperimentError(
                .ioFailure,
                experiment: experiment,
                path: path,
                reason: "could not be encoded: \(error)",
                subject: "manifest"
            )
        }
        let temporary = ".\(Self.fileName).tmp-\(Paths.randomSuffix())"
        let fd = try SystemCall.value("openat") {
            openat(folderFd, temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        }.get("written", experiment: experiment, path: path, subject: "manifest")
        do throws(ExperimentError) {
            defer { SystemCall.close(fd) }
            try data.withUnsafeBytes { SystemCall.writeAll(fd, $0) }
                .get("written", experiment: experiment, path: path, subject: "manifest")
            if synced {
                try SystemCall.value("fsync") { fsync(fd) }.get(
                    "synced",
                    experiment: experiment,
                    path: path,
                    subject: "manifest"
                )
            }
        } catch {
            _ = unlinkat(folderFd, temporary, 0)
            throw error
        }
        let renamed = SystemCall.value("renameat") { renameat(folderFd, temporary, folderFd, Self.fileName) }
        if renamed.failure != nil { _ = unlinkat(folderFd, temporary, 0) }
        try renamed.get("moved into place", experiment: experiment, path: path, subject: "manifest")
        guard synced else { return }
        try SystemCall.value("fsync") { fsync(folderFd) }.get(
            "synced",
            experiment: experiment,
            path: folder,
            subject: "experiment folder"
        )
    }
}

/// How a run with an experiment went: `VM.dispatch(_:experiment:...)` sets ``Experiment/lastRun`` to it
/// when the run ends (the same counts are in `manifest.json`).
public struct DispatchSummary: Sendable, Hashable, CustomStringConvertible {
    /// Jobs the run was given (up to where it stopped, for a run stopped early).
    public var jobs: Int
    /// Jobs run in this run (failed ones included).
    public var ran: Int
    /// Jobs whose result came from the journal instead of running.
    public var reused: Int
    /// Jobs that failed in this run.
    public var failed: Int

    /// A summary with these counts.
    public init(jobs: Int, ran: Int, reused: Int, failed: Int) {
        self.jobs = jobs
        self.ran = ran
        self.reused = reused
        self.failed = failed
    }

    /// `40 jobs: ran 10, reused 30, failed 0`.
    public var description: String { "\(jobs) jobs: ran \(ran), reused \(reused), failed \(failed)" }
}
