/// An error raised while translating paths, validating a mirror map, preparing or removing local storage.
///
/// Every error names the path it concerns and the reason, so that a message coming back from a worker
/// on another host is understandable without the worker's logs. It is `Codable` so the VM can send it
/// back to the spawner unchanged.
public struct StorageError: Error, CustomStringConvertible, Codable, Sendable, Hashable {
    /// What went wrong, for programmatic handling.
    public enum Code: String, Codable, Sendable, Hashable {
        /// A spawner path lies outside every folder of `PARALLEL_MIRRORED_STORAGE`.
        case outsideMirroredStorage
        /// An abstract path refers to an index the worker's `PARALLEL_MIRRORED_STORAGE` does not have.
        case badMirroredIndex
        /// A path is malformed (for example an abstract suffix that escapes with `..`).
        case invalidPath
        /// A mirror target (or a startup folder relative to local storage) is absolute or escapes with `..`.
        case invalidTarget
        /// A mirror source matches nothing (on the spawner while validating, or on the worker while copying).
        case missingSource
        /// A source is neither a regular file, a directory nor a symbolic link (a FIFO, a socket, a device).
        case unsupportedFileType
        /// The local storage root (or the per-user folder in it) cannot be created or written.
        case unwritableRoot
        /// A system call failed while copying, creating or removing files.
        case ioFailure
        /// A storage folder is in use by a running task (its lease is held), so it was left alone.
        case inUse
    }

    /// What went wrong.
    public var code: Code
    /// The path the error concerns.
    public var path: String
    /// Why it failed, e.g. `is outside every mirrored folder (PARALLEL_MIRRORED_STORAGE=/a:/b)` or an errno text.
    public var reason: String
    /// What the path is, e.g. "mirror source", "mirror target", "local storage root"; starts the message.
    public var subject: String
    /// The system call that failed (e.g. "openat"), when the error comes from one.
    public var call: String?
    /// The errno value that call failed with.
    public var errnoCode: Int32?

    /// Creates an error; `subject` defaults to "path".
    public init(
        _ code: Code,
        path: String,
        reason: String,
        subject: String = "path",
        call: String? = nil,
        errnoCode: Int32? = nil
    ) {
        self.code = code
        self.path = path
        self.reason = reason
        self.subject = subject
        self.call = call
        self.errnoCode = errnoCode
    }

    /// A sentence such as "mirror source /x/y is outside every mirrored folder (PARALLEL_MIRRORED_STORAGE=/a:/b)".
    public var description: String { "\(subject) \(path) \(reason)" }
}
