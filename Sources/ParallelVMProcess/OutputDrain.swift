internal import Glibc
internal import Synchronization

/// Reads one of a child's output pipes (standard error, or standard output with `ChildProcess.Output.forward`)
/// on a thread of its own, forwarding it to this process's matching descriptor as it arrives, keeping its
/// tail, and handing it to an observer when one is set.
///
/// A thread (not a task) because the read blocks, and it must go on while the supervisor itself is blocked
/// in `waitid`: a child that fills the pipe and is not drained stops, and then never ends.
final class OutputDrain: Sendable {
    private struct State {
        var tail: StandardErrorTail
        var sawEndOfFile = false
        var thread: pthread_t?
    }

    /// What the thread and `deliverPending` hold while they read and deliver, so that bytes reach the
    /// observer in pipe order and a caller of `deliverPending` knows nothing read earlier is still on its way.
    private struct Delivery {
        var observer: (@Sendable (ArraySlice<UInt8>) -> Void)?
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
    }

    private let readEnd: Int32
    /// Where the bytes are copied as they arrive; nil copies them nowhere.
    private let forwardTo: Int32?
    /// A byte written here tells the thread to stop waiting for end of file: a grandchild that escaped
    /// the process group may hold the pipe's write end open for ever.
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let state: Mutex<State>
    private let delivery = Mutex(Delivery())

    /// Takes ownership of `readEnd`, which it makes non-blocking (the thread and `deliverPending` both read it).
    init(readEnd: Int32, forwardTo: Int32?, tail: StandardErrorTail) throws(ProcessError) {
        let wake = try closeOnExecPipe("could not create the output drain's wake-up pipe")
        let flags = fcntl(readEnd, F_GETFL)
        _ = fcntl(readEnd, F_SETFL, flags | O_NONBLOCK)
        self.readEnd = readEnd
        self.forwardTo = forwardTo
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
                let drain = Unmanaged<OutputDrain>.fromOpaque(context!).takeRetainedValue()
                drain.run()
                return nil
            },
            context
        )
        guard result == 0 else {
            Unmanaged<OutputDrain>.fromOpaque(context).release()
            throw .systemCall("pthread_create", errno: result, "could not start the output drain thread")
        }
        state.withLock { $0.thread = thread }
    }

    /// What was read so far.
    var tail: StandardErrorTail { state.withLock { $0.tail } }

    /// Sets (or with nil removes) the function that gets every chunk read from now on, on the drain's thread
    /// or on the thread calling `deliverPending`.
    func setObserver(_ observer: (@Sendable (ArraySlice<UInt8>) -> Void)?) {
        delivery.withLock { $0.observer = observer }
    }

    /// Reads and delivers what the pipe holds now. When it returns, every byte the child wrote before the
    /// call has been delivered (a write that returned is in the pipe or was read already, and a read by the
    /// thread is delivered before the thread lets go of the delivery lock).
    func deliverPending() {
        delivery.withLock { delivery in
            var bytesRead = 0
            // Bounded against a writer that never pauses.
            while bytesRead < 1 << 20 {
                let count = readAndDeliver(&delivery)
                if count <= 0 { return }
                bytesRead += count
            }
        }
    }

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

    /// One read: the byte count delivered, 0 at end of file, -1 when nothing is there now, -2 when the read failed.
    private func readAndDeliver(_ delivery: inout Delivery) -> Int {
        while true {
            let count = delivery.buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : -2
            }
            if count == 0 {
                state.withLock { $0.sawEndOfFile = true }
                return 0
            }
            let chunk = delivery.buffer[0..<count]
            if let forwardTo { writeFully(forwardTo, chunk) }
            state.withLock { $0.tail.append(chunk) }
            delivery.observer?(chunk)
            return count
        }
    }

    private func run() {
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
            let count = delivery.withLock { readAndDeliver(&$0) }
            if count == 0 { break }
            // Nothing there: `deliverPending` took it between the poll and the read.
            if count == -1 { continue }
            if count < 0 { break }
            if stopping {
                bytesAfterStop += count
                if bytesAfterStop > 1 << 20 { break }
            }
        }
    }

    /// Forwards a chunk; a failure to write our own output is not the child's problem, so it is dropped.
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
