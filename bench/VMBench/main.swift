// The VM's benchmarks: message latency and bandwidth, task throughput, idle cost and mirroring. Every rank
// runs this program under mpirun; workers stay inside `VM(...)`.
// It prints one `name value` line per figure; scripts/bench.sh runs it next to the C references in
// bench/c/ and prints the table.
// BENCH_ISOLATION=inProcess (the default) or process decides the isolation of the VM, read on every rank
// before the first VM is made (pass it to every rank with mpirun's -x). With process isolation the task
// rows are named tasks_<kind>_isolated_w<workers>; the other modes measure the worker rank itself and run
// in-process only.
//
//   vm-bench latency [SIZE...]  one-way latency (µs) and bandwidth (MB/s), 2 ranks
//   vm-bench tasks N [KIND...]  trivial-task throughput (tasks/s) of the kinds spawn (spawnFunction),
//                             dispatch (chunkSize 1), dispatch_auto (chunkSize .auto, 10 N jobs) and
//                             dispatch_chunked (chunks of 100, 10 N jobs); default: all four;
//                             dispatch_chunked_journal: chunks of 100 with an experiment journal, measured
//                             alternately with dispatch_chunked (tasks_dispatch_chunked_nojournal_w<workers>)
//                             in experiments under BENCH_EXPERIMENTS (default: the temporary folder),
//                             BENCH_JOURNAL_REPETITIONS pairs (default 100: a pair's ratio varies by 10%
//                             or more on a shared machine; BENCH_JOURNAL_VERBOSE=1 prints each pair's
//                             rates and ratio to stderr);
//                             dispatch_vs_spawn: spawn and dispatch (chunkSize 1) alternately, 9 times,
//                             with the median of the ratios of each pair (dispatch_vs_spawn_w<workers>)
//   vm-bench idle SECONDS     CPU of an idle worker (% of a core), extra latency of the first message after idling
//   vm-bench mirror NAME PATH [warm]   seconds to mirror PATH into a task's local storage, cold (and warm)
//   vm-bench unshared NAME PATH   seconds to mirror PATH, in PARALLEL_UNSHARED_STORAGE, to a task on every other
//                             host, cold (caches emptied), warm (contents cached, a fresh task folder linked
//                             from them) and warm_persistent (persistent storage reused)
//   vm-bench journal-micro [JOBS]   ns per job of the journal's own steps on one thread, without MPI:
//                             job keys, group records (framing and CRC-32), the writer's appends, and
//                             the experiment log's line per chunk of 100 (median of 7 rounds)

import Foundation
import ParallelVM

/// A plain Codable value of a given size, for the Codable rows: a struct holding a byte array.
struct Blob: Codable, Sendable {
    var bytes: [UInt8]
}

/// Sends back every byte array or Blob it receives, until it receives anything else.
let bounce = RemoteFunction("bench.bounce") { (_: Int, task: TaskContext) -> Int in
    var count = 0
    while let (source, message) = try task.receiveMessage(), case .user(let user) = message {
        if user.holds([UInt8].self) {
            try task.sendMessage(to: source, try user.decode(as: [UInt8].self))
        } else if user.holds(Blob.self) {
            try task.sendMessage(to: source, try user.decode(as: Blob.self))
        } else {
            break
        }
        count += 1
    }
    return count
}

/// The trivial task: an Int in, its double out.
let double = RemoteFunction("bench.double") { (x: Int, _: TaskContext) -> Int in 2 * x }

/// The CPU time the worker process has used so far, in seconds, measured by the worker itself: its PID
/// means nothing in the spawner's /proc when it runs on another host (or in another PID namespace).
let cpuTime = RemoteFunction("bench.cpu") { (_: Int, _: TaskContext) -> Double in cpuSecondsOfThisProcess() }

