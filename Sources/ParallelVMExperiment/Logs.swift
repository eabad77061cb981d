import Foundation
import Glibc
import ParallelVMStorage
import Synchronization

/// UTC timestamps in ISO 8601 with milliseconds, `2025-01-31T12:00:00.250Z`, made without a formatter
/// object. The text up to the second is kept for the next line in the same second, since a run logs many
/// lines a second (one per chunk): only the milliseconds are formatted again.
enum Timestamp {
    /// The last second formatted, and its text up to the decimal point.
    private static let lastSecond = Mutex<(second: Int, text: String)>((Int.min, ""))

    /// Now.
    static func now() -> String { format(Date()) }

    static func format(_ date: Date) -> String {
        let seconds = date.timeIntervalSince1970
        let whole = seconds.rounded(.down)
        let second = Int(whole)
        let millis = min(max(Int((seconds - whole) * 1000), 0), 999)
        var text = lastSecond.withLock { last in
            if last.second != second { last = (second, formatSecond(second)) }
            return last.text
        }
        // ".250Z": five ASCII bytes appended in place.
        text.reserveCapacity(text.utf8.count + 5)
        text.append(
            String(unsafeUninitializedCapacity: 5) { buffer in
                buffer[0] = UInt8(ascii: ".")
                buffer[1] = UInt8(ascii: "0") + UInt8(millis / 100)
                buffer[2] = UInt8(ascii: "0") + UInt8(millis / 10 % 10)
                buffer[3] = UInt8(ascii: "0") + UInt8(millis % 10)
                buffer[4] = UInt8(ascii: "Z")
                return 5
            }
        )
        return text
    }

    /// `2025-01-31T12:00:00`.
    private static func formatSecond(_ second: Int) -> String {
        var whole = time_t(second)
        var parts = tm()
        gmtime_r(&whole, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(width - digits.count, 0)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))"
    }
}

/// A text file that lines are appended to, one `write(2)` per line, so that a line is in the file as soon
/// as the call returns and lines from several threads never interleave.
final class LineFile: Sendable {
    let path: String
    private let experiment: String
    private let subject: String
    /// The descriptor, or nil once closed.
    private let fd: Mutex<Int32?>

    /// Opens (creating it when missing) the file `name` of the open folder `directory`.
    init(directory: Int32, name: String, path: String, experiment: String, subject: String) throws(ExperimentError) {
        self.path = path
        self.experiment = experiment
        self.subject = subject
        let opened = try SystemCall.value("open") {
            openat(directory, name, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o644)
        }.get("opened", experiment: experiment, path: path, subject: subject)
        fd = Mutex(opened)
    }

    deinit { close() }

    /// Appends `text` (whole lines, each ending in a newline) with one write.
    func write(_ text: String) throws(ExperimentError) {
        var bytes = text
        let result: Result<Void, SystemCallError>? = fd.withLock { fd in
            guard let fd else { return nil }
            return bytes.withUTF8 { SystemCall.writeAll(fd, UnsafeRawBufferPointer($0)) }
        }
        guard let result else {
            throw ExperimentError(.notOpen, experiment: experiment, path: path, reason: "is closed", subject: subject)
        }
        try result.get("appended to", experiment: experiment, path: path, subject: subject)
    }

    func close() {
        fd.withLock { fd in
            if let open = fd { SystemCall.close(open) }
            fd = nil
        }
    }

    /// `prefix` before each line of `message` (a message with newlines becomes several lines).
    static func lines(_ message: String, prefix: String) -> String {
        var text = ""
        for line in message.split(separator: "\n", omittingEmptySubsequences: false) {
            text += prefix
            text += line
            text += "\n"
        }
        return text
    }
}

