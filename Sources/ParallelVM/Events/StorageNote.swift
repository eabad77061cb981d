/// Worker to spawner: what preparing a task's local storage took, for the
/// ``VMEvent/Kind-swift.enum/storagePrepared(task:host:files:bytes:seconds:)`` event.
///
/// It travels as a log frame whose metadata marks it, so no new message kind is needed; the spawner turns
/// it into the event and does not print it. A worker sends one only for tasks whose storage it mirrored.
struct StorageNote: Sendable {
    static let marker = "parallelvm.storage-prepared"

    var files: Int
    var bytes: Int
    var seconds: Double

    var record: LogRecord {
        LogRecord(
            level: .trace,
            text: StorageNote.marker,
            metadata: [StorageNote.marker: "\(files) \(bytes) \(seconds)"]
        )
    }

    init(files: Int, bytes: Int, seconds: Double) {
        self.files = files
        self.bytes = bytes
        self.seconds = seconds
    }

    /// The note a log record carries, or nil for an ordinary log line.
    init?(_ record: LogRecord) {
        guard let text = record.metadata[StorageNote.marker] else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count == 3, let files = Int(fields[0]), let bytes = Int(fields[1]),
            let seconds = Double(fields[2])
        else { return nil }
        self.init(files: files, bytes: bytes, seconds: seconds)
    }
}
