import ParallelVMExperiment

/// The bookkeeping of a ``Farm``, with no threads and no MPI: units of jobs waiting to start, how many are
/// in flight, finished results waiting to be joined, and when there is room for more.
///
/// A unit is what one slot runs at once: one job, or a chunk of jobs sent as one task. Indices count jobs
/// in submission order, from 0. With an ``AutoChunker``, every job is queued on its own and
/// ``nextUnit()`` joins waiting jobs into a chunk of the size the chunker picks.
struct FarmQueue<Item, Finished> {
    /// One job of a unit and its index. A struct, not a tuple: unspecialised code looks up a tuple's type
    /// under a lock each time it makes one, a struct's without.
    struct Element {
        let index: Int
        let item: Item
        /// The job's journal key, made by the farm's thread from the arguments it encoded to send the
        /// job in a chunk (a journaled dispatch's farm, see ``FarmEngine/keysJobs``); nil: not made.
        var key: JobKey? = nil
    }

    typealias Unit = [Element]

    /// How many units run at once.
    let slots: Int
    /// Units per slot that may wait in the queue; with `lookaheadInChunks`, chunks of the chunker's size.
    let lookaheadPerSlot: Int
    /// Whether the lookahead counts chunks of the chunker's preferred size rather than units.
    let lookaheadInChunks: Bool
    /// Unjoined jobs allowed before a new unit fits (dispatch), or nil (a hand-written loop joins when it likes).
    let unjoinedLimit: Int?
    /// Whether a submitted unit is split into one-job units (running in this process, chunks only save messages).
    let splitsUnits: Bool
    /// Picks chunk sizes when ``ChunkSize/auto`` is asked for; nil: units start as submitted.
    private(set) var chunker: AutoChunker?

    private var queue: [Unit] = []
    private var queueHead = 0
    /// Jobs in the queued units.
    private(set) var queuedJobs = 0
    private(set) var unitsInFlight = 0
    /// Jobs submitted and not yet joined (queued, running, or finished and waiting).
    private(set) var outstanding = 0
    /// Indices of jobs that start alone whatever the chunker says (see ``putBackAlone(_:)``).
    private var solo: Set<Int> = []
    private var finished: [Finished] = []
    private var finishedHead = 0
    private var nextIndex = 0
    /// Whether more jobs may come (a dispatch fed by an async sequence); join waits for them.
    private(set) var inputOpen: Bool
    private(set) var stopped = false
    private(set) var closing = false

    init(
        slots: Int,
        lookaheadPerSlot: Int,
        unjoinedLimitPerSlot: Int?,
        inputOpen: Bool,
        splitsUnits: Bool,
        chunker: AutoChunker? = nil,
        lookaheadInChunks: Bool = false
    ) {
        self.slots = slots
        self.lookaheadPerSlot = max(0, lookaheadPerSlot)
        self.lookaheadInChunks = lookaheadInChunks
        self.unjoinedLimit = unjoinedLimitPerSlot.map { slots * max(1, $0) }
        self.inputOpen = inputOpen
        self.splitsUnits = splitsUnits
        self.chunker = splitsUnits ? nil : chunker
    }

    /// Units allowed in flight (queued or running): the slots plus the lookahead. With the chunker, queued
    /// units are single jobs, so a lookahead in chunks grows as the chunker's size does.
    var capacity: Int {
        let lookahead = lookaheadInChunks ? lookaheadPerSlot * (chunker?.preferredSize ?? 1) : lookaheadPerSlot
        return slots * (1 + lookahead)
    }

    /// Whether a unit submitted now fits: free slots plus the lookahead, within the unjoined limit.
    var hasRoom: Bool { !stopped && unitsInFlight < capacity && outstanding < (unjoinedLimit ?? Int.max) }

    /// How many units of `unitSize` jobs can be submitted now, one after another, each finding room.
    func room(unitSize: Int) -> Int {
        guard !stopped else { return 0 }
        var units = capacity - unitsInFlight
        if let unjoinedLimit {
            let jobs = unjoinedLimit - outstanding
            units = min(units, (jobs + unitSize - 1) / unitSize)
        }
        return max(0, units)
    }

    /// Whether fewer jobs are outstanding than there are slots.
    var hasFreeSlot: Bool { !stopped && outstanding < slots }

    var hasQueuedUnits: Bool { queueHead < queue.count }

    /// Units waiting to start.
    var queuedUnits: Int { queue.count - queueHead }

    var hasFinished: Bool { finishedHead < finished.count }

    /// Whether join has nothing more to wait for.
    var isDrained: Bool { outstanding == 0 && (!inputOpen || stopped) }

