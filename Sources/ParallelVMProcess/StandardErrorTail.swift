/// The last lines a child wrote to standard error, bounded in lines and in bytes.
///
/// When a task process crashes, its last words ("Fatal error: Index out of range", "Could not allocate
/// memory") are the best explanation a user can get, but a chatty task must not make the supervisor hold
/// megabytes of log. So only the tail is kept, and the two kinds of line that explain a crash are kept
/// aside even after they scroll out (a Swift backtrace after a trap easily fills twenty lines).
package struct StandardErrorTail: Sendable, Hashable {
    /// Lines kept unless told otherwise.
    package static let defaultLineLimit = 20
    /// Bytes kept unless told otherwise; a longer line is broken at this length.
    package static let defaultByteLimit = 4096

    /// At most this many lines are kept.
    package let lineLimit: Int
    /// At most this many bytes of line text are kept.
    package let byteLimit: Int
    private var complete: [String] = []
    private var completeBytes = 0
    private var partial: [UInt8] = []
    /// The last line that said memory could not be allocated.
    package private(set) var outOfMemoryLine: String?
    /// The last line with a Swift runtime error (`Fatal error:`).
    package private(set) var fatalErrorLine: String?

    package init(lineLimit: Int = defaultLineLimit, byteLimit: Int = defaultByteLimit) {
        precondition(lineLimit > 0 && byteLimit > 0, "a tail keeps at least one line and one byte")
        self.lineLimit = lineLimit
        self.byteLimit = byteLimit
    }

    /// The kept lines, oldest first, with a last line still lacking its newline at the end.
    package var lines: [String] {
        partial.isEmpty ? complete : complete + [String(decoding: partial, as: UTF8.self)]
    }

    /// Adds bytes as they arrived from the pipe; lines may span calls.
    package mutating func append(_ bytes: some Sequence<UInt8>) {
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                commitPartial()
            } else {
                partial.append(byte)
                if partial.count >= byteLimit { commitPartial() }
            }
        }
    }

    private mutating func commitPartial() {
        var line = String(decoding: partial, as: UTF8.self)
        partial.removeAll(keepingCapacity: true)
        if line.hasSuffix("\r") { line.removeLast() }
        if StandardErrorTail.saysOutOfMemory(line) { outOfMemoryLine = line }
        if line.contains("Fatal error:") { fatalErrorLine = line }
        complete.append(line)
        completeBytes += line.utf8.count
        while complete.count > lineLimit || (completeBytes > byteLimit && complete.count > 1) {
            completeBytes -= complete.removeFirst().utf8.count
        }
    }

    /// Whether a line is one of the messages a failed allocation produces: the Swift runtime's, the C++
    /// runtime's, and `strerror(ENOMEM)` in a message that reports a failed call. Glibc's `malloc` says
    /// nothing, so C code that runs out shows only as a crash.
    package static func saysOutOfMemory(_ line: String) -> Bool {
        outOfMemoryMarkers.contains { line.contains($0) }
    }

    private static let outOfMemoryMarkers = [
        // Swift 6: "Fatal error: failed to allocate N bytes of memory with alignment A"; earlier runtimes:
        // "Could not allocate memory."
        "bytes of memory with alignment", "Could not allocate memory", "Cannot allocate memory", "std::bad_alloc",
    ]
}
