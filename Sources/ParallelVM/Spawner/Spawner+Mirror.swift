import Foundation
import Glibc
import ParallelVMStorage
import Synchronization

extension Spawner {
    /// Brings `snapshot` to the mirror cache of the worker rank of `slot`, unless that rank has it: offers the
    /// tree, sends the contents that its host's cache lacks, and waits until they are stored there. Each rank is
    /// offered the tree once (it pins the tree in its cache for its life); the contents cross the network once
    /// per cache, so a second rank on a host, sharing its local storage, receives only the tree.
    ///
    /// Called for a free slot just before a task is spawned there, so its worker rank is in its loop. Other
    /// frames that arrive meanwhile stay queued for whoever waits for them.
    /// - Throws: ``VMError`` (`.storage`) naming the host and what failed; `.taskLost` when the slot's worker is
    ///   lost meanwhile.
    func deliver(_ snapshot: MirrorSnapshot, to slot: Int) throws(VMError) {
        guard let transport, let host = withBook({ $0.host(of: slot) }) else { return }
        try mirroredSlots.withLock { (slots: inout [String: Set<Int>]) throws(VMError) in
            guard slots[snapshot.digest]?.contains(slot) != true else { return }
            let clock = ContinuousClock.now
            let sent = try bring(snapshot, to: slot, host: host, over: transport)
            slots[snapshot.digest, default: []].insert(slot)
            let elapsed = ContinuousClock.now - clock
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
            let files = snapshot.tree.files
            EventHub.shared.emit(
                .mirrorSent(host: host, files: sent.files, bytes: Int(sent.bytes), treeFiles: files, seconds: seconds)
            )
            logger.debug(
                "mirror tree \(snapshot.digest.prefix(12)) (\(files) files) brought to rank \(slot) on host \(host): \(sent.files) contents, \(sent.bytes) bytes sent in \(String(format: "%.3f", seconds)) s"
            )
        }
    }

    private func bring(
        _ snapshot: MirrorSnapshot,
        to slot: Int,
        host: HostID,
        over transport: any SpawnerLink
    ) throws(VMError) -> (files: Int, bytes: UInt64) {
        let what = "mirroring to host \(host) (rank \(slot))"
        ringDoorbell(of: slot, always: true)
        try MirrorFrames.offer(digest: snapshot.digest, tree: snapshot.encoded, over: transport, to: slot)
        let (error, missing) = try MirrorFrames.readNeed(
            try answer(.mirrorNeed, from: slot, what: what, over: transport)
        )
        guard error.isEmpty else { throw VMError(.storage, "\(what) failed: \(error)") }
        let bytes = missing.reduce(UInt64(0)) { $0 + snapshot.tree.blobs[$1].size }
        // A thread reads the next contents while the last ones travel and the worker stores them.
        let reader = ContentReader(
            files: missing.map { (snapshot.sources[$0], snapshot.tree.blobs[$0].size) },
            chunkSize: MirrorFrames.chunkSize
        )
        defer { reader.stop() }
        while let chunk = reader.next() { try MirrorFrames.data(chunk, over: transport, to: slot) }
        let readFailure = reader.failure
        let stored = try MirrorFrames.readStored(try answer(.mirrorStored, from: slot, what: what, over: transport))
        if let readFailure { throw VMError(.storage, "\(what) failed: mirror source \(readFailure)") }
        guard stored.isEmpty else { throw VMError(.storage, "\(what) failed: \(stored)") }
        return (missing.count, bytes)
    }

    /// The worker's answer of `kind`, waited for in slices so that a lost worker ends the wait.
    private func answer(
        _ kind: MessageKind,
        from slot: Int,
        what: String,
        over transport: any SpawnerLink
    ) throws(VMError) -> Envelope {
        while true {
            let envelope = try transport.receive(
                until: .after(seconds: Spawner.livenessInterval, from: monotonicSeconds()),
                matching: { $0.kind == kind && $0.sourceRank == slot }
            )
            if let envelope { return envelope }
            // The spawner's own liveness check marks a dead or silent worker lost, and reports it, as anywhere.
            checkWorkersAlive()
            if withBook({ $0.slots[slot].lost }) {
                throw VMError(.taskLost, "\(what) failed: the worker rank was lost")
            }
        }
    }
}

/// Reads files one after another into chunks of a fixed size on a thread of its own, at most two chunks ahead
/// of the sender. The worker counts on exactly the bytes the tree names: what cannot be read is sent as zeros,
/// which its digest check refuses, and `failure` says why.
private final class ContentReader: @unchecked Sendable {
    private let condition = NSCondition()
    private var ready: [[UInt8]] = []
    private var done = false
    private var stopped = false
    private var firstFailure: String?

    init(files: [(path: String, size: UInt64)], chunkSize: Int) {
        let thread = Thread { [self] in fill(files, chunkSize: chunkSize) }
        thread.name = "ParallelVM mirror reader"
        thread.start()
    }

    /// The next chunk, or nil after the last.
    func next() -> [UInt8]? {
        condition.lock()
        defer { condition.unlock() }
        while ready.isEmpty && !done { condition.wait() }
        guard !ready.isEmpty else { return nil }
        condition.broadcast()
        return ready.removeFirst()
    }

    /// The first file that could not be read as the tree says, if any.
    var failure: String? {
        condition.lock()
        defer { condition.unlock() }
        return firstFailure
    }

    /// Ends the thread early (the sender failed).
    func stop() {
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }

    private func fill(_ files: [(path: String, size: UInt64)], chunkSize: Int) {
        var chunk = [UInt8](repeating: 0, count: chunkSize)
        var filled = 0
        var failure: String?
        func hand(_ bytes: [UInt8]) -> Bool {
            condition.lock()
            defer { condition.unlock() }
            while ready.count >= 2 && !stopped { condition.wait() }
            guard !stopped else { return false }
            ready.append(bytes)
            condition.broadcast()
            return true
        }
        reading: for (path, size) in files {
            let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
            if fd < 0, failure == nil { failure = "\(path) cannot be opened: \(String(cString: strerror(errno)))" }
            defer { if fd >= 0 { close(fd) } }
            var left = size
            while left > 0 {
                let want = Int(min(UInt64(chunkSize - filled), left))
                var got = 0
                if fd >= 0 {
                    got = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress! + filled, want) }
                    if got < 0, errno == EINTR { continue }
                    if got <= 0 {
                        if failure == nil {
                            failure =
                                "\(path) "
                                + (got == 0
                                    ? "became shorter after the VM read it"
                                    : "cannot be read: \(String(cString: strerror(errno)))")
                        }
                        got = 0
                    }
                }
                if got == 0 {
                    got = want
                    chunk.withUnsafeMutableBytes { _ = memset($0.baseAddress! + filled, 0, want) }
                }
                filled += got
                left -= UInt64(got)
                if filled == chunkSize {
                    guard hand(chunk) else { break reading }
                    filled = 0
                }
            }
        }
        if filled > 0 { _ = hand(Array(chunk[0..<filled])) }
        condition.lock()
        firstFailure = failure
        done = true
        condition.broadcast()
        condition.unlock()
    }
}
