import Foundation
import Glibc

/// What one run of a program produced.
struct RunOutput: CustomStringConvertible {
    let status: Int32
    let stdout: String
    let stderr: String
    let timedOut: Bool
    let seconds: Double

    /// The values of `key=value` pairs printed on lines that start with `prefix`, in order.
    func values(_ key: String) -> [String] {
        stdout.split(separator: "\n").compactMap { line in
            guard line.hasPrefix(key + "=") else { return nil }
            return String(line.dropFirst(key.count + 1))
        }
    }

    /// The single value printed for `key`, or nil.
    func value(_ key: String) -> String? { values(key).last }

    var description: String {
        "status \(status)\(timedOut ? " (timed out)" : "") after \(String(format: "%.1f", seconds)) s\n--- stdout\n\(stdout)--- stderr\n\(stderr)"
    }
}

/// Launches real multi-rank runs of the test scenarios under mpirun, with a time limit.
enum MPIRun {
    /// The package root, found from this file's path.
    static let packageRoot: URL = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { url.deleteLastPathComponent() }
        return url
    }()

    /// The folder holding the built products (the test bundle sits next to them).
    static let productsDirectory: URL = {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var directory = bundle.deletingLastPathComponent()
        while directory.path != "/" {
            if FileManager.default.fileExists(atPath: directory.appendingPathComponent("vm-scenarios").path) {
                return directory
            }
            directory.deleteLastPathComponent()
        }
        return packageRoot.appendingPathComponent(".build/debug")
    }()

    static var scenarios: String { productsDirectory.appendingPathComponent("vm-scenarios").path }

    /// Runs `vm-scenarios SCENARIO ARGS` with `ranks` processes (1: without mpirun).
    static func scenario(
        _ name: String,
        ranks: Int,
        arguments: [String] = [],
        environment: [String: String] = [:],
        mpirunOptions: [String] = [],
        timeout: Double = 60,
        currentDirectory: URL? = nil
    ) throws -> RunOutput {
        if ranks == 1 && mpirunOptions.isEmpty {
            return try run(
                scenarios,
                [name] + arguments,
                environment: environment,
                timeout: timeout,
                currentDirectory: currentDirectory
            )
        }
        let script = packageRoot.appendingPathComponent("scripts/mpirun.sh").path
        return try run(
            script,
            ["-n", String(ranks)] + mpirunOptions + [scenarios, name] + arguments,
            environment: environment,
            timeout: timeout
        )
    }

    /// Runs `vm-scenarios SCENARIO ARGS` with one rank per entry of `ranks`, each with its own environment
    /// (mpirun's `-x` in the `:` multi-program syntax): rank 0 gets `ranks[0]`, and so on.
    static func scenario(
        _ name: String,
        rankEnvironments ranks: [[String: String]],
        arguments: [String] = [],
        timeout: Double = 60
    ) throws -> RunOutput {
        var options: [String] = []
        for (index, environment) in ranks.enumerated() {
            if index > 0 { options.append(":") }
            options += ["-n", "1"]
            for (key, value) in environment.sorted(by: { $0.key < $1.key }) { options += ["-x", "\(key)=\(value)"] }
            options += [scenarios, name] + arguments
        }
        let script = packageRoot.appendingPathComponent("scripts/mpirun.sh").path
        return try run(script, options, timeout: timeout)
    }

    /// Runs a program with a time limit, in `currentDirectory` when given. On timeout mpirun gets SIGTERM (it then ends every rank); any process
    /// still carrying this run's marker in its environment a few seconds later gets SIGKILL, so a hang fails
    /// the test instead of blocking it and leaves nothing behind.
    static func run(
        _ program: String,
        _ arguments: [String],
        environment: [String: String] = [:],
        timeout: Double,
        currentDirectory: URL? = nil,
        during: (@Sendable (_ pid: Int32, _ marker: String, _ stdout: URL) -> Void)? = nil
    ) throws -> RunOutput {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "parallelvm-run-\(UUID().uuidString)"
        )
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let outURL = directory.appendingPathComponent("stdout")
        let errURL = directory.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let out = try FileHandle(forWritingTo: outURL)
        let err = try FileHandle(forWritingTo: errURL)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        if let currentDirectory { process.currentDirectoryURL = currentDirectory }
        var env = ProcessInfo.processInfo.environment
        // The test process itself may run under a launcher; its ranks' variables must not leak into the child.
        for key in env.keys where key.hasPrefix("OMPI_COMM_WORLD") || key.hasPrefix("PMIX_") || key.hasPrefix("PMI_") {
            env[key] = nil
        }
        env.merge(environment) { $1 }
        let marker = UUID().uuidString
        env["PARALLELVM_TEST_RUN"] = marker
        process.environment = env
        process.standardOutput = out
        process.standardError = err
        let done = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in done.signal() }
        let start = Date()
        // The test runner's threads block most signals, and a child inherits the mask of the thread that
        // starts it: start the run with none blocked, as from a shell, so that it can be interrupted.
        var none = sigset_t()
        var previous = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        try process.run()
        if let during {
            let pid = process.processIdentifier
            Thread.detachNewThread { during(pid, marker, outURL) }
        }
        var timedOut = false
        if done.wait(timeout: .now() + timeout) == .timedOut {
            timedOut = true
            kill(process.processIdentifier, SIGTERM)
            if done.wait(timeout: .now() + 5) == .timedOut {
                kill(process.processIdentifier, SIGKILL)
                done.wait()
            }
            killProcesses(marked: marker)
        }
        try out.close()
        try err.close()
        return RunOutput(
            status: process.terminationStatus,
            stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "",
            timedOut: timedOut,
            seconds: Date().timeIntervalSince(start)
        )
    }

    /// Sends SIGKILL to every process whose environment holds `PARALLELVM_TEST_RUN=marker`.
    static func killProcesses(marked marker: String) {
        let needle = Array("PARALLELVM_TEST_RUN=\(marker)".utf8)
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let pid = Int32(entry), pid != getpid(),
                let environment = FileManager.default.contents(atPath: "/proc/\(entry)/environ")
            else { continue }
            let found = environment.split(separator: 0).contains { Array($0) == needle }
            if found { kill(pid, SIGKILL) }
        }
    }

    /// Whether a live process runs with exactly this command line (zombies and this process excluded).
    static func processesRunning(commandLine: [String]) -> Bool {
        let wanted = commandLine.map { Array($0.utf8) }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let pid = Int32(entry), pid != getpid(),
                let line = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline"),
                let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8)
            else { continue }
            let state = stat.split(separator: ")").last?.split(separator: " ").first
            guard state != "Z" else { continue }
            if line.split(separator: 0).map(Array.init) == wanted { return true }
        }
        return false
    }

    /// The live processes whose environment holds `PARALLELVM_TEST_RUN=marker` (zombies excluded).
    static func processes(marked marker: String) -> [Int32] {
        let needle = Array("PARALLELVM_TEST_RUN=\(marker)".utf8)
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry in
            guard let pid = Int32(entry), pid != getpid(),
                let environment = FileManager.default.contents(atPath: "/proc/\(entry)/environ"),
                let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                stat.split(separator: ")").last?.split(separator: " ").first != "Z"
            else { return nil }
            return environment.split(separator: 0).contains { Array($0) == needle } ? pid : nil
        }
    }

    /// Waits until the file at `url` holds a line starting with `prefix`; returns that line's value.
    static func waitForLine(_ prefix: String, in url: URL, timeout: Double) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let text = try? String(contentsOf: url, encoding: .utf8),
                let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) })
            {
                return String(line.dropFirst(prefix.count))
            }
            usleep(20_000)
        }
        return nil
    }

    /// The processes whose parent is `pid`.
    static func childProcesses(of pid: Int32) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry in
            guard let child = Int32(entry),
                let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let fields = stat.split(separator: ")").last?.split(separator: " "), fields.count > 2,
                Int32(fields[1]) == pid
            else { return nil }
            return child
        }
    }
}
