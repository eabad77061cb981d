import Foundation
import Glibc
import ParallelVM
import Synchronization

// MARK: - Functions every rank registers for the task log and output scenarios

/// A job that talks on every channel a task has.
struct ChattyPoint: Codable, Sendable {
    var index: Int
    /// Ends the task process with a fatal error after talking.
    var crash: Bool
}

/// Prints a stdout line, a stderr line, a log line and an unfinished stdout line, all naming the job.
let experimentChatty = RemoteFunction("experiment.chatty") { (point: ChattyPoint, task: TaskContext) -> Int in
    print("stdout of job \(point.index) first")
    print("stdout of job \(point.index) second")
    FileHandle.standardError.write(Data("stderr of job \(point.index)\n".utf8))
    task.logger.warning("log of job \(point.index)", metadata: ["point": "\(point.index)"])
    print("unfinished stdout of job \(point.index)", terminator: "")
    if point.crash {
        fflush(nil)
        fatalError("job \(point.index) crashes on purpose")
    }
    return point.index
}

/// A job that writes outputs into its task folder.
struct WriterPoint: Codable, Sendable {
    var index: Int
    /// The size of `data/blob-<index>.bin`.
    var bytes: Int
    /// The folder under which the job makes its task folder.
    var workRoot: String
    /// When set, the task process kills itself with SIGKILL as soon as a staging folder for this job shows
    /// up in this `outputs/` folder: the copy into the experiment is then cut short.
    var killWhileCollectingIn: String?
}

/// Job `index`'s blob.
func writerBlob(_ index: Int, bytes: Int) -> Data { Data(repeating: UInt8(index % 251 + 1), count: bytes) }

/// Works in a folder of its own under `workRoot` (the previous job of this process's folder goes first),
/// writes `summary.txt` and `data/blob-<index>.bin`, and returns the index.
let experimentWriter = RemoteFunction("experiment.writer") { (point: WriterPoint, _: TaskContext) -> Int in
    let folder = URL(fileURLWithPath: point.workRoot).appendingPathComponent("writer-\(getpid())", isDirectory: true)
    try? FileManager.default.removeItem(at: folder)
    try FileManager.default.createDirectory(
        at: folder.appendingPathComponent("data"),
        withIntermediateDirectories: true
    )
    guard FileManager.default.changeCurrentDirectoryPath(folder.path) else {
        throw ScenarioArgumentError(description: "cannot enter \(folder.path)")
    }
    try "job \(point.index)\n".write(toFile: "summary.txt", atomically: false, encoding: .utf8)
    let blob = writerBlob(point.index, bytes: point.bytes)
    try blob.write(to: folder.appendingPathComponent("data/blob-\(point.index).bin"))
    if let outputs = point.killWhileCollectingIn {
        let prefix = ".staging-\(point.index)-"
        let thread = Thread {
            while true {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: outputs)) ?? []
                if names.contains(where: { $0.hasPrefix(prefix) }) { kill(getpid(), SIGKILL) }
                usleep(200)
            }
        }
        thread.start()
    }
    return point.index
}

let experimentTaskFunctions: [any RemoteFunctionConvertible] = [experimentChatty, experimentWriter]

// MARK: - Scenarios