func emit(_ name: String, _ value: Double) {
    print(name, String(format: "%.6g", value))
    fflush(nil)
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    let middle = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

func seconds() -> Double { ProcessInfo.processInfo.systemUptime }

/// Waits for the next user message for the spawner; results and exits of other tasks are skipped.
func receiveUser(_ vm: VM) throws -> UserMessage {
    while let (_, message) = try vm.receiveMessage(timeout: 120) {
        if case .user(let user) = message { return user }
    }
    fatalError("no message within 120 s: the bounce task stopped answering")
}

/// Stops a bounce task and waits for its exit.
func stopBounce(_ vm: VM, _ task: TaskID) throws {
    try vm.sendMessage(to: task, "stop")
    while let (source, message) = try vm.receiveMessage(timeout: 120) {
        if case .taskExit = message, source == task { return }
    }
}

/// Round trips per repetition, as in bench/c/pingpong.c: about 0.1 s for small payloads, at least 5.
/// BENCH_ROUND_TRIPS caps the count, for profiling under valgrind.
func roundTrips(_ size: Int) -> Int {
    let cap = ProcessInfo.processInfo.environment["BENCH_ROUND_TRIPS"].flatMap { Int($0) } ?? 20_000
    return max(5, min(cap, 200_000_000 / max(size, 10_000)))
}

/// Median one-way time (seconds) of `repetitions` runs of `count` round trips of `send`.
func pingPong(
    _ vm: VM,
    _ task: TaskID,
    repetitions: Int,
    count: Int,
    send: () throws -> Void,
    check: (UserMessage) throws -> Void
) throws -> Double {
    let warmUp = seconds()
    try send()
    try check(try receiveUser(vm))
    // A round trip of more than half a second (large values through a slow codec) is measured once.
    let first = seconds() - warmUp
    if first > 0.5 { return first / 2 }
    var oneWay: [Double] = []
    for _ in 0..<repetitions {
        let start = seconds()
        for _ in 0..<count {
            try send()
            try check(try receiveUser(vm))
        }
        oneWay.append((seconds() - start) / Double(2 * count))
    }
    return median(oneWay)
}

func latency(_ vm: VM, sizes: [Int]) throws {
    guard let task = try vm.spawnFunction(bounce, args: 0, count: 1).first else { fatalError("latency needs 2 ranks") }
    for size in sizes {
        let payload = [UInt8](repeating: 0x5a, count: size)
        let t = try pingPong(
            vm,
            task,
            repetitions: 5,
            count: roundTrips(size),
            send: { try vm.sendMessage(to: task, payload) },
            check: { user in
                let echoed = try user.decode(as: [UInt8].self)
                precondition(echoed.count == size, "a bounced message came back with the wrong size")
            }
        )
        emit("latency_\(size)", t * 1e6)
        if size >= 1_000_000 { emit("bandwidth_\(size)", Double(size) / t / 1e6) }
    }
    for size in sizes {
        let blob = Blob(bytes: [UInt8](repeating: 0x5a, count: size))
        // Encoding dominates large Codable values: fewer round trips keep the run short.
        let count = size >= 1_000_000 ? 2 : roundTrips(size) / (size >= 100_000 ? 4 : 2)
        let t = try pingPong(
            vm,
            task,
            repetitions: size >= 1_000_000 ? 3 : 5,
            count: count,
            send: { try vm.sendMessage(to: task, blob) },
            check: { user in
                let echoed = try user.decode(as: Blob.self)
                precondition(echoed.bytes.count == size, "a bounced message came back with the wrong size")
            }
        )
        emit("latency_codable_\(size)", t * 1e6)
        if t > 0.1 {
            FileHandle.standardError.write(
                Data("vm-bench: Codable values above \(size) bytes skipped: one-way \(t) s\n".utf8)
            )
            break
        }
    }
    try stopBounce(vm, task)
}

/// Farms `n` doubles with spawnFunction, a new task in each slot as soon as its task exits.
func spawnFarm(_ vm: VM, _ n: Int) throws {
    var next = 0
    var results = 0
    var sum = 0
    while next < n, vm.freeSlots() > 0 {
        try vm.spawnFunction(double, args: next, count: 1)
        next += 1
    }
    while results < n || vm.freeSlots() < vm.slots() - 1 {
        guard let (_, message) = try vm.receiveMessage(timeout: 120) else { fatalError("a task stopped answering") }
        switch message {
        case .taskResult(let result):
            sum += try result.value(as: Int.self)
            results += 1
        case .taskExit where next < n:
            try vm.spawnFunction(double, args: next, count: 1)
            next += 1
        default:
            break
        }
    }
    precondition(sum == (n - 1) * n, "wrong sum of doubles")
}

func dispatchFarm(_ vm: VM, _ n: Int, chunkSize: ChunkSize) async throws {
    let results = try await vm.dispatch((0..<n).map { Job(double, args: $0) }, chunkSize: chunkSize)
    precondition(results.count == n && results[n - 1].value == 2 * (n - 1), "wrong dispatch results")
}

/// `dispatchFarm` with chunks of 100 and a new experiment (nothing to reuse): what journaling costs.
func journaledFarm(_ vm: VM, _ n: Int, in root: String, run: Int) async throws {
    let experiment = try Experiment(name: "bench-\(getpid())-\(run)", in: root)
    let results = try await vm.dispatch((0..<n).map { Job(double, args: $0) }, chunkSize: 100, experiment: experiment)
    precondition(results.count == n && results[n - 1].value == 2 * (n - 1), "wrong dispatch results")
    precondition(experiment.lastRun?.ran == n, "journaled jobs were reused")
}

/// The chunked dispatch with and without a journal, one repetition of each in turn so that drift on a
/// shared machine hits both alike: rates in tasks/s and the spawner's CPU time per task in µs (which a
/// busy machine disturbs less than the rates), medians.
func journalRates(
    _ vm: VM,
    _ n: Int,
    repetitions: Int
) async throws -> (journaled: Double, plain: Double, journaledCPU: Double, plainCPU: Double) {
    let base = ProcessInfo.processInfo.environment["BENCH_EXPERIMENTS"] ?? NSTemporaryDirectory()
    // A folder of this run's own, removed at the end with the experiments in it.
    let root = URL(fileURLWithPath: base).appendingPathComponent("parallelvm-bench-journal-\(getpid())").path
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: root) }
    try await journaledFarm(vm, n, in: root, run: 0)  // warm-up
    try await dispatchFarm(vm, n, chunkSize: 100)
    // For profiling one side alone: BENCH_JOURNAL_ONLY=journaled or plain (the other side's figures are then void).
    let only = ProcessInfo.processInfo.environment["BENCH_JOURNAL_ONLY"] ?? ""
    var journaled: [Double] = []
    var plain: [Double] = []
    var journaledCPU: [Double] = []
    var plainCPU: [Double] = []
    for repetition in 1...repetitions {
        var start = seconds()
        var cpu = cpuSecondsOfThisProcess()
        if only != "plain" { try await journaledFarm(vm, n, in: root, run: repetition) }
        journaled.append(Double(n) / (seconds() - start))
        journaledCPU.append((cpuSecondsOfThisProcess() - cpu) * 1e6 / Double(n))
        start = seconds()
        cpu = cpuSecondsOfThisProcess()
        if only != "journaled" { try await dispatchFarm(vm, n, chunkSize: 100) }
        plain.append(Double(n) / (seconds() - start))
        plainCPU.append((cpuSecondsOfThisProcess() - cpu) * 1e6 / Double(n))
    }
    if ProcessInfo.processInfo.environment["BENCH_JOURNAL_VERBOSE"] != nil {
        // Each repetition's pair (for comparing two builds): journaled and plain rates and their ratio.
        for (j, p) in zip(journaled, plain) { FileHandle.standardError.write(Data("pair \(j) \(p) \(j / p)\n".utf8)) }
    }
    return (median(journaled), median(plain), median(journaledCPU), median(plainCPU))
}

