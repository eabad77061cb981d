import Foundation
import Glibc

/// What to do when a mirror source (a path or a glob) matches nothing on the spawner.
public enum MissingSourcePolicy: String, Codable, Sendable, Hashable {
    /// Refuse the mirror map with a `StorageError` (`.missingSource`).
    case error
    /// Drop the entry and report a warning; the rest of the map is used.
    case warn
}

/// One validated mirror directive: copy what `source` matches into `target` inside the task's storage.
package struct MirrorEntry: Codable, Hashable, Sendable {
    /// Host-independent source (may hold a glob pattern in its suffix).
    var source: AbstractPath
    /// Folder relative to the task's local storage, normalised; "" is the storage folder itself.
    var target: String
}

/// Who asked for storage: the spawner's host, PID and process start time.
///
/// A PID alone is ambiguous after a reboot or a wrap-around; the start time (in clock ticks since boot)
/// together with the boot id names one process run, so a persistent folder left by an earlier run with
/// the same PID is never mistaken for the current one.
package struct SpawnerIdentity: Codable, Hashable, Sendable {
    /// The spawner's host name.
    var host: String
    /// The spawner's process id.
    var pid: Int32
    /// Field 22 of `/proc/<pid>/stat` (start time in clock ticks after boot); a random per-process
    /// value when `/proc` is not available, which still distinguishes process runs.
    var startTime: UInt64
    /// `/proc/sys/kernel/random/boot_id`, or "" when unavailable.
    var bootID: String

    /// The identity of the calling process (computed once; it cannot change during a run).
    static func current() -> SpawnerIdentity { cachedCurrent }

    private static let cachedCurrent: SpawnerIdentity = {
        let pid = getpid()
        return SpawnerIdentity(
            host: PathUtil.hostName(),
            pid: pid,
            startTime: processStartTime(statText: readSmallFile("/proc/self/stat"))
                ?? UInt64.random(in: 1...UInt64.max),
            bootID: readSmallFile("/proc/sys/kernel/random/boot_id")?
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        )
    }()

    /// Extracts field 22 (starttime) from the text of `/proc/<pid>/stat`. The command name (field 2)
    /// may contain spaces and parentheses, so fields are counted after the *last* `)`.
    static func processStartTime(statText: String?) -> UInt64? {
        guard let text = statText, let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        // After ")" come field 3 (state) onwards, so field 22 is at offset 19.
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    /// Reads a small text file with plain syscalls (no Foundation, works for /proc files of size 0).
    static func readSmallFile(_ path: String) -> String? {
        guard case .success(let fd) = SystemCall.value("open", { open(path, O_RDONLY | O_CLOEXEC) }) else { return nil }
        defer { SystemCall.close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let size = buffer.count
        while true {
            guard case .success(let n) = SystemCall.value("read", { read(fd, &buffer, size) }) else { return nil }
            if n == 0 { break }
            bytes.append(contentsOf: buffer[0..<n])
            if bytes.count > 1 << 20 { return nil }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Everything a worker needs to prepare a task's storage; sent with each spawn request.
package struct StorageRequest: Codable, Sendable, Hashable {
    /// Validated mirror directives; empty means no mirroring (and no local storage folder).
    var mirror: [MirrorEntry]
    /// With mirroring: a folder relative to the storage folder (normalised, "" = the folder itself).
    /// Without mirroring and without translation: a path on the worker used as given.
    var startupDir: String?
    /// Whether `startupDir` was translated through the mirrored storage (then `startupAbstract` holds it).
    var translateStartupDir: Bool
    /// The translated startup folder (only without mirroring and with `translateStartupDir`).
    var startupAbstract: AbstractPath?
    /// Keep the storage folder after the task and reuse it for the next task of the same VM.
    var persistent: Bool
    /// Distinguishes several VM objects in one spawner process.
    var vmIndex: Int
    /// The spawner process that owns the storage.
    var spawner: SpawnerIdentity
    /// What the mirror map names in unshared folders: a tree the spawner sends to each host's mirror cache,
    /// linked into the task folder after the shared entries are copied. Nil when there is none.
    var sentTree: SentTree? = nil

    /// Whether the task gets a storage folder (something is mirrored).
    var mirrors: Bool { !mirror.isEmpty || sentTree != nil }

    /// Key identifying the VM across workers: one spawner run and one VM index.
    var vmKey: String { "\(spawner.host)-\(spawner.pid)-\(spawner.startTime)-\(spawner.bootID)-\(vmIndex)" }

    /// Validates a user's mirror map on the spawner and builds the request.
    ///
    /// - Parameters:
    ///   - mirrorMap: spawner path or glob -> folder relative to local storage ("." = the folder itself);
    ///     nil or empty means no mirroring.
    ///   - startupDir: with mirroring, relative to the storage folder; without, a spawner path
    ///     (translated when `translateStartupDir`) or a worker path used as is.
    ///   - missing: what to do with sources matching nothing on the spawner.
    /// - Returns: the request and warnings about skipped sources (only with `.warn`).
    /// - Throws: `StorageError` naming the offending path and the reason.
    package static func make(
        mirrorMap: [String: String]?,
        startupDir: String? = nil,
        translateStartupDir: Bool = true,
        persistent: Bool = false,
        vmIndex: Int = 0,
        mirrored: MirroredStorage,
        missing: MissingSourcePolicy = .error,
        spawner: SpawnerIdentity = .current()
    ) throws -> (request: StorageRequest, warnings: [String]) {
        let made = try makeSending(
            mirrorMap: mirrorMap,
            startupDir: startupDir,
            translateStartupDir: translateStartupDir,
            persistent: persistent,
            vmIndex: vmIndex,
            mirrored: mirrored,
            missing: missing,
            spawner: spawner
        )
        return (made.request, made.warnings)
    }

    /// Like ``make(mirrorMap:startupDir:translateStartupDir:persistent:vmIndex:mirrored:missing:spawner:)``,
    /// and also reads what the map names in unshared folders into the snapshot the spawner sends.
    package static func makeSending(
        mirrorMap: [String: String]?,
        startupDir: String? = nil,
        translateStartupDir: Bool = true,
        persistent: Bool = false,
        vmIndex: Int = 0,
        mirrored: MirroredStorage,
        missing: MissingSourcePolicy = .error,
        spawner: SpawnerIdentity = .current()
    ) throws -> (request: StorageRequest, warnings: [String], snapshot: MirrorSnapshot?) {
        let (entries, warnings, snapshot) = try validateMirrorMap(
            mirrorMap ?? [:],
            mirrored: mirrored,
            missing: missing
        )
        var request = StorageRequest(
            mirror: entries,
            startupDir: nil,
            translateStartupDir: translateStartupDir,
            startupAbstract: nil,
            persistent: persistent,
            vmIndex: vmIndex,
            spawner: spawner,
            sentTree: snapshot?.reference
        )
        if let dir = startupDir {
            if !(mirrorMap ?? [:]).isEmpty {
                // With mirroring the task starts inside its storage, so the folder must stay inside it.
                request.startupDir = try validateTarget(dir, subject: "startup folder")
            } else if translateStartupDir {
                request.startupAbstract = try mirrored.abstractPath(for: dir, subject: "startup folder")
            } else {
                request.startupDir = dir
            }
        }
        return (request, warnings, snapshot)
    }

    /// Validates every entry of a mirror map (sorted by source, so the copy order is reproducible); sources in
    /// unshared folders are read into a snapshot instead.
    static func validateMirrorMap(
        _ map: [String: String],
        mirrored: MirroredStorage,
        missing: MissingSourcePolicy
    ) throws -> (entries: [MirrorEntry], warnings: [String], snapshot: MirrorSnapshot?) {
        var entries: [MirrorEntry] = []
        var warnings: [String] = []
        var builder: MirrorTreeBuilder?
        for (source, target) in map.sorted(by: { $0.key < $1.key }) {
            let normalizedTarget = try validateTarget(target, subject: "mirror target")
            if let (literal, pattern) = try mirrored.unsharedPattern(for: source, subject: "mirror source") {
                let matches = Glob.expand(literal: literal, pattern: pattern)
                if matches.isEmpty {
                    try skipMissing(source, glob: PathUtil.hasGlob(pattern), missing: missing, warnings: &warnings)
                    continue
                }
                if builder == nil { builder = MirrorTreeBuilder() }
                for match in matches {
                    try builder!.add(source: match, target: normalizedTarget, followLinks: pattern.isEmpty)
                }
                continue
            }
            let abstract = try mirrored.abstractPath(for: source, subject: "mirror source")
            // The spawner sees the same shared files as the workers, so a source that matches nothing
            // here is almost certainly a typo; catch it before any task is spawned.
            let (literal, pattern) = try mirrored.localPattern(for: abstract)
            if Glob.expand(literal: literal, pattern: pattern).isEmpty {
                try skipMissing(source, glob: PathUtil.hasGlob(abstract.suffix), missing: missing, warnings: &warnings)
                continue
            }
            entries.append(MirrorEntry(source: abstract, target: normalizedTarget))
        }
        return (entries, warnings, builder?.snapshot())
    }

    /// A source that matches nothing: an error, or with `.warn` a warning and the entry skipped.
    private static func skipMissing(
        _ source: String,
        glob: Bool,
        missing: MissingSourcePolicy,
        warnings: inout [String]
    ) throws {
        let error = StorageError(
            .missingSource,
            path: source,
            reason: glob ? "matches nothing" : "does not exist",
            subject: "mirror source"
        )
        if missing == .error { throw error }
        warnings.append(error.description + "; skipped")
    }

    /// Checks a folder given relative to local storage: not absolute, not escaping with `..` after
    /// normalisation ("a/../b" is fine, "../x" and "a/../../x" are not). Returns it normalised ("" = itself).
    static func validateTarget(_ target: String, subject: String) throws -> String {
        if target.hasPrefix("/") || target.hasPrefix("~") {
            throw StorageError(
                .invalidTarget,
                path: target,
                reason: "must be relative to the local storage folder",
                subject: subject
            )
        }
        guard let normalized = PathUtil.normalizeInside(target) else {
            throw StorageError(
                .invalidTarget,
                path: target,
                reason: "escapes the local storage folder with `..`",
                subject: subject
            )
        }
        return normalized
    }
}
