import Foundation
import ParallelVMStorage

/// The worker rank's side of ``MirrorFrames``: takes a tree the spawner offers into this host's mirror cache,
/// says what is missing, stores the contents as they arrive and answers once they are all in.
///
/// Runs in the worker rank's loop while its slot is free (the spawner offers just before it spawns there). A
/// failure is answered, never thrown: the spawner reports it with the host's name and the task is not spawned.
enum MirrorReceiver {
    /// How long to wait for the spawner's next contents before giving up on the tree.
    static let patience = 120.0

    /// Takes the offer in `envelope` and what follows it. Returns an interrupt from the spawner that arrived
    /// meanwhile, for the caller to act on (the tree is left half-received, which the cache tolerates); stops
    /// early, returning nil, when `stop` says this rank was signalled.
    @discardableResult
    static func receive(_ envelope: Envelope, over link: any FrameLink, stop: () -> Bool = { false }) -> Envelope? {
        let offer: MirrorCache.Offer
        let cache: MirrorCache
        let limit: UInt64
        do {
            let (digest, tree) = try MirrorFrames.readOffer(envelope)
            let environment = ProcessInfo.processInfo.environment
            limit = try MirrorCache.limit(environment: environment)
            cache = try MirrorCache(root: try LocalStorageRoot(environment: environment))
            offer = try cache.offer(encoded: tree, digest: digest)
        } catch {
            try? MirrorFrames.need(error: "\(error)", missing: [], over: link)
            return nil
        }
        do {
            try MirrorFrames.need(error: "", missing: offer.missing, over: link)
        } catch {
            return nil
        }
        var failure = ""
        var sink: MirrorCache.Sink?
        do {
            sink = try cache.sink(for: offer)
        } catch {
            failure = "\(error)"
        }
        let total = offer.missing.reduce(UInt64(0)) { $0 + offer.tree.blobs[$1].size }
        var remaining = total
        var lastHeard = monotonicSeconds()
        while remaining > 0 {
            let data: Envelope?
            do {
                data = try link.receive(
                    until: .after(seconds: 0.5, from: monotonicSeconds()),
                    matching: { ($0.kind == .mirrorData || $0.kind == .interrupt) && $0.sourceRank == 0 }
                )
            } catch {
                return nil
            }
            guard let data else {
                if stop() { return nil }
                if monotonicSeconds() - lastHeard > patience {
                    failure = "the spawner sent no more contents for \(Int(patience)) s"
                    break
                }
                continue
            }
            if data.kind == .interrupt { return data }
            lastHeard = monotonicSeconds()
            let bytes = data.payload ?? []
            remaining -= min(remaining, UInt64(bytes.count))
            guard failure.isEmpty, let sink else { continue }
            do {
                try bytes.withUnsafeBytes { try sink.take($0) }
            } catch {
                // The rest still arrives and is drained, so the next frames are not mistaken for contents.
                failure = "\(error)"
            }
        }
        if failure.isEmpty, let sink, !sink.isComplete {
            failure = "mirror cache \(cache.path): the contents ended before every file was complete"
        }
        if failure.isEmpty {
            cache.noteStored(total, limit: limit)
        }
        try? MirrorFrames.stored(error: failure, over: link)
        return nil
    }
}
