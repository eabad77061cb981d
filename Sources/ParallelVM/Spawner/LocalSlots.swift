import Foundation
import Synchronization

/// The worker slots of a VM that runs as one process (started without mpirun, or with `mpirun -n 1`):
/// ranks 1...N of a ``LocalHub``, each a ``TaskSupervisor`` on a thread of the spawner's process with a
/// task process of its own, so that tasks get the same task folder, mirroring, crash reports, timeouts,
/// kill and setup as on worker ranks, N at a time.
final class LocalSlots: Sendable {
    /// The number of local slots: `PARALLELVM_LOCAL_SLOTS` in the environment, or the machine's cores.
    /// 0 runs no task processes: jobs then run in this process, one at a time.
    static let countVariable = "PARALLELVM_LOCAL_SLOTS"

    let hub: LocalHub
    /// How many supervisors have not returned yet.
    private let serving: Mutex<Int>
    private let ended = NSCondition()

    static func count(from environment: [String: String]) throws(VMError) -> Int {
        guard let text = environment[countVariable], !text.isEmpty else {
            return max(1, ProcessInfo.processInfo.activeProcessorCount)
        }
        guard let count = Int(text), count >= 0 else {
            throw VMError(.configuration, "\(countVariable)=\(text) is not a number of slots (0 or more)")
        }
        return count
    }

    /// Starts `count` supervisors, each on a thread of its own; each starts its task process and says hello
    /// on the hub, for the spawner's handshake.
    init(count: Int, host: HostID, waitPolicy: WaitPolicy, memoryLimit: Int?) {
        hub = LocalHub(slots: count, waitPolicy: waitPolicy)
        serving = Mutex(count)
        for rank in 1...count {
            let supervisor = TaskSupervisor(
                transport: hub.link(rank: rank),
                host: host,
                doorbell: nil,
                memoryLimit: memoryLimit
            )
            let thread = Thread { [self] in
                supervisor.serveLocally()
                serving.withLock { $0 -= 1 }
                ended.withLock { ended.broadcast() }
            }
            thread.name = "ParallelVM.slot-\(rank)"
            thread.start()
        }
    }

    /// The spawner's end of the hub.
    var spawnerLink: LocalLink { hub.link(rank: 0) }

    /// Waits until every supervisor has returned (after finalize: each has let its task process go).
    func waitUntilEnded(until deadline: Deadline) {
        ended.withLock {
            while serving.withLock({ $0 }) > 0 {
                guard let remaining = deadline.remaining else {
                    ended.wait()
                    continue
                }
                if remaining <= 0 || !ended.wait(until: Date(timeIntervalSinceNow: remaining)) { return }
            }
        }
    }
}
