import Foundation
import Glibc
import ParallelVM
import Synchronization

// Faults caused for real inside tasks: traps, signals, exits, a stack overflow, memory exhaustion, a task
// that never returns, children left running, a working folder changed.

/// Values the optimiser cannot see through, so that the faults happen at run time.
nonisolated(unsafe) var opaqueZero = 0
nonisolated(unsafe) var opaqueNil: Int? = nil
nonisolated(unsafe) var opaqueNever = -1

@inline(never)
func recurse(_ depth: Int) -> Int {
    if depth == opaqueNever { return 0 }
    var frame = [depth, depth + 1]
    frame[0] = recurse(depth + 1)
    return frame[0] + frame[1]
}

/// Fails in the way its argument names.
let faulty = RemoteFunction("fault.run") { (kind: String, _: TaskContext) -> Int in
    switch kind {
    case "fatalError": fatalError("bad input in the fault test")
    case "forceUnwrap": return opaqueNil!
    case "divideByZero": return 1 / opaqueZero
    case "overflow": return Int.max + (opaqueZero + 1)
    case "badPointer":
        UnsafeMutablePointer<Int>(bitPattern: 16)!.pointee = 1
        return 0
    case "abort": abort()
    case "exit3": exit(3)
    case "exit0": exit(0)
    case "stackOverflow": return recurse(0)
    case "outOfMemory":
        // Swift's own allocator: when the kernel says no, the runtime reports it and aborts.
        var blocks: [UnsafeMutableRawPointer] = []
        while true { blocks.append(UnsafeMutableRawPointer.allocate(byteCount: 256 << 20, alignment: 16)) }
    default: throw Failure(what: "no such fault: \(kind)")
    }
}

/// Starts children that outlive the task unless the worker ends them; returns at once.
let leaveChildren = RemoteFunction("fault.children") { (seconds: Int, _: TaskContext) -> Int in
    var pid: pid_t = 0
    let script = "sleep \(seconds) & setsid sleep \(seconds + 1) & exit 0"
    let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sh"), strdup("-c"), strdup(script), nil]
    defer { for argument in argv { free(argument) } }
    guard posix_spawn(&pid, "/bin/sh", nil, nil, argv, environ) == 0 else { throw Failure(what: "spawn failed") }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    usleep(200_000)
    return Int(pid)
}

/// Moves to another folder and reports where it started.
let wander = RemoteFunction("fault.wander") { (to: String, _: TaskContext) -> String in
    let started = FileManager.default.currentDirectoryPath
    if !to.isEmpty { _ = chdir(to) }
    return started
}

/// What the VM's setup function did in this process: how often it ran, in which process.
let setupRuns = Mutex(0)
let setupProbe = RemoteFunction("fault.setup-probe") { (_: Int, _: TaskContext) -> [Int] in
    [Int(getpid()), setupRuns.withLock { $0 }]
}

/// Crashes the first `count` times it runs with the same marker folder, then returns the number of runs.
let crashUntil = RemoteFunction("fault.crash-until") { (job: [String], _: TaskContext) -> Int in
    let folder = job[0]
    let count = Int(job[1]) ?? 0
    let runs = ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).count + 1
    _ = FileManager.default.createFile(atPath: folder + "/run-\(runs)", contents: nil)
    if runs <= count { abort() }
    return runs
}

/// The task process's parent: its worker rank.
let parentProcess = RemoteFunction("fault.parent") { (_: Int, _: TaskContext) -> Int32 in getppid() }

let faultFunctions: [any RemoteFunctionConvertible] = [
    faulty, leaveChildren, wander, setupProbe, crashUntil, parentProcess,
]

/// Describes a failed result's termination for the test: `reason|detail`.
func terminationText(_ result: TaskResult) -> String {
    guard let error = result.error else { return "no error" }
    guard let termination = error.underlying as? TaskTermination else { return "untyped: \(error)" }
    return "\(termination.reason)|\(termination.detail)|\(termination.task)|\(termination.function)|\(termination.host)"
}

