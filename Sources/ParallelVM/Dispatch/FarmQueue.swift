/// The bookkeeping of a ``Farm``, with no threads and no MPI: units of jobs waiting to start, how many are
/// in flight, finished results waiting to be joined, and when there is room for more.
///
/// A unit is what one slot runs at once: one job, or a chunk of jobs sent as one task. Indices count jobs
/// in submission order, from 0.
struct FarmQueue<Item, Finished> {
    typealias Unit = [(index: Int, item: Item)]

    /// How many units run at once.
    let slots: Int
    /// Units allowed in flight (queued or running): the slots plus the lookahead.
    let capacity: Int
    /// Unjoined jobs allowed before a new unit fits (dispatch), or nil (a hand-written loop joins when it likes).
    let unjoinedLimit: Int?
    /// Whether a submitted unit is split into one-job units (running in this process, chunks only save messages).
    let splitsUnits: Bool

    private var queue: [Unit] = []
    private var queueHead = 0
    private(set) var unitsInFlight = 0
    /// Jobs submitted and not yet joined (queued, running, or finished and waiting).
    private(set) var outstanding = 0
    private var finished: [Finished] = []
    private var finishedHead = 0
    private var nextIndex = 0
    /// Whether more jobs may come (a dispatch fed by an async sequence); join waits for them.
    private(set) var inputOpen: Bool
    private(set) var stopped = false
    private(set) var closing = false

    init(slots: Int, lookaheadPerSlot: Int, unjoinedLimitPerSlot: Int?, inputOpen: Bool, splitsUnits: Bool) {
        self.slots = slots
        self.capacity = slots * (1 + max(0, lookaheadPerSlot))
        self.unjoinedLimit = unjoinedLimitPerSlot.map { slots * max(1, $0) }
        self.inputOpen = inputOpen
        self.splitsUnits = splitsUnits
    }

    /// Whether a unit submitted now fits: free slots plus the lookahead, within the unjoined limit.
    var hasRoom: Bool { !stopped && unitsInFlight < capacity && outstanding < (unjoinedLimit ?? Int.max) }

    /// Whether fewer jobs are outstanding than there are slots.
    var hasFreeSlot: Bool { !stopped && outstanding < slots }

    var hasQueuedUnits: Bool { queueHead < queue.count }

    var hasFinished: Bool { finishedHead < finished.count }

    /// Whether join has nothing more to wait for.
    var isDrained: Bool { outstanding == 0 && (!inputOpen || stopped) }

    /// Queues `items` as one unit (or one unit each, when splitting); returns the first one's index, or nil
    /// when the farm is stopped or `items` is empty.
    mutating func submit(_ items: [Item]) -> Int? {
        guard !items.isEmpty, !stopped else { return nil }
        let first = nextIndex
        let unit: Unit = items.enumerated().map { (first + $0.offset, $0.element) }
        nextIndex += items.count
        if splitsUnits {
            for element in unit { queue.append([element]) }
            unitsInFlight += unit.count
        } else {
            queue.append(unit)
            unitsInFlight += 1
        }
        outstanding += items.count
        return first
    }

    /// The next unit to start, in submission order.
    mutating func nextUnit() -> Unit? {
        guard queueHead < queue.count else { return nil }
        let unit = queue[queueHead]
        queueHead += 1
        if queueHead > 1024, queueHead * 2 > queue.count {
            queue.removeFirst(queueHead)
            queueHead = 0
        }
        return unit
    }

    /// Puts units that could not start back at the front, in order; when stopped they are dropped instead.
    mutating func putBack(_ units: [Unit]) {
        if !stopped {
            queue.replaceSubrange(queueHead..<queueHead, with: units)
        } else {
            unitsInFlight -= units.count
            outstanding -= units.reduce(0) { $0 + $1.count }
        }
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
    }
}
