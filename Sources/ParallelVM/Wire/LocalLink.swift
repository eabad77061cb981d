import Foundation
import Glibc
import Synchronization

/// The ranks of a VM that runs as one process (no mpirun, or `mpirun -n 1`): rank 0 is the spawner, and
/// every other rank is a local slot, a ``TaskSupervisor`` on a thread of the spawner's process that
/// supervises a task process of its own. Frames between them go through one mailbox per rank in memory
/// instead of MPI, so the spawner, the dispatcher and the supervisors run the same code as in a cluster run.
final class LocalHub: Sendable {
    /// One rank's incoming frames, in arrival order, and a pipe that is readable while frames may be waiting,
    /// so that a supervisor can wait for its task process and its mailbox in one `poll`.
    final class Mailbox: Sendable {
        let frames = Mutex<[Envelope]>([])
        /// The pipe's read end: polled, and drained before the frames are looked at.
        let wakeRead: Int32
        private let wakeWrite: Int32

        init() {
            var ends: [Int32] = [-1, -1]
            // Without a pipe the mailbox still works; its readers then find frames by polling only.
            if pipe(&ends) == 0 {
                for end in ends {
                    _ = fcntl(end, F_SETFD, FD_CLOEXEC)
                    _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
                }
            }
            wakeRead = ends[0]
            wakeWrite = ends[1]
        }

        deinit {
            if wakeRead >= 0 { close(wakeRead) }
            if wakeWrite >= 0 { close(wakeWrite) }
        }

        func post(_ envelope: Envelope) {
            frames.withLock { $0.append(envelope) }
            var byte: UInt8 = 1
            // A full pipe is already readable: a byte that does not fit changes nothing.
            _ = write(wakeWrite, &byte, 1)
        }

        /// Empties the pipe; frames posted after this make it readable again.
        func drainWake() {
            var buffer = [UInt8](repeating: 0, count: 64)
            while read(wakeRead, &buffer, buffer.count) > 0 {}
        }

        /// Waits up to `milliseconds` for the mailbox (or `fd`, when given) to become readable; returns
        /// whether one did.
        func wait(milliseconds: Int32, orReadable fd: Int32? = nil) -> Bool {
            var requests = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            if let fd { requests.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            return poll(&requests, nfds_t(requests.count), milliseconds) > 0
        }
    }

    let mailboxes: [Mailbox]
    let waitPolicy: WaitPolicy

    /// A hub for the spawner and `slots` local slots.
    init(slots: Int, waitPolicy: WaitPolicy) {
        mailboxes = (0...slots).map { _ in Mailbox() }
        self.waitPolicy = waitPolicy
    }

    var size: Int { mailboxes.count }

    /// The link of `rank`.
    func link(rank: Int) -> LocalLink { LocalLink(hub: self, rank: rank) }
}

/// One rank's end of a ``LocalHub``: to the ``Spawner`` and to each local ``TaskSupervisor`` it looks
/// like MPI between ranks.
final class LocalLink: SpawnerLink {
    let hub: LocalHub
    let rank: Int

    init(hub: LocalHub, rank: Int) {
        self.hub = hub
        self.rank = rank
    }

    var size: Int { hub.size }
    var waitPolicy: WaitPolicy { hub.waitPolicy }
    /// The spawner is this process: it is never quiet.
    var quietSinceSpawner: Double { 0 }
    private var mailbox: LocalHub.Mailbox { hub.mailboxes[rank] }

    func send(_ frame: [UInt8], payload: [UInt8]?, to rank: Int) throws(VMError) {
        guard rank >= 0, rank < size else {
            throw VMError(.invalidDestination, "rank \(rank) does not exist (the VM has ranks 0...\(size - 1))")
        }
        hub.mailboxes[rank].post(try Envelope(sourceRank: self.rank, frame: frame, payload: payload))
    }

    func receive(
        until deadline: Deadline,
        matching: (Envelope) -> Bool,
        idleWait: (() -> Bool)?
    ) throws(VMError) -> Envelope? {
        while true {
            mailbox.drainWake()
            let found = mailbox.frames.withLock { frames -> Envelope? in
                guard let index = frames.firstIndex(where: matching) else { return nil }
                return frames.remove(at: index)
            }
            if let found { return found }
            guard let remaining = deadline.remaining else {
                _ = mailbox.wait(milliseconds: 10)
                continue
            }
            if remaining <= 0 { return nil }
            _ = mailbox.wait(milliseconds: Int32(min(10, max(1, (remaining * 1000).rounded(.up)))))
        }
    }

    func hasIncoming(matching: (Envelope) -> Bool) throws(VMError) -> Bool {
        mailbox.frames.withLock { $0.contains(where: matching) }
    }

    @discardableResult
    func removePending(where predicate: (Envelope) -> Bool) -> Int {
        mailbox.frames.withLock { frames in
            let before = frames.count
            frames.removeAll(where: predicate)
            return before - frames.count
        }
    }

    /// Waits up to `milliseconds` for a frame to this rank, or for `fd` to become readable.
    func wait(milliseconds: Int32, orReadable fd: Int32? = nil) -> Bool {
        mailbox.wait(milliseconds: milliseconds, orReadable: fd)
    }

    /// Nothing is watched: every rank is in this process.
    func watch(_ ranks: [Int]) {}

    func quietSince() -> [Int: Double] { [:] }
}