/// Raw spawnFunction and the dispatcher without chunks, one repetition of each in turn so that drift on a
/// shared machine hits both alike: median rates in tasks/s, and the median of the ratios of each pair.
func dispatchVersusSpawn(
    _ vm: VM,
    _ n: Int,
    repetitions: Int
) async throws -> (spawn: Double, dispatch: Double, ratio: Double) {
    try spawnFarm(vm, n)  // warm-up
    try await dispatchFarm(vm, n, chunkSize: 1)
    var spawn: [Double] = []
    var dispatch: [Double] = []
    var ratios: [Double] = []
    for _ in 0..<repetitions {
        var start = seconds()
        try spawnFarm(vm, n)
        spawn.append(Double(n) / (seconds() - start))
        start = seconds()
        try await dispatchFarm(vm, n, chunkSize: 1)
        dispatch.append(Double(n) / (seconds() - start))
        ratios.append(dispatch[dispatch.count - 1] / spawn[spawn.count - 1])
    }
    return (median(spawn), median(dispatch), median(ratios))
}

func rate(repetitions: Int, _ n: Int, _ body: () async throws -> Void) async rethrows -> Double {
    try await body()  // warm-up
    var rates: [Double] = []
    for _ in 0..<repetitions {
        let start = seconds()
        try await body()
        rates.append(Double(n) / (seconds() - start))
    }
    return median(rates)
}

