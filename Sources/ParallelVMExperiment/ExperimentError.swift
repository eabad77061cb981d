/// An error raised while opening, writing or reading an experiment.
///
/// Every error names the experiment and the path it concerns, so a message read in a log long after the
/// run (or on another host) says which experiment and which file without further context.
public struct ExperimentError: Error, CustomStringConvertible, Codable, Sendable, Hashable {
    /// What went wrong, for programmatic handling.
    public enum Code: String, Codable, Sendable, Hashable {
        /// The experiment's name is empty, contains `/` or `..`, or a character that is not printable.
        case invalidName
        /// Another run (in this or another process, on this or another host) has the experiment open.
        case inUse
        /// This `Experiment` object is already open.
        case alreadyOpen
        /// An operation that needs an open experiment was called before `open()` or after `close()`.
        case notOpen
        /// The journal is damaged before its last record, so appending to it would hide the damage.
        case corruptJournal
        /// A record cannot be written (a field too large for the format).
        case invalidRecord
        /// An output pattern is absolute, escapes the task folder with `..`, or is empty.
        case invalidPattern
        /// A task name or job index cannot name a file.
        case invalidTaskName
        /// A system call failed.
        case ioFailure
    }

    /// What went wrong.
    public var code: Code
    /// The experiment's name.
    public var experiment: String
    /// The path the error concerns.
    public var path: String
    /// What the path is, e.g. "journal", "lock file", "output"; starts the sentence about the path.
    public var subject: String
    /// Why it failed, e.g. an errno text or who holds the lock.
    public var reason: String
    /// The system call that failed (e.g. "openat"), when the error comes from one.
    public var call: String?
    /// The errno value that call failed with.
    public var errnoCode: Int32?

    /// Creates an error; `subject` defaults to "path".
    public init(
        _ code: Code,
        experiment: String,
        path: String,
        reason: String,
        subject: String = "path",
        call: String? = nil,
        errnoCode: Int32? = nil
    ) {
        self.code = code
        self.experiment = experiment
        self.path = path
        self.reason = reason
        self.subject = subject
        self.call = call
        self.errnoCode = errnoCode
    }

    /// "experiment run1: journal /x/run1/journal could not be opened: openat: Permission denied (errno 13)".
    public var description: String { "experiment \(experiment): \(subject) \(path) \(reason)" }
}
