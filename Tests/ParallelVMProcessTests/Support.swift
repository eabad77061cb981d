import Glibc
import ParallelVMProcess
import Synchronization
import Testing

/// Helpers every process test uses: where the probe is, spawning with quiet defaults, and waiting with a
/// bound so that a child that never ends fails the test instead of hanging the suite.
enum Support {
    /// The variable the probe reads its channel from (see `Tests/ProcessProbe/main.swift`).
    static let channelVariable = "VM_PROBE_CHANNEL"

    /// The probe executable, built next to the test bundle.
    static let probe: String = {
        var directory = realPath(CommandLine.arguments[0])
        while !directory.isEmpty && directory != "/" {
            directory = parent(of: directory)
            let candidate = directory + "/vm-process-probe"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return parent(of: realPath("/proc/self/exe")) + "/vm-process-probe"
    }()

    private static func realPath(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    private static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// The environment for children: this process's, without a Swift backtrace on crashes (it takes seconds
    /// and fills the standard error tail).
    static var environment: [String: String] {
        var environment = ChildProcess.currentEnvironment()
        environment["SWIFT_BACKTRACE"] = "enable=no"
        return environment
    }

    /// Runs `script` with `/bin/sh -c`.
    static func shell(
        _ script: String,
        standardOutput: ChildProcess.Output = .discard,
        workingDirectory: String? = nil
    ) throws -> ChildProcess {
        try ChildProcess.spawn(
            executable: "/bin/sh",
            arguments: ["sh", "-c", script],
            environment: environment,
            workingDirectory: workingDirectory,
            channelVariable: channelVariable,
            standardOutput: standardOutput,
            forwardStandardError: false
        )
    }

    /// Runs the probe with these arguments.
    static func probe(
        _ arguments: String...,
        memoryLimit: Int? = nil,
        sharedMemory: Bool = true
    ) throws
        -> ChildProcess
    {
        try ChildProcess.spawn(
            executable: probe,
            arguments: ["vm-process-probe"] + arguments,
            environment: environment,
            channelVariable: channelVariable,
            forwardStandardError: false,
            memoryLimit: memoryLimit,
            sharedMemory: sharedMemory
        )
    }

    struct Timeout: Error, CustomStringConvertible {
        var description: String
    }

    /// Waits for the child to end; after `limit`, kills it and fails.
    static func end(of child: ChildProcess, within limit: Duration = .seconds(20)) throws -> ProcessEnd {
        if let end = try child.wait(timeout: limit) { return end }
        child.killGroup()
        _ = try child.wait()
        throw Timeout(description: "process \(child.pid) did not end within \(limit)")
    }

    /// Whether a process no longer runs: gone, or a zombie nobody reaped yet.
    static func isGone(_ pid: Int32) -> Bool {
        ProcessStatus(pid: pid)?.isZombie ?? true
    }

    /// Polls until `condition` holds or `limit` passes; returns whether it held.
    static func eventually(within limit: Duration = .seconds(5), _ condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if condition() { return true }
            usleep(5_000)
        }
        return condition()
    }

    /// Live processes in a process group.
    static func liveMembers(ofGroup group: Int32) -> [ProcessStatus] {
        ProcessStatus.all().filter { $0.group == group && !$0.isZombie }
    }

    /// Reads one line from a descriptor, waiting at most `limit`.
    static func readLine(from fd: Int32, within limit: Duration = .seconds(10)) throws -> String {
        var line: [UInt8] = []
        let deadline = ContinuousClock.now + limit
        while true {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero, poll(&poller, 1, Int32(remaining.components.seconds * 1000 + 1)) > 0 else {
                throw Timeout(description: "no line on descriptor \(fd) within \(limit)")
            }
            var byte: UInt8 = 0
            guard read(fd, &byte, 1) == 1 else { return String(decoding: line, as: UTF8.self) }
            if byte == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
            line.append(byte)
        }
    }
}

/// A value shared between the threads of a test.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) { mutex = Mutex(value) }

    func withLock<Result: Sendable>(_ body: (inout Value) -> Result) -> Result { mutex.withLock { body(&$0) } }
}