/// The task throughput rows of `kinds` (spawn, dispatch, dispatch_chunked), named with `isolated_` before the
/// number of workers when the VM runs tasks in task processes.
func tasks(_ vm: VM, _ n: Int, kinds: [String], isolated: Bool) async throws {
    let suffix = (isolated ? "isolated_" : "") + "w\(vm.slots() - 1)"
    for kind in kinds {
        switch kind {
        case "spawn":
            emit("tasks_spawn_\(suffix)", try await rate(repetitions: 5, n) { try spawnFarm(vm, n) })
        case "dispatch":
            emit(
                "tasks_dispatch_\(suffix)",
                try await rate(repetitions: 5, n) { try await dispatchFarm(vm, n, chunkSize: 1) }
            )
        case "dispatch_auto":
            let many = 10 * n
            emit(
                "tasks_dispatch_auto_\(suffix)",
                try await rate(repetitions: 5, many) { try await dispatchFarm(vm, many, chunkSize: .auto) }
            )
        case "dispatch_chunked":
            let chunked = 10 * n
            emit(
                "tasks_dispatch_chunked_\(suffix)",
                try await rate(repetitions: 5, chunked) { try await dispatchFarm(vm, chunked, chunkSize: 100) }
            )
        case "dispatch_chunked_journal":
            let repetitions =
                ProcessInfo.processInfo.environment["BENCH_JOURNAL_REPETITIONS"].flatMap { Int($0) } ?? 100
            let rates = try await journalRates(vm, 10 * n, repetitions: max(1, repetitions))
            emit("tasks_dispatch_chunked_journal_\(suffix)", rates.journaled)
            emit("tasks_dispatch_chunked_nojournal_\(suffix)", rates.plain)
            emit("spawner_cpu_us_per_task_chunked_journal_\(suffix)", rates.journaledCPU)
            emit("spawner_cpu_us_per_task_chunked_nojournal_\(suffix)", rates.plainCPU)
        case "dispatch_vs_spawn":
            let rates = try await dispatchVersusSpawn(vm, n, repetitions: 9)
            emit("tasks_spawn_alternating_\(suffix)", rates.spawn)
            emit("tasks_dispatch_alternating_\(suffix)", rates.dispatch)
            emit("dispatch_vs_spawn_\(suffix)", rates.ratio)
        default:
            fatalError(
                "unknown task kind '\(kind)': spawn, dispatch, dispatch_auto, dispatch_chunked, dispatch_chunked_journal or dispatch_vs_spawn"
            )
        }
    }
}

/// utime + stime of this process, in seconds (/proc/self/stat fields 14 and 15).
/// The CPU time of all this process's threads, in seconds, to the nanosecond (`/proc/self/stat` counts
/// whole clock ticks, 10 ms, too coarse for a few microseconds a task).
func cpuSecondsOfThisProcess() -> Double {
    var now = timespec()
    guard clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now) == 0 else { fatalError("cannot read the process's CPU time") }
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

