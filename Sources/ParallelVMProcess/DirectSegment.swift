internal import CSharedRing
internal import Glibc

/// Shared memory between the spawner and a task process on the spawner's host, so that a spawn request
/// and its result pass between them without their worker rank: a ring each way, and the doorbells each
/// end can be woken by.
///
/// The worker rank creates it, by name (a file in `/dev/shm` named after the rank's process), before it
/// starts its task process; the task process and the spawner open it by that name. A name is needed
/// because neither of the two is the rank's child's parent: a memory file's descriptor cannot be handed
/// to the spawner.
package final class DirectSegment: @unchecked Sendable {
    // Invariant for @unchecked Sendable: the mapping never changes after init; the rings' counters and
    // the header's words are atomics; each ring has one producer and one consumer (the callers lock).

    /// Which side of the segment this process is.
    package enum End: Sendable {
        case spawner, taskProcess
    }

    /// The bytes of data in each ring.
    package static let capacity: UInt64 = 256 * 1024
    /// The longest frame that goes through a ring.
    package static let largestFrame = 64 * 1024
    /// The header's bytes: one word per cache line.
    private static let headerSize = 4096

    private enum Word: Int {
        case spawnerPid = 0
        case spawnerToken, taskProcessPid, taskProcessToken
        /// The task that came this way and runs now (0: none), with ``claimedBit`` once its worker rank
        /// ends it; then what the worker rank needs to report it: whether it sends a result, its timeout
        /// and deadline (bits of `Double`s, the deadline in `CLOCK_MONOTONIC` seconds), its function's name.
        case task, sendBack, timeout, deadline, functionLength
    }
    /// Where the running task's function name starts, and the most of it that is kept.
    private static let functionOffset = 1024
    private static let functionCapacity = headerSize - functionOffset
    /// Set in the task word by the worker rank that ends the task: the task's result is then not sent.
    private static let claimedBit: UInt64 = 1 << 62

    /// A task that came through the segment, as its worker rank sees it.
    package struct RunningTask: Sendable, Equatable {
        package var number: Int
        package var function: String
        package var sendBack: Bool
        package var timeout: Double
        /// When it times out (`CLOCK_MONOTONIC` seconds); nil without a timeout.
        package var deadline: Double?
        /// Whether the worker rank has claimed it (it is being ended).
        package var claimed: Bool
    }

    /// The segment's path for the worker rank whose process is `pid` and whose doorbell has `token` (a
    /// random number: hosts that share `/dev/shm` may repeat PIDs).
    package static func path(forWorker pid: Int32, token: UInt64) -> String {
        "/dev/shm/parallelvm-direct-\(pid)-\(String(token, radix: 16))"
    }

    package let path: String
    let end: End
    private let memory: UnsafeMutableRawPointer
    private let size: Int
    private let outgoing: UnsafeMutableRawPointer
    private let incoming: UnsafeMutableRawPointer

    private static var memorySize: Int { headerSize + 2 * Int(parallelvm_ring_size(capacity)) }

    /// The segment's descriptor, kept by the worker rank that made it, for its task processes.
    package let descriptor: Int32?

    private init(path: String, fd: Int32, end: End, keep: Bool = false) throws(ProcessError) {
        size = DirectSegment.memorySize
        guard let mapped = parallelvm_shared_memory_map(fd, UInt64(size)) else {
            let code = errno
            Glibc.close(fd)
            throw .systemCall("mmap", errno: code, "could not map the shared memory \(path)")
        }
        if !keep { Glibc.close(fd) }
        descriptor = keep ? fd : nil
        self.path = path
        self.end = end
        memory = mapped
        let toTaskProcess = mapped + DirectSegment.headerSize
        let toSpawner = toTaskProcess + Int(parallelvm_ring_size(DirectSegment.capacity))
        outgoing = end == .spawner ? toTaskProcess : toSpawner
        incoming = end == .spawner ? toSpawner : toTaskProcess
    }

    deinit {
        parallelvm_shared_memory_unmap(memory, UInt64(size))
        if let descriptor { Glibc.close(descriptor) }
    }

    /// Creates the segment at `path` (replacing what a dead process of the same PID left there), zeroed,
    /// and maps it; only this user can open it.
    package static func create(path: String) throws(ProcessError) -> DirectSegment {
        unlink(path)
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .systemCall("open", errno: errno, "could not create the shared memory \(path)") }
        guard ftruncate(fd, off_t(memorySize)) == 0 else {
            let code = errno
            Glibc.close(fd)
            unlink(path)
            throw .systemCall("ftruncate", errno: code, "could not size the shared memory \(path)")
        }
        return try DirectSegment(path: path, fd: fd, end: .taskProcess, keep: true)
    }

    /// Maps the segment a task process inherited at `descriptor` (from `create`), and closes the
    /// descriptor: what the task starts must not hold it.
    package static func inherited(_ descriptor: Int32) throws(ProcessError) -> DirectSegment {
        var info = stat()
        guard fstat(descriptor, &info) == 0, info.st_size == off_t(memorySize) else {
            throw ProcessError(.badEnvironment, "descriptor \(descriptor) is not a direct route's shared memory")
        }
        return try DirectSegment(path: "descriptor \(descriptor)", fd: descriptor, end: .taskProcess)
    }

    /// Opens the segment a worker rank created at `path`, as `end`.
    package static func open(path: String, as end: End) throws(ProcessError) -> DirectSegment {
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw .systemCall("open", errno: errno, "could not open the shared memory \(path)") }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_uid == geteuid(), info.st_size == off_t(memorySize) else {
            Glibc.close(fd)
            throw ProcessError(.badEnvironment, "the shared memory \(path) is not this user's, or not of its size")
        }
        return try DirectSegment(path: path, fd: fd, end: end)
    }

    /// Removes the segment's name (the memory stays while mapped).
    package func unlinkName() { unlink(path) }

    private func word(_ word: Word) -> UnsafeMutableRawPointer { memory + word.rawValue * 64 }

    /// The doorbell (process and token) of this end, for the other end to ring.
    package func publishBell(pid: Int32, token: UInt64) {
        parallelvm_shared_store(word(end == .spawner ? .spawnerToken : .taskProcessToken), token)
        parallelvm_shared_store(word(end == .spawner ? .spawnerPid : .taskProcessPid), UInt64(UInt32(bitPattern: pid)))
    }

    /// The other end's doorbell, once it published one.
    package var peerBell: (pid: Int32, token: UInt64)? {
        let pid = parallelvm_shared_load(word(end == .spawner ? .taskProcessPid : .spawnerPid))
        guard pid != 0 else { return nil }
        let token = parallelvm_shared_load(word(end == .spawner ? .taskProcessToken : .spawnerToken))
        return (Int32(bitPattern: UInt32(truncatingIfNeeded: pid)), token)
    }

    // MARK: - The running task

    /// The task process starts task `number`, which came through the segment: from now until
    /// ``endTask(_:)`` its worker rank can end and report it.
    package func beginTask(_ number: Int, function: String, sendBack: Bool, timeout: Double, now: Double) {
        var name = Array(function.utf8.prefix(DirectSegment.functionCapacity))
        name.withUnsafeMutableBytes { bytes in
            guard let base = bytes.baseAddress else { return }
            (memory + DirectSegment.functionOffset).copyMemory(from: base, byteCount: bytes.count)
        }
        parallelvm_shared_store(word(.functionLength), UInt64(name.count))
        parallelvm_shared_store(word(.sendBack), sendBack ? 1 : 0)
        parallelvm_shared_store(word(.timeout), timeout.bitPattern)
        parallelvm_shared_store(word(.deadline), (timeout > 0 ? now + timeout : 0).bitPattern)
        parallelvm_shared_store(word(.task), UInt64(number))
    }

    /// The task process is done with task `number`: true when it may send its end, false when its worker
    /// rank has claimed it (it is being ended, and the worker rank reports it).
    package func endTask(_ number: Int) -> Bool {
        parallelvm_shared_compare_exchange(word(.task), UInt64(number), 0) == 1
    }

    /// The task that came through the segment and has not ended, if any.
    package func runningTask() -> RunningTask? {
        while true {
            let task = parallelvm_shared_load(word(.task))
            guard task != 0 else { return nil }
            let length = min(Int(parallelvm_shared_load(word(.functionLength))), DirectSegment.functionCapacity)
            let name = [UInt8](UnsafeRawBufferPointer(start: memory + DirectSegment.functionOffset, count: length))
            let deadline = Double(bitPattern: parallelvm_shared_load(word(.deadline)))
            let found = RunningTask(
                number: Int(task & ~DirectSegment.claimedBit),
                function: String(decoding: name, as: UTF8.self),
                sendBack: parallelvm_shared_load(word(.sendBack)) != 0,
                timeout: Double(bitPattern: parallelvm_shared_load(word(.timeout))),
                deadline: deadline > 0 ? deadline : nil,
                claimed: task & DirectSegment.claimedBit != 0
            )
            // The fields are the task's only if it is still the same one.
            if parallelvm_shared_load(word(.task)) & ~DirectSegment.claimedBit == UInt64(found.number) { return found }
        }
    }

    /// The running task's number, deadline and whether it is claimed, without its function's name (read
    /// at every turn of the worker rank's loop).
    package func runningTaskTimes() -> (number: Int, deadline: Double?, claimed: Bool)? {
        let task = parallelvm_shared_load(word(.task))
        guard task != 0 else { return nil }
        let deadline = Double(bitPattern: parallelvm_shared_load(word(.deadline)))
        guard parallelvm_shared_load(word(.task)) == task else { return runningTaskTimes() }
        return (
            Int(task & ~DirectSegment.claimedBit), deadline > 0 ? deadline : nil, task & DirectSegment.claimedBit != 0
        )
    }

    /// The worker rank takes task `number` over to end it; false when it has ended meanwhile.
    package func claimTask(_ number: Int) -> Bool {
        parallelvm_shared_compare_exchange(word(.task), UInt64(number), UInt64(number) | DirectSegment.claimedBit) == 1
    }

    /// Forgets the running task (its worker rank has reported it).
    package func clearTask() { parallelvm_shared_store(word(.task), 0) }

    /// The longest piece of a message in a ring: a longer message goes in several, one after the other.
    static let pieceSize = 60 * 1024

    /// Writes a message into the outgoing ring, in pieces when it is long, calling `whileFull` each time
    /// the ring has no room (the caller takes in what the other end sends meanwhile, so that two ends
    /// writing long messages to each other do not wait for each other for ever). Returns false, with the
    /// message cut short, when `whileFull` returns false: the other end is gone. One writer at a time.
    package func write(_ bytes: [UInt8], whileFull: () -> Bool) -> Bool {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            repeat {
                let length = min(DirectSegment.pieceSize, raw.count - offset)
                let more = offset + length < raw.count
                while parallelvm_ring_write_piece(
                    outgoing,
                    DirectSegment.capacity,
                    raw.baseAddress.map { $0 + offset },
                    UInt32(length),
                    offset == 0 ? 1 : 0,
                    more ? 1 : 0
                ) == 0 {
                    guard whileFull() else { return false }
                }
                offset += length
            } while offset < raw.count
            return true
        }
    }

    /// Writes a message into the outgoing ring if it fits there whole now; false (nothing written) if not.
    /// One writer at a time.
    package func writeIfRoom(_ bytes: [UInt8]) -> Bool {
        let pieces = max(1, (bytes.count + DirectSegment.pieceSize - 1) / DirectSegment.pieceSize)
        guard parallelvm_ring_room(outgoing, DirectSegment.capacity) >= UInt64(bytes.count + 4 * pieces) else {
            return false
        }
        return write(bytes) { false }
    }

    /// Whether the other end's process, as it published its doorbell, has ended and no process took
    /// its place (a worker rank starts a new task process after one dies: it publishes its own).
    package var peerEnded: Bool {
        guard let bell = peerBell else { return false }
        return kill(bell.pid, 0) != 0 && errno == ESRCH && peerBell?.pid == bell.pid
    }

    /// The pieces of the incoming message read so far (one reader at a time).
    private var partial: [UInt8] = []

    /// The next whole incoming message, or nil when none has arrived whole yet. One reader at a time.
    ///
    /// A message whose writer died before its last piece is dropped when the next message starts, and
    /// pieces whose first piece a reader that died took are dropped: a task process replaced after a
    /// crash finds no torn message, and the spawner none from it.
    package func receive() -> [UInt8]? {
        while true {
            let prefix = parallelvm_ring_next_length(incoming, DirectSegment.capacity)
            guard prefix >= 0 else { return nil }
            let length = Int(prefix & 0x3fff_ffff)
            let more = prefix & 0x8000_0000 != 0
            let first = prefix & 0x4000_0000 != 0
            if first {
                partial = []
            } else if partial.isEmpty {
                parallelvm_ring_skip(incoming, UInt32(length))
                continue
            }
            if !more && partial.isEmpty {
                return [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
                    parallelvm_ring_take(incoming, DirectSegment.capacity, buffer.baseAddress, UInt32(length))
                    count = length
                }
            }
            let start = partial.count
            partial.append(contentsOf: repeatElement(0, count: length))
            partial.withUnsafeMutableBytes { buffer in
                parallelvm_ring_take(incoming, DirectSegment.capacity, buffer.baseAddress! + start, UInt32(length))
            }
            if !more {
                defer { partial = [] }
                return partial
            }
        }
    }

    /// Whether an incoming frame is waiting.
    package var hasIncoming: Bool { parallelvm_ring_next_length(incoming, DirectSegment.capacity) >= 0 }

    /// Marks this end as about to block for the incoming ring, or not any more.
    package func setWaiting(_ waiting: Bool) { parallelvm_ring_set_waiting(incoming, waiting ? 1 : 0) }

    /// Whether the other end said it is about to block for what this end writes; clears its mark.
    package func takePeerWaiting() -> Bool { parallelvm_ring_consumer_waiting(outgoing, 1) == 1 }
}
