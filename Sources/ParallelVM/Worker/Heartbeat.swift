import Foundation
import Synchronization

/// A worker rank's heartbeat to a spawner on another host: a frame every ``interval`` seconds from a thread
/// of its own, whatever the worker is doing (an in-process task may hold its loop for hours). The spawner
/// counts a remote worker quiet for ``Spawner/remoteSilence`` seconds as lost, with its host.
final class Heartbeat: Sendable {
    /// Seconds between heartbeats.
    static let interval = 1.0

    private let stopped = Mutex(false)

    /// Starts beating to rank 0 over `link`.
    init(over link: any FrameLink) {
        let thread = Thread { [self] in
            let beat = WireWriter(kind: .heartbeat, sourceTask: 0, destinationTask: 0).bytes
            while true {
                Thread.sleep(forTimeInterval: Heartbeat.interval)
                // Sent while holding the flag, so that `stop()` returns only once no send is under way.
                let goOn = stopped.withLock { stopped in
                    if stopped { return false }
                    try? link.send(beat, to: 0)
                    return true
                }
                if !goOn { return }
            }
        }
        thread.name = "ParallelVM.heartbeat"
        thread.start()
    }

    /// Stops the beats; afterwards no heartbeat is sent (MPI may be finalized).
    func stop() { stopped.withLock { $0 = true } }
}
