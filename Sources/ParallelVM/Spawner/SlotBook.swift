/// An IPv4 address and UDP port (address in network byte order) where a doorbell rings.
struct NetworkBellTarget: Sendable, Equatable {
    var address: UInt32
    var port: UInt16
}

/// The spawner's book of slots: which host each rank is on and which task, if any, runs there.
///
/// Slot 0 is the spawner's own and always busy with task `0:0`. Pure bookkeeping, no MPI.
struct SlotBook: Sendable {
    struct Slot: Sendable {
        let host: HostID
        let cpus: Int
        let pid: Int32
        var task: Int?
        /// The worker's doorbell token (0: it has none).
        var doorbell: UInt64 = 0
        /// When the slot last became free (monotonic seconds; 0: never used).
        var freedAt: Double = 0
        /// Whether the worker rank of this slot was lost: it gets no task and no message any more.
        var lost = false
        /// Where the worker's doorbell rings from the spawner's host when it is on another host (nil: it
        /// cannot be rung, and polls).
        var networkBell: NetworkBellTarget? = nil
    }

    private(set) var slots: [Slot]

    init(slots: [Slot]) {
        self.slots = slots
        if !self.slots.isEmpty { self.slots[0].task = 0 }
    }

    var count: Int { slots.count }

    /// Hosts in the order their first slot appears.
    var hosts: [HostID] {
        var seen = Set<HostID>()
        return slots.compactMap { seen.insert($0.host).inserted ? $0.host : nil }
    }

    /// Free worker slots, lowest rank first, optionally only on `targets`.
    func freeSlots(on targets: Set<HostID>? = nil) -> [Int] {
        slots.indices.filter { rank in
            rank > 0 && slots[rank].task == nil && !slots[rank].lost && (targets?.contains(slots[rank].host) ?? true)
        }
    }

    func host(of rank: Int) -> HostID? { slots.indices.contains(rank) ? slots[rank].host : nil }

    /// The task number running in `rank`, if any.
    func task(in rank: Int) -> Int? { slots.indices.contains(rank) ? slots[rank].task : nil }

    /// Whether `task` currently occupies its slot.
    func isRunning(_ task: TaskID) -> Bool { self.task(in: task.slot) == task.number }

    /// Task numbers are unique within the run; 0 is the spawner's.
    private(set) var nextTaskNumber = 1

    /// Puts a new task into a free slot and returns its ID.
    mutating func occupy(_ rank: Int) -> TaskID {
        precondition(rank > 0 && slots[rank].task == nil, "slot \(rank) is not a free worker slot")
        defer { nextTaskNumber += 1 }
        slots[rank].task = nextTaskNumber
        return TaskID(slot: rank, number: nextTaskNumber)
    }

    /// Frees the slot if `task` still occupies it; returns whether it did.
    @discardableResult
    mutating func release(_ task: TaskID, at time: Double = monotonicSeconds()) -> Bool {
        guard task.slot > 0, isRunning(task) else { return false }
        slots[task.slot].task = nil
        slots[task.slot].freedAt = time
        return true
    }

    /// Marks the slot's worker rank lost; returns the task that was running there, if any (its slot stays
    /// taken until its exit is handed out).
    mutating func markLost(_ rank: Int) -> TaskID? {
        guard slots.indices.contains(rank), rank > 0, !slots[rank].lost else { return nil }
        slots[rank].lost = true
        return slots[rank].task.map { TaskID(slot: rank, number: $0) }
    }

    /// The worker ranks not lost.
    var liveWorkers: [Int] { slots.indices.filter { $0 > 0 && !slots[$0].lost } }

    /// The worker ranks lost.
    var lostWorkers: [Int] { slots.indices.filter { $0 > 0 && slots[$0].lost } }

    /// A table of hosts with their slots, as `formatSpawnerConfig` prints it.
    func formatted() -> String {
        var lines = ["Hosts: \(hosts.count), slots: \(count), free: \(freeSlots().count)"]
        for host in hosts {
            let ranks = slots.indices.filter { slots[$0].host == host }
            let free = ranks.filter { $0 > 0 && slots[$0].task == nil }.count
            let cpus = slots[ranks[0]].cpus
            lines.append("  \(host): \(ranks.count) slot(s), \(free) free, \(cpus) CPU(s)")
            for rank in ranks {
                let state: String
                if rank == 0 {
                    state = "spawner (task 0:0)"
                } else if slots[rank].lost {
                    state = "lost"
                } else if let task = slots[rank].task {
                    state = "busy (task \(rank):\(task))"
                } else {
                    state = "free"
                }
                lines.append("    slot \(rank): pid \(slots[rank].pid), \(state)")
            }
        }
        return lines.joined(separator: "\n")
    }
}