/// `experiment.log`: what the spawner distributed and when, one timestamped line per event.
///
/// Lines read `2025-01-31T12:00:00.250Z message`. Lines are written in batches, within 5 ms of being
/// logged (see `BatchedLineFile`), so the log of a run that was killed ends at most 5 ms before its end.
package final class ExperimentLog: Sendable {
    private let file: BatchedLineFile

    /// The log file.
    package var path: String { file.path }

    init(directory: Int32, name: String, path: String, experiment: String) throws(ExperimentError) {
        file = try BatchedLineFile(
            directory: directory,
            name: name,
            path: path,
            experiment: experiment,
            subject: "experiment log"
        )
    }

    /// Appends `message` with the current time.
    package func log(_ message: String) throws(ExperimentError) {
        // Most messages are one line: no need to split them.
        if !message.utf8.contains(UInt8(ascii: "\n")) {
            var line = Timestamp.now()
            line.reserveCapacity(line.utf8.count + message.utf8.count + 2)
            line += " "
            line += message
            line += "\n"
            try file.write(line)
        } else {
            try file.write(LineFile.lines(message, prefix: Timestamp.now() + " "))
        }
    }

    /// Writes the lines logged so far to the file now.
    package func flush() throws(ExperimentError) { try file.flush() }

    /// "job 3 sent to task 1:5 on host h".
    package func jobSent(index: Int, task: String, host: String) throws(ExperimentError) {
        try log("job \(index) sent to task \(task) on host \(host)")
    }

    /// "job 3 reused from the journal (key 0123…)".
    package func jobReused(_ record: JournalRecord) throws(ExperimentError) {
        try log("job \(record.index) reused from the journal (key \(record.key))")
    }

    /// "job 3 done in task 1:5 on host h after 0.012 s" or "job 3 failed ...: Type: message".
    package func jobFinished(_ record: JournalRecord) throws(ExperimentError) {
        let seconds = Self.milliseconds(record.ended.timeIntervalSince(record.started))
        let place = "in task \(record.task) on host \(record.host) after \(seconds) s (attempt \(record.attempts))"
        switch record.outcome {
        case .success: try log("job \(record.index) done \(place)")
        case .failure(let typeName, let message):
            try log("job \(record.index) failed \(place): \(typeName): \(message)")
        }
    }

    /// "jobs 0-41, 43-99 done in task 1:5 on host h after 0.012 s (attempt 1)": the jobs of one chunk that
    /// succeeded, with the task, host, time and attempt of `last`, one of them.
    package func jobsFinished(_ indices: [Int], like last: JournalRecord) throws(ExperimentError) {
        let seconds = Self.milliseconds(last.ended.timeIntervalSince(last.started))
        try log(
            "jobs \(Self.ranges(indices)) done in task \(last.task) on host \(last.host) after \(seconds) s "
                + "(attempt \(last.attempts))"
        )
    }

    /// "job 3 queued", "jobs 0-399 queued", or "jobs 0-399 queued in chunks of 100" (jobs queued together,
    /// sent `chunkSize` at a time).
    package func jobsQueued(_ indices: [Int], chunkSize: Int = 1) throws(ExperimentError) {
        guard indices.count > 1 else {
            if let index = indices.first { try log("job \(index) queued") }
            return
        }
        try log("jobs \(Self.ranges(indices)) queued" + (chunkSize > 1 ? " in chunks of \(chunkSize)" : ""))
    }

    /// Job indices as ranges, in the order given: `0-41, 43, 45-99`.
    package static func ranges(_ indices: [Int]) -> String {
        var text = ""
        var position = indices.startIndex
        while position < indices.endIndex {
            var end = position
            while end + 1 < indices.endIndex && indices[end + 1] == indices[end] + 1 { end += 1 }
            if position > indices.startIndex { text += ", " }
            text += String(indices[position])
            if end > position {
                text += "-"
                text += String(indices[end])
            }
            position = end + 1
        }
        return text
    }

    func close() { file.close() }

    /// Seconds with three decimals, `0.012` (`String(format:)` costs more than a tiny job).
    static func milliseconds(_ seconds: Double) -> String {
        let total = Int((max(seconds, 0) * 1000).rounded())
        let fraction = String(total % 1000)
        return "\(total / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction
    }
}