let faultScenarios: [String: Scenario] = [
    // A task fails as its argument says while another runs 1.5 s; then every slot serves again.
    "fault": { vm, arguments in
        let kind = arguments.first ?? "abort"
        let bad = try vm.spawnFunction(faulty, args: kind, count: 1)
        let slow = try vm.spawnFunction(sleeper, args: 1.5, count: 1)
        for (source, message) in try collect(vm, bad + slow, timeout: 60) {
            guard case .taskResult(let result) = message else { continue }
            if source == bad.first {
                report("badSuccess", result.success)
                report("badType", result.error?.typeName ?? "")
                report("badTermination", terminationText(result))
                report("badMessage", (result.error?.message ?? "").replacingOccurrences(of: "\n", with: "\\n"))
            } else {
                report("slowValue", (try? result.value(as: String.self)) ?? "failed")
            }
        }
        let again = try vm.spawnFunction(double, args: 21)
        var served: [Int: Int] = [:]
        for (source, message) in try collect(vm, again) {
            if case .taskResult(let result) = message, let value = try? result.value(as: Int.self) {
                served[source.slot] = value
            }
        }
        report("badSlotServesAgain", served[bad[0].slot] == 42)
        report("freeAtEnd", vm.freeSlots())
    },

    // Faults inside a dispatch are failed results with their own codes; the other jobs succeed.
    "fault-dispatch": { vm, _ in
        let kinds = ["ok", "abort", "ok", "badPointer", "ok", "exit3", "ok"]
        let results = try waitForValue {
            try await vm.dispatch(kinds.map { Job(faulty, args: $0 == "ok" ? "none" : $0) })
        }
        report(
            "codes",
            results.map { $0.error.map { "\($0.code)" } ?? "ok" }.joined(separator: ",")
        )
        report(
            "terminations",
            results.compactMap { $0.error?.termination.map { "\($0.reason)" } }.joined(separator: ";")
        )
        report("freeAtEnd", vm.freeSlots())
    },

    // A task over its timeout is killed and reported; the slot serves again.
    "timeout": { vm, _ in
        let started = Date()
        let tasks = try vm.spawnFunction(sleeper, args: 30, count: 1, timeout: 0.5)
        for (_, message) in try collect(vm, tasks) {
            if case .taskResult(let result) = message { report("timedOut", terminationText(result)) }
        }
        report("seconds", Date().timeIntervalSince(started))
        let again = try vm.spawnFunction(double, args: 2, count: 1)
        for (_, message) in try collect(vm, again) {
            if case .taskResult(let result) = message { report("after", (try? result.value(as: Int.self)) ?? -1) }
        }
        let dispatched = try waitForValue {
            try await vm.dispatch([Job(sleeper, args: 30, timeout: 0.5), Job(sleeper, args: 0.1)])
        }
        report("dispatchCodes", dispatched.map { $0.error.map { "\($0.code)" } ?? "ok" }.joined(separator: ","))
    },

    // vm.kill ends a running task at once.
    "kill": { vm, _ in
        let tasks = try vm.spawnFunction(sleeper, args: 30, count: 1)
        usleep(300_000)
        let started = Date()
        try vm.kill(tasks[0])
        for (_, message) in try collect(vm, tasks) {
            if case .taskResult(let result) = message { report("killed", terminationText(result)) }
        }
        report("seconds", Date().timeIntervalSince(started))
        do {
            try vm.kill(tasks[0])
            report("killAgain", "no error")
        } catch {
            report("killAgain", "\(error)")
        }
    },

    // Children a task leaves behind are ended when it ends.
    "orphans": { vm, _ in
        let tasks = try vm.spawnFunction(leaveChildren, args: 25, count: 1)
        for (_, message) in try collect(vm, tasks) {
            if case .taskResult(let result) = message { report("returned", result.success) }
        }
    },

    // Each task starts in the worker's folder whatever the previous task did.
    "chdir": { vm, _ in
        var seen: [String] = []
        for target in ["/tmp", "/", ""] {
            let tasks = try vm.spawnFunction(wander, args: target, count: 1)
            for (_, message) in try collect(vm, tasks) {
                if case .taskResult(let result) = message { seen.append(try result.value(as: String.self)) }
            }
        }
        report("starts", Set(seen).count == 1 ? "same" : seen.joined(separator: ","))
        report("start", seen.first ?? "")
    },

    // finalize(timeout:) kills what still runs and says so.
    "finalize-timeout": { vm, _ in
        let tasks = try vm.spawnFunction(sleeper, args: 60, count: 1)
        usleep(200_000)
        let started = Date()
        let killed = try vm.finalize(timeout: 1)
        report("killed", killed.map(\.description).joined(separator: ","))
        report("task", tasks[0])
        report("seconds", Date().timeIntervalSince(started))
    },

    // Tasks with storage folders run until the run is interrupted from outside.
    "interrupt": { vm, arguments in
        let storageVM = try VM(mirrorMap: [arguments[0]: "."])
        vm.onInterrupt { interrupt in report("interrupted", interrupt) }
        let tasks = try storageVM.spawnFunction(sleeper, args: 60)
        usleep(800_000)
        report("tasks", tasks.count)
        report("pid", getpid())
        report("ready", 1)
        while try vm.receiveMessage(timeout: 120) != nil {}
        report("notInterrupted", 1)
    },

    // retries: N starts a crashed job again, up to N times; attempts says how many starts it took.
    "retries": { vm, arguments in
        let root = arguments[0]
        @Sendable func folder(_ name: String) -> String {
            let path = root + "/" + name
            try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            return path
        }
        let jobs = [
            Job(crashUntil, args: [folder("once"), "1"]),
            Job(crashUntil, args: [folder("always"), "99"]),
            Job(crashUntil, args: [folder("never"), "0"]),
        ]
        let results = try waitForValue { try await vm.dispatch(jobs, retries: 2) }
        report("values", results.map { $0.value.map(String.init) ?? "\($0.error!.code)" }.joined(separator: ","))
        report("attempts", results.map { String($0.attempts) }.joined(separator: ","))
        let none = try waitForValue { try await vm.dispatch([Job(crashUntil, args: [folder("none"), "1"])]) }
        report("withoutRetries", none.map { "\($0.error?.code.rawValue ?? "ok")/\($0.attempts)" }.joined())
    },

    // Cancelling the task that awaits a dispatch kills its running jobs instead of waiting for them.
    "cancel-dispatch": { vm, _ in
        let started = Date()
        let outcome = ValueBox<String>()
        try waitFor {
            let dispatch = Task { try await vm.dispatch([Job(sleeper, args: 30), Job(sleeper, args: 30)]) }
            try await Task.sleep(nanoseconds: 500_000_000)
            dispatch.cancel()
            do {
                _ = try await dispatch.value
                outcome.set("finished")
            } catch is CancellationError {
                outcome.set("cancelled")
            } catch {
                outcome.set("\(error)")
            }
        }
        report("outcome", outcome.get() ?? "none")
        report("seconds", Date().timeIntervalSince(started))
        let again = try vm.spawnFunction(double, args: 5)
        var served = 0
        for (_, message) in try collect(vm, again) {
            if case .taskResult(let result) = message, (try? result.value(as: Int.self)) == 10 { served += 1 }
        }
        report("servedAfter", served)
    },

    // kill -9 of a worker rank, busy and idle: its task is reported lost, the run goes on without it.
    "lost-worker": { vm, _ in
        // The parent of a task process is its worker rank.
        let probes = try vm.spawnFunction(parentProcess, args: 0)
        var ranks: [Int: Int32] = [:]
        for (source, message) in try collect(vm, probes) {
            if case .taskResult(let result) = message { ranks[source.slot] = try result.value(as: Int32.self) }
        }
        let busy = try vm.spawnFunction(sleeper, args: 30, count: 1)
        let other = try vm.spawnFunction(sleeper, args: 1.0, count: 1)
        usleep(300_000)
        let started = Date()
        kill(ranks[busy[0].slot]!, SIGKILL)
        for (source, message) in try collect(vm, busy + other, timeout: 30) {
            guard case .taskResult(let result) = message else { continue }
            if source == busy[0] {
                report("lost", terminationText(result))
                report("lostAfter", Date().timeIntervalSince(started))
            } else {
                report("otherValue", (try? result.value(as: String.self)) ?? "failed")
            }
        }
        report("freeAfterLoss", vm.freeSlots())
        let results = try waitForValue { try await vm.dispatch((0..<6).map { Job(double, args: $0) }) }
        report("dispatchAfterLoss", results.compactMap(\.value).map(String.init).joined(separator: ","))
        report("config", vm.formatSpawnerConfig().contains("lost"))
    },

    // How the spawner ends, for scripts/mpirun.sh's status under Open MPI's recovery: `exit N` after a
    // task, `trap` (a force-unwrapped nil), `kill` (waits to be killed), `ok` (a normal end).
    "spawner-end": { vm, arguments in
        let tasks = try vm.spawnFunction(double, args: 21, count: 1)
        _ = try collect(vm, tasks)
        report("pid", getpid())
        switch arguments.first ?? "ok" {
        case "exit": exit(Int32(arguments[1])!)
        case "trap": report("value", opaqueNil!)
        case "kill": sleep(60)
        default: break
        }
    },

    // A job once on every slot, and once on every host.
    "everywhere": { vm, _ in
        let slots = try vm.runEverywhere(parentProcess, args: 0)
        report("slots", slots.map { String($0.task.slot) }.joined(separator: ","))
        report("distinct", Set(slots.compactMap { try? $0.result.value(as: Int32.self) }).count)
        let hosts = try vm.runEverywhere(parentProcess, args: 0, perHost: true)
        report("hosts", hosts.count)
        let busy = try vm.spawnFunction(sleeper, args: 1.0, count: 1)
        do {
            _ = try vm.runEverywhere(parentProcess, args: 0)
            report("whileBusy", "no error")
        } catch {
            report("whileBusy", "\(error)")
        }
        _ = try collect(vm, busy)
    },

    // The setup function runs once per task process, and again in the one that replaces a crashed one.
    "setup": { vm, _ in
        var probes: [[Int]] = []
        func probe() throws {
            let tasks = try vm.spawnFunction(setupProbe, args: 0, count: 1)
            for (_, message) in try collect(vm, tasks) {
                if case .taskResult(let result) = message { probes.append(try result.value(as: [Int].self)) }
            }
        }
        try probe()
        try probe()
        try probe()
        let crash = try vm.spawnFunction(faulty, args: "abort", count: 1)
        _ = try collect(vm, crash)
        try probe()
        report("runs", probes.map { String($0[1]) }.joined(separator: ","))
        report("samePidBeforeCrash", Set(probes.prefix(3).map { $0[0] }).count == 1)
        report("newPidAfterCrash", probes[3][0] != probes[0][0])
    },
]
