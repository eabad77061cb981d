internal import Glibc
internal import Synchronization

/// Frames of bytes over a stream socket between a supervisor and its task process.
///
/// Each frame is a little-endian `UInt32` length followed by that many bytes. The same type serves both ends:
/// the supervisor gets one from `ChildProcess.spawn`, the task process from `ChildProcess.childDidStart`.
/// A peer that exits, crashes or closes its end shows as `ProcessError.Code.peerGone`, never as a hang or
/// a `SIGPIPE`.
///
/// Sends are serialised among themselves and receives among themselves, so one thread may send while
/// another receives. `receive` reads no further than the frame it returns, so when it returns, a frame not
/// yet received is still in the socket and `fileDescriptor` polls readable for it.
package final class MessageChannel: Sendable {
    /// Longer frames are refused: a header announcing more is taken as a corrupt stream, not as a reason
    /// to allocate gigabytes.
    package static let maximumFrameLength = 1 << 30

    /// The socket, for callers that poll it together with other descriptors. Reading or writing it
    /// directly would break the framing.
    package let fileDescriptor: Int32
    private let sending = Mutex(())
    private let receiving = Mutex(PartialFrame())

    /// A frame read in part when a receive timed out, completed by the next receive.
    private struct PartialFrame {
        var header: [UInt8] = []
        var payload: [UInt8] = []
        var payloadFilled = 0
        var length: Int?
    }

    /// Takes ownership of a connected stream socket; `deinit` closes it.
    package init(adopting fileDescriptor: Int32) {
        self.fileDescriptor = fileDescriptor
    }

    deinit {
        closeDescriptor(fileDescriptor)
    }

    /// Two connected channels in this process, for tests and for handing one end to a thread.
    package static func pair() throws(ProcessError) -> (MessageChannel, MessageChannel) {
        let (first, second) = try socketPair()
        return (MessageChannel(adopting: first), MessageChannel(adopting: second))
    }

    /// A connected pair of `AF_UNIX` stream sockets, both close-on-exec.
    static func socketPair() throws(ProcessError) -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        try checked("socketpair", "could not create the socket pair for a task process") {
            socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
        }
        return (fds[0], fds[1])
    }

    /// Shuts the socket down in both directions: the peer's next receive reports `peerGone`, and a receive
    /// blocked in another thread of this process returns. The descriptor itself is closed by `deinit`, so
    /// that no other thread can find its number reused.
    package func close() {
        _ = shutdown(fileDescriptor, Int32(SHUT_RDWR))
    }

    /// Sends one frame, blocking until the socket took all of it.
    ///
    /// - Throws: `frameTooLarge` above `maximumFrameLength`; `peerGone` if the other end is closed.
    package func send(_ bytes: [UInt8]) throws(ProcessError) {
        guard bytes.count <= MessageChannel.maximumFrameLength else {
            throw ProcessError(
                .frameTooLarge,
                "a frame of \(bytes.count) bytes exceeds the channel's limit of \(MessageChannel.maximumFrameLength)"
            )
        }
        let length = UInt32(bytes.count)
        let header: [UInt8] = [
            UInt8(truncatingIfNeeded: length), UInt8(truncatingIfNeeded: length >> 8),
            UInt8(truncatingIfNeeded: length >> 16), UInt8(truncatingIfNeeded: length >> 24),
        ]
        try sending.withLock { (_: inout Void) throws(ProcessError) in
            // One write for small frames; a copy of a large one would cost more than the extra call.
            if bytes.count <= 64 * 1024 {
                try sendAll(header + bytes)
            } else {
                try sendAll(header)
                try sendAll(bytes)
            }
        }
    }

    /// Sends a small frame (64 KiB at most) only if the socket takes it whole at once; returns whether it
    /// did. A supervisor uses it to send from its own thread without ever blocking on a task process that
    /// is itself blocked sending.
    package func trySend(_ bytes: [UInt8]) throws(ProcessError) -> Bool {
        guard bytes.count <= 64 * 1024 else { return false }
        let length = UInt32(bytes.count)
        let frame: [UInt8] =
            [
                UInt8(truncatingIfNeeded: length), UInt8(truncatingIfNeeded: length >> 8),
                UInt8(truncatingIfNeeded: length >> 16), UInt8(truncatingIfNeeded: length >> 24),
            ] + bytes
        return try sending.withLock { (_: inout Void) throws(ProcessError) -> Bool in
            let sent = frame.withUnsafeBytes { raw in
                Glibc.send(fileDescriptor, raw.baseAddress!, raw.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if sent == frame.count { return true }
            if sent < 0 {
                let number = errno
                switch number {
                case EAGAIN, EINTR: return false
                case EPIPE, ECONNRESET: throw ProcessError(.peerGone, "the peer closed the channel", call: "send")
                default: throw .systemCall("send", errno: number, "could not send a frame")
                }
            }
            // Part of the frame is in: the rest must follow at once to keep the framing.
            try sendAll(Array(frame[sent...]))
            return true
        }
    }

    private func sendAll(_ bytes: [UInt8]) throws(ProcessError) {
        // `withUnsafeBytes` rethrows untyped errors, so the failure comes out as a value.
        let failure = bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> ProcessError? in
            var offset = 0
            while offset < raw.count {
                // MSG_NOSIGNAL: a dead peer gives EPIPE here, not a SIGPIPE that would end this process.
                let sent = Glibc.send(
                    fileDescriptor,
                    raw.baseAddress! + offset,
                    raw.count - offset,
                    Int32(MSG_NOSIGNAL)
                )
                if sent >= 0 {
                    offset += sent
                    continue
                }
                let number = errno
                switch number {
                case EINTR, EAGAIN: continue
                case EPIPE, ECONNRESET: return ProcessError(.peerGone, "the peer closed the channel", call: "send")
                default: return .systemCall("send", errno: number, "could not send a frame")
                }
            }
            return nil
        }
        if let failure { throw failure }
    }

    /// Receives one frame.
    ///
    /// - Parameter timeout: how long to wait; `nil` waits as long as it takes. A frame that arrives only in
    ///   part within the timeout is kept, and the next call completes it.
    /// - Returns: the frame, or `nil` if the timeout passed first.
    /// - Throws: `peerGone` when the other end closed (between frames or in the middle of one), `corruptFrame`
    ///   for a length above `maximumFrameLength`.
    package func receive(timeout: Duration? = nil) throws(ProcessError) -> [UInt8]? {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        return try receiving.withLock { (frame: inout PartialFrame) throws(ProcessError) -> [UInt8]? in
            while true {
                if let length = frame.length, frame.payloadFilled == length {
                    let payload = frame.payload
                    frame = PartialFrame()
                    return payload
                }
                if let deadline {
                    guard try waitReadable(until: deadline) else { return nil }
                }
                if frame.length == nil {
                    try readHeader(into: &frame)
                } else {
                    try readPayload(into: &frame)
                }
            }
        }
    }

    private func readHeader(into frame: inout PartialFrame) throws(ProcessError) {
        var bytes: [UInt8] = [0, 0, 0, 0]
        let wanted = 4 - frame.header.count
        let count = try readSome(into: &bytes, at: 0, count: wanted, midFrame: !frame.header.isEmpty)
        frame.header += bytes[0..<count]
        guard frame.header.count == 4 else { return }
        let length = frame.header.reversed().reduce(0) { $0 << 8 | Int($1) }
        guard length <= MessageChannel.maximumFrameLength else {
            throw ProcessError(
                .corruptFrame,
                "a frame header announced \(length) bytes, above the limit of \(MessageChannel.maximumFrameLength)"
            )
        }
        frame.length = length
        frame.payload = [UInt8](repeating: 0, count: length)
    }

    private func readPayload(into frame: inout PartialFrame) throws(ProcessError) {
        let length = frame.length!
        frame.payloadFilled += try readSome(
            into: &frame.payload,
            at: frame.payloadFilled,
            count: length - frame.payloadFilled,
            midFrame: true
        )
    }

    /// One `read` of at most `count` bytes; end of file is the peer gone.
    private func readSome(
        into buffer: inout [UInt8],
        at offset: Int,
        count: Int,
        midFrame: Bool
    ) throws(ProcessError) -> Int {
        while true {
            let result = buffer.withUnsafeMutableBytes { read(fileDescriptor, $0.baseAddress! + offset, count) }
            if result > 0 { return result }
            if result == 0 {
                throw ProcessError(
                    .peerGone,
                    midFrame ? "the peer closed the channel in the middle of a frame" : "the peer closed the channel"
                )
            }
            let number = errno
            switch number {
            case EINTR, EAGAIN: continue
            case ECONNRESET: throw ProcessError(.peerGone, "the peer reset the channel", call: "read")
            default: throw .systemCall("read", errno: number, "could not receive a frame")
            }
        }
    }

    /// Polls until the socket is readable (or closed) or the deadline passes; returns whether it is.
    private func waitReadable(until deadline: ContinuousClock.Instant) throws(ProcessError) -> Bool {
        while true {
            var fds = pollfd(fd: fileDescriptor, events: Int16(POLLIN), revents: 0)
            let ready = poll(&fds, 1, pollMilliseconds(deadline - ContinuousClock.now))
            if ready > 0 { return true }
            if ready == 0 {
                if ContinuousClock.now >= deadline { return false }
                continue
            }
            if errno == EINTR { continue }
            throw .systemCall("poll", errno: errno, "could not wait for a frame")
        }
    }
}