/// `tasks/<task>.log`: one task session's log lines, standard output and standard error.
///
/// Lines read `2025-01-31T12:00:00.250Z [stdout] text`, with `[log]`, `[stdout]`, `[stderr]` or
/// `[session]` telling where the text came from. Text is kept per stream until its line ends (or the log
/// is closed), so a line written in pieces stays one line. A task name that recurs in a later run (task
/// numbers restart) appends a new `[session]` header to the same file.
package final class TaskLog: Sendable {
    /// Where a piece of text came from.
    package enum Stream: String, Sendable, CaseIterable {
        case log, stdout, stderr
    }

    /// The task, as given.
    package let task: String
    private let file: LineFile
    /// Bytes of each stream after its last newline.
    private let partial: Mutex<[Stream: [UInt8]]> = Mutex([:])

    /// The log file.
    package var path: String { file.path }

    init(task: String, directory: Int32, name: String, path: String, experiment: String) throws(ExperimentError) {
        self.task = task
        file = try LineFile(directory: directory, name: name, path: path, experiment: experiment, subject: "task log")
        try file.write(
            "\(Timestamp.now()) [session] task \(task) logged by process \(getpid()) on host \(Paths.hostName())\n"
        )
    }

    /// A log line of the task.
    package func log(_ message: String) throws(ExperimentError) {
        try file.write(LineFile.lines(message, prefix: "\(Timestamp.now()) [log] "))
    }

    /// A line about the task session itself (how it ended, for one).
    package func session(_ message: String) throws(ExperimentError) {
        try file.write(LineFile.lines(message, prefix: "\(Timestamp.now()) [session] "))
    }

    /// Text the task wrote to `stream`; complete lines are written now, the rest when its line ends.
    package func write(_ text: String, to stream: Stream) throws(ExperimentError) {
        try write(bytes: Array(text.utf8), to: stream)
    }

    /// Bytes the task wrote to `stream`, as they came (a character split between two calls stays whole);
    /// complete lines are written now, the rest when its line ends.
    package func write(bytes: some Collection<UInt8>, to stream: Stream) throws(ExperimentError) {
        let complete: [UInt8]? = partial.withLock { partial in
            var joined = partial[stream] ?? []
            joined.append(contentsOf: bytes)
            guard let lastNewline = joined.lastIndex(of: UInt8(ascii: "\n")) else {
                partial[stream] = joined
                return nil
            }
            partial[stream] = Array(joined[(lastNewline + 1)...])
            return Array(joined[..<lastNewline])
        }
        if let complete {
            let text = String(decoding: complete, as: UTF8.self)
            try file.write(LineFile.lines(text, prefix: "\(Timestamp.now()) [\(stream.rawValue)] "))
        }
    }

    /// Writes the unfinished lines of every stream, as they are.
    package func flush() throws(ExperimentError) {
        let rest = partial.withLock { partial in
            defer { partial.removeAll() }
            return Stream.allCases.compactMap { stream in
                partial[stream].flatMap { $0.isEmpty ? nil : (stream, String(decoding: $0, as: UTF8.self)) }
            }
        }
        for (stream, text) in rest {
            try file.write(LineFile.lines(text, prefix: "\(Timestamp.now()) [\(stream.rawValue)] "))
        }
    }

    /// Writes unfinished lines and closes the file.
    package func close() throws(ExperimentError) {
        defer { file.close() }
        try flush()
    }

    /// Opens `tasks/<task>.log` in the experiment folder `folder` as this host sees it, for a task that
    /// runs away from the process that has the experiment open (a worker's task). The file is appended
    /// to after a session header; `TaskLog.close()` closes it.
    package static func open(task: String, experiment: String, folder: String) throws(ExperimentError) -> TaskLog {
        let tasksFolder = Paths.join(folder, Experiment.tasksName)
        guard let fileName = fileName(for: task) else {
            throw ExperimentError(
                .invalidTaskName,
                experiment: experiment,
                path: tasksFolder,
                reason: "cannot hold the log of a task with an empty name",
                subject: "tasks folder"
            )
        }
        let directory = try SystemCall.value("open") { Glibc.open(tasksFolder, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            .get("opened", experiment: experiment, path: tasksFolder, subject: "tasks folder")
        defer { SystemCall.close(directory) }
        return try TaskLog(
            task: task,
            directory: directory,
            name: fileName,
            path: Paths.join(tasksFolder, fileName),
            experiment: experiment
        )
    }

    /// The file name of `task`'s log: letters, digits, `-` and `.` stay, `:` becomes `_`, and every other
    /// byte (`_` and `%` included) becomes `%XX`, so different tasks never share a file, no name is hidden
    /// or climbs out of `tasks/`, and `1:5` reads as `1_5.log`. Nil for an empty name.
    package static func fileName(for task: String) -> String? {
        guard !task.isEmpty else { return nil }
        var name = ""
        for (position, byte) in task.utf8.enumerated() {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"):
                name.append(Character(Unicode.Scalar(byte)))
            case UInt8(ascii: ".") where position > 0:
                name.append(".")
            case UInt8(ascii: ":"):
                name.append("_")
            default:
                let hex = String(byte, radix: 16, uppercase: true)
                name += "%" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        // A file name has at most 255 bytes: a long name keeps its start and gets a hash of the whole.
        if name.utf8.count > 200 {
            var hash = FNV1a64()
            hash.combine(task)
            name = String(name.prefix(180)) + "~" + JobKey(value: hash.value).description
        }
        return name + ".log"
    }
}
