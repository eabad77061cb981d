import CThreadProbe
import Foundation
import Glibc

/// A worker's `VM(...)` serves tasks from inside the call and never returns. When that call initializes a
/// global (`let vm = try! VM(...)` in a file other than main.swift, or a `static let`), the whole worker runs
/// inside the global's one-time initializer, and a task that touches the global re-enters it: the Swift
/// runtime's once-lock, already held by the same thread, refuses the thread again and again, and the task
/// spins forever in the kernel. This file tells that case apart, so that the task fails with an error that
/// says what happened instead.
enum GlobalInitializer {
    /// Return addresses seen from inside the initializer of a global of our own; the one into the runtime's
    /// once-function is among them.
    private static let framesInsideProbe: [UInt] = Thread.callStackReturnAddresses.map(\.uintValue)

    /// Whether the caller runs inside some global's one-time initializer: its stack has the return address
    /// into the runtime's once-function that a known global's initializer has.
    static func callerIsInsideOne() -> Bool {
        let here = Thread.callStackReturnAddresses.map(\.uintValue)
        let probe = framesInsideProbe
        // Both captures start with the same frames (the capture itself) and end with the same ones (this
        // function's callers); what the probe has in between are its initializer, the runtime's once-function
        // and the global's accessor.
        var prefix = 0
        while prefix < min(here.count, probe.count), here[prefix] == probe[prefix] { prefix += 1 }
        var suffix = 0
        while suffix < min(here.count, probe.count) - prefix,
            here[here.count - 1 - suffix] == probe[probe.count - 1 - suffix]
        {
            suffix += 1
        }
        let probeOnly = Set(probe[prefix..<(probe.count - suffix)])
        return here[prefix...].contains { probeOnly.contains($0) }
    }
}

/// Watches the thread that runs a worker's tasks for the spin described in ``GlobalInitializer``.
///
/// A task that has run for over 3 s without ever waiting, busy and partly in the kernel, is a candidate; it
/// is then asked by a signal what it does (``parallelvm_thread_spins_on_own_pi_futex``): the spin is a
/// `futex(FUTEX_LOCK_PI)` call on a lock the thread holds itself, answered `EDEADLK` again and again. Only a
/// task seen so is failed, however loaded the machine is: a busy task that does something else is left alone
/// and asked again later, less and less often. Where the thread cannot be asked (another architecture), a
/// candidate busy a quarter of a CPU at least and nearly all of it in the kernel is failed instead.
/// Started only when the worker's `VM(...)` runs inside a global's initializer.
final class SpinWatch: Sendable {
    /// Seconds without waiting after which a busy task is a candidate.
    static let window = 3.0

    /// Starts watching the calling thread; `current` says which task runs now and since when (monotonic
    /// seconds); `stuck` is called, on the watch's thread, with the task found spinning.
    static func startOnThisThread(
        current: @escaping @Sendable () -> (task: Int, since: Double)?,
        stuck: @escaping @Sendable (Int) -> Void
    ) {
        guard let thread = threadID() else { return }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let watcher = Thread {
            var samples: [(at: Double, task: Int, times: (cpu: Double, system: Double, waits: Int))] = []
            // After each candidate that was not spinning, the next one needs twice the time without waiting.
            var quiet = (task: -1, needed: window)
            while true {
                Thread.sleep(forTimeInterval: 0.5)
                let now = monotonicSeconds()
                guard let running = current(), now - running.since >= 1, let times = usage(of: thread, ticks: ticks)
                else {
                    samples.removeAll()
                    continue
                }
                if quiet.task != running.task { quiet = (running.task, window) }
                samples.append((now, running.task, times))
                // Any wait starts the count again.
                samples.removeAll {
                    $0.task != running.task || $0.times.waits != times.waits || now - $0.at > quiet.needed + 0.6
                }
                guard let first = samples.first, now - first.at >= quiet.needed else { continue }
                let elapsed = now - first.at
                let cpu = times.cpu - first.times.cpu
                let system = times.system - first.times.system
                guard cpu >= 0.1 * elapsed, system >= 0.2 * cpu else { continue }
                switch parallelvm_thread_spins_on_own_pi_futex(thread, 20, 2000) {
                case 1:
                    stuck(running.task)
                    return
                case 0:
                    quiet.needed = min(2 * quiet.needed, 60)
                    samples.removeAll()
                default:
                    // A busy machine may give the spinning thread only part of a CPU; that it never waits tells.
                    if cpu >= 0.25 * elapsed, system >= 0.7 * cpu {
                        stuck(running.task)
                        return
                    }
                }
            }
        }
        watcher.name = "ParallelVM.spin-watch"
        watcher.start()
    }

    /// The kernel's ID of the calling thread.
    private static func threadID() -> Int32? {
        var buffer = [CChar](repeating: 0, count: 64)
        let count = readlink("/proc/thread-self", &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        let link = String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return link.split(separator: "/").last.flatMap { Int32($0) }
    }

    /// CPU seconds (user plus system), system seconds and voluntary waits of a thread of this process.
    private static func usage(of thread: Int32, ticks: Double) -> (cpu: Double, system: Double, waits: Int)? {
        guard let stat = try? String(contentsOfFile: "/proc/self/task/\(thread)/stat", encoding: .utf8),
            let status = try? String(contentsOfFile: "/proc/self/task/\(thread)/status", encoding: .utf8),
            let end = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(after: end)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        let waits = status.split(separator: "\n").first { $0.hasPrefix("voluntary_ctxt_switches:") }
            .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) }
        guard let waits else { return nil }
        return ((user + system) / ticks, system / ticks, waits)
    }
}
