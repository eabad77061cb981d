import Logging

/// Worker to spawner: a log line of a task (or of the worker), printed in the spawner's log.
///
/// Body: level, text, then the metadata as key and value pairs of strings, so that a task's `point=7`
/// arrives as metadata and not flattened into the text.
struct LogRecord: Sendable {
    var level: Logger.Level
    var text: String
    var metadata: [String: String]

    func send(from task: Int, over transport: any FrameLink) throws(VMError) {
        try transport.send(frame(from: task).bytes, to: 0)
    }

    func frame(from task: Int) -> WireWriter {
        var frame = WireWriter(kind: .log, sourceTask: task, destinationTask: 0, capacity: 64 + text.utf8.count)
        frame.append(UInt8(Logger.Level.allCases.firstIndex(of: level) ?? 0))
        frame.append(text)
        frame.append(UInt32(metadata.count))
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            frame.append(key)
            frame.append(value)
        }
        return frame
    }

    init(level: Logger.Level, text: String, metadata: [String: String] = [:]) {
        self.level = level
        self.text = text
        self.metadata = metadata
    }

    init(_ envelope: Envelope) throws(VMError) {
        var reader = envelope.reader
        let index = Int(try reader.read(UInt8.self))
        level = Logger.Level.allCases.indices.contains(index) ? Logger.Level.allCases[index] : .info
        text = try reader.readString()
        let count = Int(try reader.read(UInt32.self))
        var metadata: [String: String] = [:]
        for _ in 0..<min(count, 4096) {
            let key = try reader.readString()
            metadata[key] = try reader.readString()
        }
        self.metadata = metadata
    }
}

extension LogRecord {
    /// The record as one line of a task's log: `warning: text key=value ...`.
    var logLine: String {
        var line = "\(level): \(text)"
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) { line += " \(key)=\(value)" }
        return line
    }
}
