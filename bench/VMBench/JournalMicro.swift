import Foundation
import ParallelVMCodec
import ParallelVMExperiment

/// The journal's own steps for `jobs` successful jobs of one thread, in ns per job (medians of 7 rounds),
/// with no MPI and no other thread busy: what journaling costs before the rest of a run gets in its way.
///   - journal_key_ns: a job's key from its function name and encoded arguments (``JobKeyMaker``);
///   - journal_group_ns: adding the job to a batch, in groups of 100 (a chunk), framed and checksummed;
///   - journal_append_ns: the same, with each batch of 1000 handed to the journal's writer (which empties
///     it for the next 1000, as a journaled dispatch does), and flushed at the end;
///   - journal_log_ns: the experiment log's line for a chunk of 100 successes, per job.
func journalMicro(_ jobs: Int) throws {
    let base = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent(
        "parallelvm-journal-micro-\(getpid())"
    ).path
    try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: base) }
    let arguments = try BinaryEncoder.encode(7)
    let value = try BinaryEncoder.encode(14)
    let now = Date()
    func perJob(_ start: Double) -> Double { (seconds() - start) * 1e9 / Double(jobs) }
    // The jobs of a chunk share their task; chunks alternate between two tasks.
    func task(_ job: Int) -> String { job / 100 % 2 == 0 ? "1:5" : "2:6" }

    var keys: [Double] = []
    var groups: [Double] = []
    var appends: [Double] = []
    var lines: [Double] = []
    for round in 0..<7 {
        var maker = JobKeyMaker()
        var sum: UInt64 = 0
        var start = seconds()
        for _ in 0..<jobs { sum &+= maker.key(function: "bench.double", encodedArguments: arguments).value }
        keys.append(perJob(start))

        // Adds every job to a batch, which `full` empties after each 1000.
        func fill(_ full: (inout JournalBatch) throws -> Void) rethrows -> JournalBatch {
            var batch = JournalBatch()
            for job in 0..<jobs {
                guard
                    batch.addSuccess(
                        index: job,
                        key: JobKey(value: sum &+ UInt64(job)),
                        attempts: 1,
                        typeName: "Swift.Int",
                        value: value,
                        host: "host",
                        task: task(job),
                        started: now,
                        ended: now
                    )
                else { fatalError("the journal refused job \(job)") }
                if job % 1000 == 999 { try full(&batch) }
            }
            return batch
        }

        start = seconds()
        _ = fill { $0.removeAll() }
        groups.append(perJob(start))

        let experiment = try Experiment(name: "micro-\(round)", in: base)
        try experiment.open()
        let writer = try experiment.journal()
        start = seconds()
        var batch = try fill { try writer.append(emptying: &$0) }
        try writer.append(emptying: &batch)
        try writer.flush()
        appends.append(perJob(start))

        let log = try experiment.log()
        let like = JournalRecord(
            index: 0,
            key: JobKey(value: sum),
            outcome: .success(typeName: "", value: []),
            attempts: 1,
            host: "host",
            task: "1:5",
            started: now,
            ended: now
        )
        let chunks = (0..<(jobs / 100)).map { Array($0 * 100..<($0 * 100 + 100)) }
        start = seconds()
        for chunk in chunks { try log.jobsFinished(chunk, like: like) }
        lines.append(perJob(start))
        try experiment.close()
    }
    emit("journal_key_ns", median(keys))
    emit("journal_group_ns", median(groups))
    emit("journal_append_ns", median(appends))
    emit("journal_log_ns", median(lines))
}