    /// Queues `items` as units of `unitSize` jobs, the last one shorter when they do not divide evenly
    /// (or one unit each, when splitting); returns the first one's index, or nil when the farm is stopped
    /// or `items` is empty.
    mutating func submit(_ items: [Item], unitSize: Int = Int.max) -> Int? {
        guard !items.isEmpty, !stopped else { return nil }
        let first = nextIndex
        if splitsUnits || chunker != nil {
            queue.reserveCapacity(queue.count + items.count)
            for offset in items.indices {
                queue.append([Element(index: first + offset, item: items[offset])])
            }
            unitsInFlight += items.count
        } else {
            var start = 0
            while start < items.count {
                let end = min(items.count, start + max(1, unitSize))
                var unit: Unit = []
                unit.reserveCapacity(end - start)
                for offset in start..<end {
                    unit.append(Element(index: first + offset, item: items[offset]))
                }
                queue.append(unit)
                unitsInFlight += 1
                start = end
            }
        }
        nextIndex += items.count
        queuedJobs += items.count
        outstanding += items.count
        return first
    }

    /// The next unit to start, in submission order; with a chunker, the waiting jobs it joins into one.
    mutating func nextUnit() -> Unit? {
        guard queueHead < queue.count else { return nil }
        var unit = queue[queueHead]
        queueHead += 1
        if !solo.isEmpty, solo.remove(unit[0].index) != nil {
            // Starts alone.
        } else if let chunker {
            let size = chunker.size(queued: queuedJobs, inputEnded: !inputOpen, slots: slots)
            var joined = 0
            while unit.count < size, queueHead < queue.count, unit.count + queue[queueHead].count <= size,
                solo.isEmpty || !solo.contains(queue[queueHead][0].index)
            {
                unit += queue[queueHead]
                queueHead += 1
                joined += 1
            }
            unitsInFlight -= joined
        }
        queuedJobs -= unit.count
        if queueHead > 1024, queueHead * 2 > queue.count {
            queue.removeFirst(queueHead)
            queueHead = 0
        }
        return unit
    }

    /// Records how long a unit of `jobs` jobs took from its start to its result, for the chunker.
    mutating func recordUnit(jobs: Int, seconds: Double) {
        chunker?.record(jobs: jobs, seconds: seconds)
    }

    /// Puts units that could not start back at the front, in order; when stopped they are dropped instead.
    mutating func putBack(_ units: [Unit]) {
        if !stopped {
            queue.replaceSubrange(queueHead..<queueHead, with: units)
            queuedJobs += units.reduce(0) { $0 + $1.count }
        } else {
            unitsInFlight -= units.count
            outstanding -= units.reduce(0) { $0 + $1.count }
        }
    }

    /// Puts the jobs of a started unit back at the front, each as a unit of its own that starts alone: a
    /// chunk the chunker joined whose task ended without outcomes (crashed, timed out), so that each job
    /// gets an outcome of its own. When stopped they are dropped instead.
    mutating func putBackAlone(_ unit: Unit) {
        guard !stopped else {
            unitsInFlight -= 1
            outstanding -= unit.count
            return
        }
        queue.replaceSubrange(queueHead..<queueHead, with: unit.map { [$0] })
        for element in unit { solo.insert(element.index) }
        queuedJobs += unit.count
        unitsInFlight += unit.count - 1
    }

    /// Records finished jobs; `unitFinished` frees their unit's place.
    mutating func complete(_ results: [Finished], unitFinished: Bool) {
        finished.append(contentsOf: results)
        if unitFinished { unitsInFlight -= 1 }
    }

    /// The oldest finished job not yet joined.
    mutating func popFinished() -> Finished? {
        guard finishedHead < finished.count else { return nil }
        let result = finished[finishedHead]
        finishedHead += 1
        if finishedHead > 1024, finishedHead * 2 > finished.count {
            finished.removeFirst(finishedHead)
            finishedHead = 0
        }
        outstanding -= 1
        return result
    }

    /// Finished jobs waiting to be joined.
    var finishedWaiting: Int { finished.count - finishedHead }

    /// Up to `limit` of the oldest finished jobs not yet joined, oldest first.
    mutating func popFinished(upTo limit: Int) -> [Finished] {
        let count = min(limit, finished.count - finishedHead)
        guard count > 0 else { return [] }
        let taken = Array(finished[finishedHead..<finishedHead + count])
        finishedHead += count
        outstanding -= count
        if finishedHead == finished.count {
            finished.removeAll(keepingCapacity: true)
            finishedHead = 0
        } else if finishedHead > 1024, finishedHead * 2 > finished.count {
            finished.removeFirst(finishedHead)
            finishedHead = 0
        }
        return taken
    }

    mutating func finishInput() { inputOpen = false }

    /// Starts no more units and drops queued ones; with `closing`, the farm also ends once nothing runs.
    mutating func stop(closing: Bool) {
        stopped = true
        if closing { self.closing = true }
        let dropped = queue[queueHead...]
        unitsInFlight -= dropped.count
        outstanding -= dropped.reduce(0) { $0 + $1.count }
        queue = []
        queueHead = 0
        queuedJobs = 0
    }
}

extension FarmQueue.Element: Sendable where Item: Sendable {}