func idle(_ vm: VM, _ idleSeconds: Double) throws {
    // The worker's CPU time as one task ends and as the next begins, on the slot it idled in between:
    // the difference is what waiting for work cost (plus one task's own small share).
    func workerCPU(slot: Int?) throws -> (slot: Int, seconds: Double) {
        let spawned = try vm.spawnFunction(cpuTime, args: 0, count: 1)
        guard let task = spawned.first else { fatalError("idle needs 2 ranks") }
        if let slot, task.slot != slot { fatalError("the idle worker's slot \(slot) was not the one reused") }
        var seconds: Double?
        while let (source, message) = try vm.receiveMessage(timeout: 120) {
            if case .taskResult(let result) = message { seconds = try result.value(as: Double.self) }
            if case .taskExit = message, source == task { break }
        }
        guard let seconds else { fatalError("no CPU time from task \(task)") }
        return (task.slot, seconds)
    }
    let before = try workerCPU(slot: nil)
    Thread.sleep(forTimeInterval: idleSeconds)
    let after = try workerCPU(slot: before.slot)
    emit("idle_cpu_percent", 100 * (after.seconds - before.seconds) / idleSeconds)

    // The first task after idling: an idle worker waits in its loop for a spawn request. Spawn, result
    // and exit of a trivial task after 0.2 s idle, against the same round trip done back to back.
    func spawnRoundTrip() throws -> Double {
        let start = seconds()
        guard let task = try vm.spawnFunction(double, args: 1, count: 1).first else { fatalError("no free slot") }
        while let (source, message) = try vm.receiveMessage(timeout: 60) {
            if case .taskExit = message, source == task { break }
        }
        return seconds() - start
    }
    _ = try spawnRoundTrip()
    var extra: [Double] = []
    for _ in 0..<7 {
        Thread.sleep(forTimeInterval: 0.2)
        let first = try spawnRoundTrip()
        let warm = median(try (0..<15).map { _ in try spawnRoundTrip() })
        extra.append(first - warm)
    }
    emit("idle_first_message_extra_us", median(extra) * 1e6)

    // The first message to a task that has waited 0.2 s inside receiveMessage (it sleeps between polls).
    guard let task = try vm.spawnFunction(bounce, args: 0, count: 1).first else { fatalError("no free slot") }
    let token: [UInt8] = [1]
    func roundTrip() throws -> Double {
        let start = seconds()
        try vm.sendMessage(to: task, token)
        _ = try receiveUser(vm)
        return seconds() - start
    }
    _ = try roundTrip()
    var taskExtra: [Double] = []
    for _ in 0..<7 {
        Thread.sleep(forTimeInterval: 0.2)
        let first = try roundTrip()
        let warm = median(try (0..<15).map { _ in try roundTrip() })
        taskExtra.append(first - warm)
    }
    emit("idle_task_first_message_extra_us", median(taskExtra) * 1e6)
    try stopBounce(vm, task)
}

/// Seconds from spawning `function` with `vm` in one slot to its exit: the task's mirroring plus a no-op.
func timedTask(_ vm: VM) throws -> Double {
    let start = seconds()
    guard let task = try vm.spawnFunction(double, args: 1, count: 1).first else { fatalError("no free slot") }
    while let (source, message) = try vm.receiveMessage(timeout: 600) {
        if case .taskResult(let result) = message, !result.success { fatalError("mirroring failed: \(result)") }
        if case .taskExit = message, source == task { return seconds() - start }
    }
    fatalError("the mirroring task did not end within 600 s")
}

/// Mirrors `source` into each task's local storage: cold (first task of a persistent VM object), warm (its
/// next task, which reuses the storage). With `large`, only cold, without persistent storage.
func mirror(_ source: String, name: String, warm: Bool) throws {
    let mirrored = try VM(mirrorMap: [source: "data"], persistentStorage: warm)
    emit("mirror_\(name)_cold", try timedTask(mirrored))
    if warm { emit("mirror_\(name)_warm", median(try (0..<5).map { _ in try timedTask(mirrored) })) }
}