let experimentTaskScenarios: [String: Scenario] = [
    // ROOT ID JOBS CHUNK [CRASH_INDEX]: chatty jobs in the experiment ROOT/ID with chunks of CHUNK; the job
    // CRASH_INDEX ends its task process with a fatal error. Prints `task=INDEX TASKID` per job that ran and
    // `failure=INDEX CODE` per failed job.
    "experiment-task-logs": { vm, arguments in
        guard arguments.count >= 4, let jobs = Int(arguments[2]), let chunk = Int(arguments[3]) else {
            throw ScenarioArgumentError(description: "experiment-task-logs needs ROOT ID JOBS CHUNK [CRASH_INDEX]")
        }
        let crashIndex = arguments.count > 4 ? Int(arguments[4]) : nil
        try waitFor {
            let experiment = try Experiment(name: arguments[1], in: arguments[0])
            let points = (0..<jobs).map { Job(experimentChatty, args: ChattyPoint(index: $0, crash: $0 == crashIndex)) }
            let results = try await vm.dispatch(points, chunkSize: .fixed(chunk), experiment: experiment)
            // The tasks' unfinished lines reach this terminal too: start the reports on a line of their own.
            print("")
            for result in results {
                if let task = result.task { report("task", "\(result.index) \(task)") }
                if let error = result.error { report("failure", "\(result.index) \(error.code.rawValue)") }
            }
            report("tasksFolder", experiment.tasksFolder)
        }
    },
    // ROOT ID JOBS BYTES [KILL_INDEX]: writer jobs collecting `summary.txt` and `data/*.bin` into ROOT/ID;
    // job KILL_INDEX kills its task process mid-copy. While the dispatch runs, a thread of the spawner looks
    // at `outputs/` every millisecond: `partialSeen=N` counts the times an `outputs/<job>/` was visible
    // without all of its files whole. Prints `collected=INDEX` for every job whose outputs are complete
    // afterwards, `failure=INDEX CODE`, `leftovers=N` (staging folders in `outputs/`), and
    // `doneBeforeCollected=N`, the jobs that reached the collector before their outputs were in place.
    "experiment-outputs": { vm, arguments in
        guard arguments.count >= 4, let jobs = Int(arguments[2]), let bytes = Int(arguments[3]) else {
            throw ScenarioArgumentError(description: "experiment-outputs needs ROOT ID JOBS BYTES [KILL_INDEX]")
        }
        let killIndex = arguments.count > 4 ? Int(arguments[4]) : nil
        try waitFor {
            let experiment = try Experiment(name: arguments[1], in: arguments[0])
            let outputs = experiment.outputsFolder
            let points = (0..<jobs).map { index in
                Job(
                    experimentWriter,
                    args: WriterPoint(
                        index: index,
                        bytes: bytes,
                        workRoot: arguments[0],
                        killWhileCollectingIn: index == killIndex ? outputs : nil
                    )
                ).collecting("summary.txt", "data/*.bin")
            }
            let watching = Mutex(true)
            let partialSeen = Mutex(0)
            let watcher = Thread {
                // A folder seen whole stays whole (nothing replaces it in this run), so it is not read again.
                var whole: Set<Int> = []
                while watching.withLock({ $0 }) {
                    for index in 0..<jobs where !whole.contains(index) {
                        let folder = "\(outputs)/\(index)"
                        guard FileManager.default.fileExists(atPath: folder) else { continue }
                        if outputsComplete(folder, index: index, bytes: bytes) {
                            whole.insert(index)
                        } else {
                            partialSeen.withLock { $0 += 1 }
                        }
                    }
                    usleep(1000)
                }
            }
            watcher.start()
            var doneBeforeCollected = 0
            let results = try await vm.dispatch(points, experiment: experiment) { result in
                if result.succeeded, !outputsComplete("\(outputs)/\(result.index)", index: result.index, bytes: bytes) {
                    doneBeforeCollected += 1
                }
                return true
            }
            watching.withLock { $0 = false }
            report("doneBeforeCollected", doneBeforeCollected)
            report("partialSeen", partialSeen.withLock { $0 })
            for result in results {
                if let error = result.error {
                    report("failure", "\(result.index) \(error.code.rawValue)")
                    report("failureFunction", "\(result.index) \(error.function)")
                }
                if outputsComplete("\(outputs)/\(result.index)", index: result.index, bytes: bytes) {
                    report("collected", result.index)
                }
            }
            let names = (try? FileManager.default.contentsOfDirectory(atPath: outputs)) ?? []
            report("leftovers", names.filter { $0.hasPrefix(".staging-") }.count)
            report("outputsFolder", outputs)
        }
    },
    // ROOT: what a job's outputs cannot do: a pattern that climbs out, and collecting without an experiment.
    "experiment-outputs-misuse": { vm, arguments in
        guard let root = arguments.first else {
            throw ScenarioArgumentError(description: "experiment-outputs-misuse needs ROOT")
        }
        try waitFor {
            let experiment = try Experiment(name: "misuse", in: root)
            let point = WriterPoint(index: 0, bytes: 10, workRoot: root, killWhileCollectingIn: nil)
            do {
                try await vm.dispatch(
                    [Job(experimentWriter, args: point).collecting("../escape")],
                    experiment: experiment
                )
                report("patternError", "none")
            } catch let error as ExperimentError {
                report("patternError", error.code.rawValue)
                report("patternMessage", error.description)
            }
            let plain = try await vm.dispatch([Job(experimentWriter, args: point).collecting("summary.txt")])
            report("plainFailure", plain[0].error.map { "\($0.code.rawValue) \($0.message)" } ?? "none")
        }
    },
]

/// Whether `folder` holds job `index`'s `summary.txt` and its whole blob, byte for byte.
func outputsComplete(_ folder: String, index: Int, bytes: Int) -> Bool {
    guard let summary = try? String(contentsOfFile: "\(folder)/summary.txt", encoding: .utf8),
        summary == "job \(index)\n",
        let blob = FileManager.default.contents(atPath: "\(folder)/data/blob-\(index).bin")
    else { return false }
    return blob == writerBlob(index, bytes: bytes)
}
