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
        over transport: Transport
    ) throws(VMError) -> (files: Int, bytes: UInt64) {
        let what = "mirroring to host \(host) (rank \(slot))"
        ringDoorbell(of: slot, always: true)
        try MirrorFrames.offer(digest: snapshot.digest, tree: snapshot.encoded, over: transport, to: slot)
        let (error, missing) = try MirrorFrames.readNeed(
            try answer(.mirrorNeed, from: slot, what: what, over: transport)
        )
        guard error.isEmpty else { throw VMError(.storage, "\(what) failed: \(error)") }
        let bytes = missing.reduce(UInt64(0)) { $0 + snapshot.tree.blobs[$1].size }
        var chunk = [UInt8](repeating: 0, count: MirrorFrames.chunkSize)
        var filled = 0
        var readFailure: String?
        for index in missing {
            let blob = snapshot.tree.blobs[index]
            let source = snapshot.sources[index]
            let fd = open(source, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
            var left = blob.size
            if fd < 0, readFailure == nil {
                readFailure = "\(source) cannot be opened: \(String(cString: strerror(errno)))"
            }
            // The worker counts on exactly the bytes the tree names; what cannot be read is sent as zeros, which
            // its digest check refuses, and the error says why.
            while left > 0 {
                let want = Int(min(UInt64(chunk.count - filled), left))
                var got = 0
                if fd >= 0 {
                    got = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress! + filled, want) }
                    if got < 0, errno == EINTR { continue }
                    if got <= 0 {
                        if readFailure == nil {
                            readFailure =
                                "\(source) "
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
                if filled == chunk.count {
                    try MirrorFrames.data(chunk, over: transport, to: slot)
                    filled = 0
                }
            }
            if fd >= 0 { close(fd) }
        }
        if filled > 0 { try MirrorFrames.data(Array(chunk[0..<filled]), over: transport, to: slot) }
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
        over transport: Transport
    ) throws(VMError) -> Envelope {
        while true {
            let envelope = try transport.receive(
                until: .after(seconds: Spawner.livenessInterval, from: monotonicSeconds()),
                matching: { $0.kind == kind && $0.sourceRank == slot }
            )
            if let envelope { return envelope }
            if withBook({ $0.slots[slot].lost }) || workerSeemsGone(slot) {
                throw VMError(.taskLost, "\(what) failed: the worker rank was lost")
            }
        }
    }

    /// Whether the worker rank of `slot` has died (on this host) or gone silent (on another).
    private func workerSeemsGone(_ slot: Int) -> Bool {
        let (host, pid) = withBook { ($0.slots[slot].host, $0.slots[slot].pid) }
        if host == self.host, pid > 0 { return Glibc.kill(pid, 0) == -1 && errno == ESRCH }
        return (transport?.quietSince()[slot] ?? 0) > Spawner.remoteSilence
    }
}
