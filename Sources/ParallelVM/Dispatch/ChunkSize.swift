/// How many jobs a dispatch sends to a worker as one task.
///
/// ```swift
/// try await vm.dispatch(jobs)                    // .auto: sizes follow the measured job times
/// try await vm.dispatch(jobs, chunkSize: 100)    // always 100 jobs per task (the last chunk may be smaller)
/// ```
///
/// With ``ChunkSize/auto``, the dispatcher measures how long its tasks take and sends a worker as many jobs at once
/// as run for about two milliseconds (at most 256): tiny jobs travel in large chunks, jobs of a
/// millisecond or more one at a time. Once the job sequence has ended, chunks shrink to at most half of
/// the jobs left per slot, so that no worker holds a large chunk while the others run out of work.
/// A dispatch with a collector takes no more jobs ahead than with a chunk size of 1, so ``ChunkSize/auto`` only
/// joins jobs that already wait for a slot there. With a dispatch `timeout`, ``ChunkSize/auto`` sends one job at a
/// time. When the task of a chunk that ``ChunkSize/auto`` joined crashes or overruns a job's timeout, the chunk's
/// jobs start again one by one, so that each gets an outcome of its own (and a start that is not counted
/// as a retry); a job that ran before the crash in that chunk then runs twice.
public struct ChunkSize: Sendable, Hashable, ExpressibleByIntegerLiteral, CustomStringConvertible {
    enum Kind: Hashable {
        case auto
        case fixed(Int)
    }

    let kind: Kind

    /// Chunk sizes chosen from the job times the dispatcher measures (the default).
    public static let auto = ChunkSize(kind: .auto)

    /// Always `jobs` jobs per task (the last chunk of a dispatch may hold fewer). Must be at least 1.
    public static func fixed(_ jobs: Int) -> ChunkSize { ChunkSize(kind: .fixed(jobs)) }

    /// A fixed chunk size, so that `chunkSize: 100` reads as before.
    public init(integerLiteral jobs: Int) { self.kind = .fixed(jobs) }

    private init(kind: Kind) { self.kind = kind }

    /// The fixed size, or nil for ``auto``.
    var fixedJobs: Int? {
        if case .fixed(let jobs) = kind { return jobs }
        return nil
    }

    public var description: String {
        switch kind {
        case .auto: "auto"
        case .fixed(let jobs): "\(jobs)"
        }
    }
}

/// How ``ChunkSize/auto`` picks a chunk: from the time per job measured so far, and from the jobs left once
/// the input has ended. Pure: the farm's thread feeds it measured times, ``FarmQueue`` asks it for sizes.
struct AutoChunker {
    /// Seconds a chunk should run: enough to make the per-task messages (a few µs) a small share.
    var targetSeconds = 0.002
    /// The largest chunk.
    var maxJobs = 256
    /// The measured seconds per job (task round trip included), a moving average; nil before any.
    private(set) var secondsPerJob: Double?

    init(targetSeconds: Double = 0.002, maxJobs: Int = 256) {
        self.targetSeconds = targetSeconds
        self.maxJobs = maxJobs
    }

    /// Records that a unit of `jobs` jobs took `seconds` from its start to its result.
    mutating func record(jobs: Int, seconds: Double) {
        guard jobs > 0, seconds >= 0 else { return }
        let sample = seconds / Double(jobs)
        // Recent units weigh most, so that a change in job length is followed within a few units.
        secondsPerJob = secondsPerJob.map { 0.5 * $0 + 0.5 * sample } ?? sample
    }

    /// The size that runs for about ``targetSeconds`` at the measured time per job; 1 before any measurement.
    var preferredSize: Int {
        guard let secondsPerJob else { return 1 }
        let fitting = targetSeconds / max(secondsPerJob, 1e-9)
        return fitting >= Double(maxJobs) ? maxJobs : max(1, Int(fitting))
    }

    /// How many jobs the next unit takes, with `queued` jobs waiting for `slots` slots. While the input is
    /// open the queue only bounds the size; once it has ended, a chunk takes at most half a slot's share of
    /// what is left (guided self-scheduling), so the last chunks shrink to single jobs.
    func size(queued: Int, inputEnded: Bool, slots: Int) -> Int {
        var size = preferredSize
        if inputEnded {
            let share = 2 * max(1, slots)
            size = min(size, max(1, (queued + share - 1) / share))
        }
        return max(1, min(size, queued))
    }
}
