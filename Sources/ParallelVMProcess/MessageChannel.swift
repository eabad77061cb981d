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
/// another receives. `receive` buffers what it reads: once it has returned `nil`, at most part of a frame
/// is buffered, and `fileDescriptor` polls readable when the next frame (or the rest of that one) comes.
package final class MessageChannel: Sendable {
    /// Longer frames are refused: a header announcing more is taken as a corrupt stream, not as a reason
    /// to allocate gigabytes.
    package static let maximumFrameLength = 1 << 30

    /// The socket, for callers that poll it together with other descriptors, after `receive` returned
    /// `nil`. Reading or writing it directly would break the framing.
    package let fileDescriptor: Int32
    private let sending = Mutex(())
    private let receiving = Mutex(ReadState())
    /// Rings in memory shared with the peer, when the channel has them: frames up to
    /// `SharedRings.largestFrame` go through them, larger ones through the socket after a marker in the
    /// ring, and the socket also carries wake-ups (empty frames) to a peer blocked in the kernel and the
    /// peer's end (its closing).
    private let rings: SharedRings?
    /// With rings: whether this end has seen the peer's end (a frame in the ring would go nowhere).
    private let peerGoneSeen = Atomic<Bool>(false)

    /// What was read and not yet returned: buffered bytes (whole frames, then part of one), or a frame
    /// too large for the buffer being read into its own array.
    private struct ReadState {
        /// Frames up to this size go through the buffer; larger ones are read into their own array.
        static let chunk = 64 * 1024
        /// The buffer, allocated on the first read; `start..<end` is what was read and not yet returned.
        var buffer: [UInt8] = []
        var start = 0
        var end = 0
        var large: LargeFrame?
        /// With rings: frames read from the socket (wake-ups left out), waiting for their markers.
        var socketFrames: [[UInt8]] = []
        /// With rings: markers taken whose frames have not been returned yet.
        var markersTaken = 0
        /// With rings: the socket was found closed; reported once the ring holds nothing more.
        var peerClosed: ProcessError?
        /// With rings: polls of an empty ring since the socket was last looked at.
        var emptyPolls = 0

        struct LargeFrame {
            var payload: [UInt8]
            var filled: Int
        }

        var holdsPartialFrame: Bool { large != nil || start < end }

        /// Room to read into at the end of the buffer, moving what was not returned to its front when the
        /// room runs short of a whole chunk.
        mutating func makeRoom() {
            if buffer.isEmpty { buffer = [UInt8](repeating: 0, count: 2 * ReadState.chunk + 8) }
            if start == end {
                start = 0
                end = 0
            } else if buffer.count - end < ReadState.chunk + 4 {
                let count = end - start
                buffer.withUnsafeMutableBytes { raw in
                    raw.baseAddress!.copyMemory(from: raw.baseAddress! + start, byteCount: count)
                }
                start = 0
                end = count
            }
        }

        /// The next complete frame, if the bytes read hold one.
        mutating func takeFrame() throws(ProcessError) -> [UInt8]? {
            if let frame = large {
                guard frame.filled == frame.payload.count else { return nil }
                large = nil
                return frame.payload
            }
            let available = end - start
            guard available >= 4 else { return nil }
            let length = buffer.withUnsafeBytes { raw in
                Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: start, as: UInt32.self)))
            }
            guard length <= MessageChannel.maximumFrameLength else {
                throw ProcessError(
                    .corruptFrame,
                    "a frame header announced \(length) bytes, above the limit of \(MessageChannel.maximumFrameLength)"
                )
            }
            if available - 4 >= length {
                let frame = Array(buffer[(start + 4)..<(start + 4 + length)])
                start += 4 + length
                return frame
            }
            if length > ReadState.chunk {
                // The rest goes straight into the frame's own array, not through the buffer.
                var payload = [UInt8](repeating: 0, count: length)
                let have = available - 4
                let from = start + 4
                payload.withUnsafeMutableBytes { raw in
                    buffer.withUnsafeBytes { source in
                        raw.baseAddress!.copyMemory(from: source.baseAddress! + from, byteCount: have)
                    }
                }
                start = 0
                end = 0
                large = LargeFrame(payload: payload, filled: have)
            }
            return nil
        }
    }

    /// Takes ownership of a connected stream socket; `deinit` closes it.
    package convenience init(adopting fileDescriptor: Int32) {
        self.init(adopting: fileDescriptor, rings: nil)
    }

    /// Takes ownership of a connected stream socket, with rings in the shared memory the two ends mapped
    /// (nil: the socket alone).
    init(adopting fileDescriptor: Int32, rings: SharedRings?) {
        self.fileDescriptor = fileDescriptor
        self.rings = rings
    }

    /// Whether small frames pass through shared memory.
    package var hasSharedMemory: Bool { rings != nil }

    deinit {
        closeDescriptor(fileDescriptor)
    }

    /// Two connected channels in this process, for tests and for handing one end to a thread; with
    /// `sharedMemory`, with rings as between a supervisor and its task process.
    package static func pair(sharedMemory: Bool = false) throws(ProcessError) -> (MessageChannel, MessageChannel) {
        let (first, second) = try socketPair()
        guard sharedMemory else { return (MessageChannel(adopting: first), MessageChannel(adopting: second)) }
        let memory = try SharedRings.createMemory()
        defer { closeDescriptor(memory) }
        return (
            MessageChannel(adopting: first, rings: try SharedRings(mapping: memory, supervisorEnd: true)),
            MessageChannel(adopting: second, rings: try SharedRings(mapping: memory, supervisorEnd: false))
        )
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
        if let rings {
            guard !peerGoneSeen.load(ordering: .relaxed) else {
                throw ProcessError(.peerGone, "the peer closed the channel", call: "send")
            }
            try sending.withLock { (_: inout Void) throws(ProcessError) in
                if bytes.count <= SharedRings.largestFrame {
                    var waits = 0
                    while !bytes.withUnsafeBytes({ rings.write($0) }) { try waitForRoom(&waits) }
                    wakePeer(rings)
                } else {
                    // The marker keeps the frame's place among the ring's frames; the socket wakes the peer.
                    var waits = 0
                    while !rings.writeMarker() { try waitForRoom(&waits) }
                    try sendAll(header)
                    try sendAll(bytes)
                }
            }
            return
        }
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
        if let rings {
            guard !peerGoneSeen.load(ordering: .relaxed) else {
                throw ProcessError(.peerGone, "the peer closed the channel", call: "send")
            }
            return sending.withLock { _ in
                guard bytes.withUnsafeBytes({ rings.write($0) }) else { return false }
                wakePeer(rings)
                return true
            }
        }
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

    /// Wakes a peer that said it would block in the kernel for the ring: an empty frame on the socket. A
    /// full socket needs no wake-up (the peer has bytes to read), so this never blocks. Under the send lock.
    private func wakePeer(_ rings: SharedRings) {
        guard rings.takePeerWaiting() else { return }
        var empty: UInt32 = 0
        _ = Glibc.send(fileDescriptor, &empty, 4, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
    }

    /// Waits a little for the peer to make room in the ring, longer the more often it waited for this
    /// frame (20 µs doubling up to 2 ms, so a peer that does not read for a long time costs next to no
    /// CPU); throws `peerGone` if it closed its end.
    private func waitForRoom(_ waits: inout Int) throws(ProcessError) {
        // POLLRDHUP (Linux, 0x2000; Glibc's module leaves it out): the peer shut its end down.
        let peerHungUp: Int16 = 0x2000
        var request = pollfd(fd: fileDescriptor, events: peerHungUp, revents: 0)
        if poll(&request, 1, 0) > 0, request.revents & (peerHungUp | Int16(POLLHUP) | Int16(POLLERR)) != 0 {
            peerGoneSeen.store(true, ordering: .relaxed)
            throw ProcessError(.peerGone, "the peer closed the channel", call: "send")
        }
        usleep(UInt32(20 << min(waits, 7)))
        waits += 1
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
    /// Bytes are read in large pieces into a buffer of the channel, so that a frame usually takes one
    /// system call (or none, when it came in with the one before), and looking for a frame that is not
    /// there takes one non-blocking `recv`. Bytes past the frame returned may stay buffered: a caller that
    /// polls `fileDescriptor` first receives until `nil`, after which at most part of a frame is buffered
    /// and its rest makes the descriptor readable.
    ///
    /// - Parameter timeout: how long to wait; `nil` waits as long as it takes. A frame that arrives only in
    ///   part within the timeout is kept, and the next call completes it.
    /// - Returns: the frame, or `nil` if the timeout passed first.
    /// - Throws: `peerGone` when the other end closed (between frames or in the middle of one), `corruptFrame`
    ///   for a length above `maximumFrameLength`.
    package func receive(timeout: Duration? = nil) throws(ProcessError) -> [UInt8]? {
        if let rings { return try receiveWithRings(rings, timeout: timeout) }
        let deadline = timeout.map { ContinuousClock.now + $0 }
        return try receiving.withLock { (state: inout ReadState) throws(ProcessError) -> [UInt8]? in
            while true {
                if let frame = try state.takeFrame() { return frame }
                guard let deadline else {
                    try fill(&state, waiting: true)
                    continue
                }
                if try fill(&state, waiting: false) { continue }
                if ContinuousClock.now >= deadline { return nil }
                guard try waitReadable(until: deadline) else { return nil }
            }
        }
    }

    /// `receive` with rings: the ring's frames in order, a marker's frame from the socket, wake-ups skipped.
    /// The socket is looked at without blocking every 64 polls of an empty ring (to notice the peer's end)
    /// and before blocking; a wait blocks in `poll` once this end said so in the ring.
    private func receiveWithRings(_ rings: SharedRings, timeout: Duration?) throws(ProcessError) -> [UInt8]? {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        return try receiving.withLock { (state: inout ReadState) throws(ProcessError) -> [UInt8]? in
            while true {
                if state.markersTaken > 0 {
                    if !state.socketFrames.isEmpty {
                        state.markersTaken -= 1
                        return state.socketFrames.removeFirst()
                    }
                    if let failure = state.peerClosed { throw failure }
                    // The frame follows its marker at once: wait for it as for any socket frame.
                    if let deadline {
                        if try pumpSocket(&state) { continue }
                        guard ContinuousClock.now < deadline, try waitReadable(until: deadline) else { return nil }
                        continue
                    }
                    do throws(ProcessError) {
                        try fill(&state, waiting: true)
                    } catch  where error.code == .peerGone {
                        peerGoneSeen.store(true, ordering: .relaxed)
                        throw error
                    }
                    try collectSocketFrames(&state)
                    continue
                }
                if let length = rings.nextLength() {
                    state.emptyPolls = 0
                    let frame = rings.take(length: length)
                    if length == SharedRings.marker {
                        state.markersTaken += 1
                        continue
                    }
                    return frame
                }
                if let failure = state.peerClosed {
                    // Frames written before the peer closed came first; now there are none.
                    throw failure
                }
                let expired = deadline.map { ContinuousClock.now >= $0 } ?? false
                state.emptyPolls += 1
                if !expired || state.emptyPolls >= 64 {
                    state.emptyPolls = 0
                    if try pumpSocket(&state) { continue }
                }
                if expired { return nil }
                rings.setWaiting(true)
                if rings.nextLength() != nil {
                    rings.setWaiting(false)
                    continue
                }
                let readable: Bool
                do throws(ProcessError) {
                    readable = try waitReadable(until: deadline ?? .now + .seconds(3600))
                } catch {
                    rings.setWaiting(false)
                    throw error
                }
                rings.setWaiting(false)
                if readable { _ = try pumpSocket(&state) }
            }
        }
    }

    /// Reads what the socket holds without blocking and keeps its frames; a closed socket is noted for
    /// the caller to report once the ring is empty. Returns whether it read anything.
    private func pumpSocket(_ state: inout ReadState) throws(ProcessError) -> Bool {
        let read: Bool
        do {
            read = try fill(&state, waiting: false)
        } catch  where error.code == .peerGone {
            state.peerClosed = error
            peerGoneSeen.store(true, ordering: .relaxed)
            return true
        }
        if read { try collectSocketFrames(&state) }
        return read
    }

    /// Moves the complete frames buffered from the socket to `socketFrames`, dropping wake-ups.
    private func collectSocketFrames(_ state: inout ReadState) throws(ProcessError) {
        while let frame = try state.takeFrame() {
            if !frame.isEmpty { state.socketFrames.append(frame) }
        }
    }

    /// For a caller about to block on `fileDescriptor` with other descriptors: says so to the peer, so that
    /// a frame it puts in the ring makes the socket readable. Returns false (and says nothing) when a frame
    /// is already there or the peer is gone: the caller should receive instead of blocking. Call
    /// `finishBlocking` after the wait.
    package func prepareToBlock() -> Bool {
        guard let rings else { return true }
        return receiving.withLock { (state: inout ReadState) -> Bool in
            guard (try? pumpSocket(&state)) != nil, state.peerClosed == nil else { return false }
            if !state.socketFrames.isEmpty || rings.nextLength() != nil { return false }
            rings.setWaiting(true)
            if rings.nextLength() != nil {
                rings.setWaiting(false)
                return false
            }
            return true
        }
    }

    /// Ends what `prepareToBlock` started.
    package func finishBlocking() {
        rings?.setWaiting(false)
    }

    /// Reads what the socket holds into the buffer (or into a large frame's payload directly); returns
    /// whether it read anything. Without `waiting`, it does not block.
    @discardableResult
    private func fill(_ state: inout ReadState, waiting: Bool) throws(ProcessError) -> Bool {
        let flags = waiting ? Int32(0) : Int32(MSG_DONTWAIT)
        while true {
            let result: Int
            if var large = state.large {
                state.large = nil
                result = large.payload.withUnsafeMutableBytes { raw in
                    recv(fileDescriptor, raw.baseAddress! + large.filled, raw.count - large.filled, flags)
                }
                if result > 0 { large.filled += result }
                state.large = large
            } else {
                state.makeRoom()
                let end = state.end
                result = state.buffer.withUnsafeMutableBytes { raw in
                    recv(fileDescriptor, raw.baseAddress! + end, raw.count - end, flags)
                }
                if result > 0 { state.end += result }
            }
            if result > 0 { return true }
            if result == 0 {
                throw ProcessError(
                    .peerGone,
                    state.holdsPartialFrame
                        ? "the peer closed the channel in the middle of a frame" : "the peer closed the channel"
                )
            }
            let number = errno
            switch number {
            case EINTR: continue
            case EAGAIN where !waiting: return false
            case EAGAIN: continue
            case ECONNRESET: throw ProcessError(.peerGone, "the peer reset the channel", call: "recv")
            default: throw .systemCall("recv", errno: number, "could not receive a frame")
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
