internal import Glibc
internal import Synchronization

/// Reads a child's standard error on a thread of its own, forwarding it to this process's standard error
/// as it arrives and keeping its tail.
///
/// A thread (not a task) because the read blocks, and it must go on while the supervisor itself is blocked
/// in `waitid`: a child that fills the pipe and is not drained stops, and then never ends.
final class StandardErrorDrain: Sendable {
    private struct State {
        var tail: StandardErrorTail
        var sawEndOfFile = false
        var thread: pthread_t?
    }

    private let readEnd: Int32
    private let forward: Bool
    /// A byte written here tells the thread to stop waiting for end of file: a grandchild that escaped
    /// the process group may hold the pipe's write end open for ever.
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let state: Mutex<State>

    /// Takes ownership of `readEnd`.
    init(readEnd: Int32, forward: Bool, tail: StandardErrorTail) throws(ProcessError) {
        let wake = try closeOnExecPipe("could not create the standard error drain's wake-up pipe")
        self.readEnd = readEnd
        self.forward = forward
        self.wakeRead = wake.read
        self.wakeWrite = wake.write
        self.state = Mutex(State(tail: tail))
    }

    deinit {
        closeDescriptor(readEnd)
        closeDescriptor(wakeRead)
        closeDescriptor(wakeWrite)
    }

    /// Starts the thread. It holds a reference to the drain until it ends.
    func start() throws(ProcessError) {
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(
            &thread,
            nil,
            { context in
                let drain = Unmanaged<StandardErrorDrain>.fromOpaque(context!).takeRetainedValue()
                drain.run()
                return nil
            },
            context
        )
        guard result == 0 else {
            Unmanaged<StandardErrorDrain>.fromOpaque(context).release()
            throw .systemCall("pthread_create", errno: result, "could not start the standard error drain thread")
        }
        state.withLock { $0.thread = thread }
    }

    /// What was read so far.
    var tail: StandardErrorTail { state.withLock { $0.tail } }

    /// Waits until every writer closed the pipe, or `timeout` passed; returns whether they did.
    func waitForEndOfFile(timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            if state.withLock({ $0.sawEndOfFile }) { return true }
            if ContinuousClock.now >= deadline { return false }
            sleepThread(.milliseconds(2))
        }
    }

    /// Makes the thread read what is already in the pipe and end, then joins it. Idempotent.
    func stop() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
        guard
            let thread = state.withLock({ state -> pthread_t? in
                defer { state.thread = nil }
                return state.thread
            })
        else { return }
        pthread_join(thread, nil)
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        var stopping = false
        // Bounds the last read once asked to stop, against a writer that never pauses.
        var bytesAfterStop = 0
        while true {
            var fds = [pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)]
            if !stopping { fds.append(pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)) }
            // Once asked to stop, take only what is already there.
            let ready = poll(&fds, nfds_t(fds.count), stopping ? 0 : -1)
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            if ready == 0 { break }
            if fds.count > 1 && fds[1].revents != 0 {
                stopping = true
            }
            guard fds[0].revents != 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                break
            }
            if count == 0 {
                state.withLock { $0.sawEndOfFile = true }
                break
            }
            if stopping {
                bytesAfterStop += count
                if bytesAfterStop > 1 << 20 { break }
            }
            let chunk = buffer[0..<count]
            if forward { writeFully(STDERR_FILENO, chunk) }
            state.withLock { $0.tail.append(chunk) }
        }
    }

    /// Forwards a chunk; a failure to write our own standard error is not the child's problem, so it is dropped.
    private func writeFully(_ fd: Int32, _ bytes: ArraySlice<UInt8>) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if written < 0 && errno == EINTR { continue }
                if written <= 0 { return }
                offset += written
            }
        }
    }
}
