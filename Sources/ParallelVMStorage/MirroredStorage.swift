import Foundation

/// A host-independent path: an index into `PARALLEL_MIRRORED_STORAGE` and a path relative to that entry.
///
/// The spawner translates its own paths into this form; every worker turns it back into a path under
/// the same-numbered entry of *its* `PARALLEL_MIRRORED_STORAGE`, so shared folders may be mounted at
/// different places on different hosts. The suffix may contain glob characters.
public struct AbstractPath: Codable, Hashable, Sendable, CustomStringConvertible {
    /// Index into the colon-separated `PARALLEL_MIRRORED_STORAGE` list.
    public var index: Int
    /// Path relative to that entry, without a leading `/`; "" is the entry itself. May hold a glob pattern.
    public var suffix: String

    /// Creates an abstract path.
    public init(index: Int, suffix: String) {
        self.index = index
        self.suffix = suffix
    }

    /// "[index]/suffix", for messages.
    public var description: String { "[\(index)]/\(suffix)" }
}

/// The list of folders shared between hosts (`PARALLEL_MIRRORED_STORAGE`), canonicalised, and the
/// translation between local paths and `AbstractPath`s.
package struct MirroredStorage: Sendable, Hashable {
    /// Name of the environment variable holding the colon-separated folder list.
    package static let variable = "PARALLEL_MIRRORED_STORAGE"

    /// Name of the environment variable holding the folders, on the spawner's host, that workers cannot see.
    package static let unsharedVariable = "PARALLEL_UNSHARED_STORAGE"

    /// Canonical folders, in the order of the variable (the order must agree on all hosts).
    let entries: [String]
    /// Canonical folders of `PARALLEL_UNSHARED_STORAGE`: mirror sources in them are read on the spawner's
    /// host and sent to each host (only the spawner reads this list; workers need no setting for it).
    let unsharedEntries: [String]
    /// The environment the list was read from (for `~` in spawner paths).
    private let environment: [String: String]

    /// Reads `PARALLEL_MIRRORED_STORAGE` from `environment`; when it is unset or empty the user's home
    /// is the only shared folder. Empty entries (e.g. from a trailing colon) are ignored. Each entry gets
    /// `~` expanded and is canonicalised (`realpath` when it exists, standardised otherwise) so that a
    /// symlinked mount point and its target are treated as the same folder.
    package init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        let raw = environment[Self.variable] ?? ""
        var list = raw.split(separator: ":", omittingEmptySubsequences: true).map(String.init)
        if list.isEmpty { list = [PathUtil.homeFolder(environment: environment)] }
        self.entries = list.map { PathUtil.canonicalize($0, environment: environment) }
        self.unsharedEntries = (environment[Self.unsharedVariable] ?? "")
            .split(separator: ":", omittingEmptySubsequences: true)
            .map { PathUtil.canonicalize(String($0), environment: environment) }
        self.environment = environment
    }

    /// The list of this process's environment, read from the only variables it depends on (the two lists
    /// and `HOME`): a copy of the whole environment cost more than the rest, and a dispatch with an
    /// experiment reads the list each time.
    package static func ofThisProcess() -> MirroredStorage {
        var environment: [String: String] = [:]
        for name in [variable, unsharedVariable, "HOME"] {
            if let value = getenv(name) { environment[name] = String(cString: value) }
        }
        return MirroredStorage(environment: environment)
    }

    /// Creates the list directly from folder paths (canonicalised like the variable's entries).
    init(folders: [String], environment: [String: String] = ProcessInfo.processInfo.environment) {
        var env = environment
        env[Self.variable] = folders.joined(separator: ":")
        self.init(environment: env)
    }

    /// The list as the variable would show it, for error messages.
    var listDescription: String { "\(Self.variable)=\(entries.joined(separator: ":"))" }

    /// The literal folder and glob pattern of a spawner path inside an unshared folder, or nil when it lies in
    /// none (`..` after a glob is refused as in ``abstractPath(for:subject:)``).
    func unsharedPattern(
        for spawnerPath: String,
        subject: String = "path"
    ) throws -> (literal: String, pattern: String)? {
        guard !unsharedEntries.isEmpty else { return nil }
        let expanded = PathUtil.expandTilde(spawnerPath, environment: environment)
        let (prefix, pattern) = PathUtil.splitGlob(expanded)
        let canonical = PathUtil.canonicalize(prefix, environment: environment)
        guard unsharedEntries.contains(where: { PathUtil.isComponentPrefix($0, of: canonical) }) else { return nil }
        try Self.refuseDotDotAfterGlob(pattern, in: spawnerPath, subject: subject)
        return (canonical, pattern)
    }

    /// A `..` after a glob cannot be resolved without expanding the glob; refuse rather than guess.
    private static func refuseDotDotAfterGlob(_ pattern: String, in spawnerPath: String, subject: String) throws {
        guard PathUtil.components(pattern).contains("..") else { return }
        throw StorageError(
            .invalidPath,
            path: spawnerPath,
            reason: "has `..` after a glob pattern, which is not supported",
            subject: subject
        )
    }

    /// Translates a spawner path (possibly containing glob characters) to an `AbstractPath`.
    ///
    /// The literal folder part before the first glob component is canonicalised (`~`, `.`, `..`,
    /// symlinks); the glob pattern is kept verbatim so the worker can expand it against its own files.
    /// The first entry that contains the canonical path by whole components wins.
    /// - Throws: `StorageError.outsideMirroredStorage` naming the path and the list.
    package func abstractPath(for spawnerPath: String, subject: String = "path") throws -> AbstractPath {
        let expanded = PathUtil.expandTilde(spawnerPath, environment: environment)
        let (prefix, pattern) = PathUtil.splitGlob(expanded)
        try Self.refuseDotDotAfterGlob(pattern, in: spawnerPath, subject: subject)
        let canonical = PathUtil.canonicalize(prefix, environment: environment)
        for (index, root) in entries.enumerated() where PathUtil.isComponentPrefix(root, of: canonical) {
            var relative = root == "/" ? String(canonical.dropFirst()) : String(canonical.dropFirst(root.count))
            if relative.hasPrefix("/") { relative.removeFirst() }
            if !pattern.isEmpty { relative = relative.isEmpty ? pattern : relative + "/" + pattern }
            return AbstractPath(index: index, suffix: relative)
        }
        throw StorageError(
            .outsideMirroredStorage,
            path: spawnerPath == canonical ? spawnerPath : "\(spawnerPath) (\(canonical))",
            reason: "is outside every mirrored folder (\(listDescription)"
                + (unsharedEntries.isEmpty
                    ? ")" : "; \(Self.unsharedVariable)=\(unsharedEntries.joined(separator: ":")))"),
            subject: subject
        )
    }

    /// Translates an `AbstractPath` received from the spawner into a path on this host.
    /// - Throws: `.badMirroredIndex` naming the index and this host's list; `.invalidPath` when the
    ///   suffix is absolute or climbs out of its folder (it came over the network, so it is checked).
    package func localPath(for abstract: AbstractPath) throws -> String {
        guard entries.indices.contains(abstract.index) else {
            throw StorageError(
                .badMirroredIndex,
                path: abstract.description,
                reason: "refers to mirrored folder index \(abstract.index) but this host has only \(entries.count) "
                    + "(\(listDescription))",
                subject: "abstract path"
            )
        }
        guard !abstract.suffix.hasPrefix("/"), !PathUtil.components(abstract.suffix).contains("..") else {
            throw StorageError(
                .invalidPath,
                path: abstract.description,
                reason: "has an absolute or escaping suffix",
                subject: "abstract path"
            )
        }
        return PathUtil.join(entries[abstract.index], abstract.suffix)
    }

    /// Translates an `AbstractPath` into this host's literal folder and the glob pattern below it.
    ///
    /// The entry and the suffix's literal folder part are kept apart from the pattern so that glob
    /// characters in this host's folder names are not interpreted.
    func localPattern(for abstract: AbstractPath) throws -> (literal: String, pattern: String) {
        let full = try localPath(for: abstract)
        let (relPrefix, pattern) = PathUtil.splitGlob(abstract.suffix)
        if pattern.isEmpty { return (full, "") }
        let literal = PathUtil.join(entries[abstract.index], relPrefix == "." ? "" : relPrefix)
        return (literal, pattern)
    }
}