/// Mirrors `source` (which must lie in PARALLEL_UNSHARED_STORAGE) into one task on each host other than the
/// spawner's, which the spawner serves one after another: cold, with the hosts' mirror caches emptied first and
/// the spawner's reading and hashing of the files included; then warm, the same VM object's next task on each
/// host, made from the contents the caches hold; and with persistent storage, the folder reused.
func unsharedMirror(_ source: String, name: String) throws {
    _ = try vm.clearLocalStorage(timeout: 60)
    let remote = vm.hosts().filter { $0 != vm.hostID() }
    func round(_ mirrored: VM) throws -> Double {
        let start = seconds()
        var running = Set<TaskID>()
        for host in remote { running.formUnion(try mirrored.spawnFunction(double, args: 1, count: 1, targets: [host])) }
        while !running.isEmpty, let (source, message) = try mirrored.receiveMessage(timeout: 600) {
            if case .taskResult(let result) = message, !result.success { fatalError("mirroring failed: \(result)") }
            if case .taskExit = message { running.remove(source) }
        }
        guard running.isEmpty else { fatalError("the mirroring tasks did not end within 600 s") }
        return seconds() - start
    }
    let start = seconds()
    let mirrored = try VM(mirrorMap: [source: "data"])
    let read = seconds() - start
    emit("unshared_\(name)_read", read)
    emit("unshared_\(name)_cold", read + (try round(mirrored)))
    emit("unshared_\(name)_warm", median(try (0..<3).map { _ in try round(mirrored) }))
    // With persistent storage a host's task folder is made from the cache once and then reused.
    let persistent = try VM(mirrorMap: [source: "data"], persistentStorage: true)
    _ = try round(persistent)
    emit("unshared_\(name)_warm_persistent", median(try (0..<3).map { _ in try round(persistent) }))
}

// Every rank reads the same setting before its first VM: all ranks must create it with the same isolation.
let isolated: Bool
switch ProcessInfo.processInfo.environment["BENCH_ISOLATION"] ?? "" {
case "", "inProcess": isolated = false
case "process": isolated = true
case let other:
    FileHandle.standardError.write(
        Data("vm-bench: BENCH_ISOLATION must be inProcess or process, not '\(other)'\n".utf8)
    )
    exit(2)
}
let arguments = Array(CommandLine.arguments.dropFirst())
if isolated, arguments.first != "tasks" {
    // The other modes measure the worker rank itself (its CPU time, its wake-up) and stay comparable as they are.
    FileHandle.standardError.write(Data("vm-bench: BENCH_ISOLATION=process applies to the tasks mode only\n".utf8))
    exit(2)
}
let vm = try VM(functions: [bounce, double, cpuTime], isolation: isolated ? .process : .inProcess)
switch arguments.first {
case "journal-micro":
    // The spawner alone measures this; workers, if any, stay idle.
    try journalMicro(arguments.count > 1 ? Int(arguments[1])! : 200_000)
case "latency":
    let sizes = arguments.dropFirst().compactMap { Int($0) }
    try latency(vm, sizes: sizes.isEmpty ? [0, 8, 1_000, 100_000, 1_000_000, 10_000_000] : sizes)
case "tasks":
    try await tasks(
        vm,
        arguments.count > 1 ? Int(arguments[1])! : 20_000,
        kinds: arguments.count > 2
            ? Array(arguments.dropFirst(2)) : ["spawn", "dispatch", "dispatch_auto", "dispatch_chunked"],
        isolated: isolated
    )
case "idle":
    try idle(vm, arguments.count > 1 ? Double(arguments[1])! : 5)
case "mirror":
    // vm-bench mirror NAME PATH [warm]: PATH must lie in PARALLEL_MIRRORED_STORAGE.
    try mirror(arguments[2], name: arguments[1], warm: arguments.count > 3)
case "unshared":
    // vm-bench unshared NAME PATH: PATH must lie in PARALLEL_UNSHARED_STORAGE (set on the spawner).
    try unsharedMirror(arguments[2], name: arguments[1])
default:
    FileHandle.standardError.write(
        Data(
            "usage: vm-bench latency [SIZE...] | tasks N [KIND...] | idle SECONDS | mirror NAME PATH [warm] | unshared NAME PATH | journal-micro [JOBS]\n"
                .utf8
        )
    )
    try vm.finalize()
    exit(2)
}
try vm.finalize()
