import Foundation
import Glibc

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A run of the monitor demo (`demo-11-monitor`), started in the background with its output in files, so
/// that a test can talk to its monitor while it runs. Every run has a time limit: `finish` ends one that
/// overruns, and everything it started, so a hang fails the test instead of blocking it.
final class DemoRun: @unchecked Sendable, CustomStringConvertible {
    // Invariant for @unchecked Sendable: the stored properties are set in init and never changed; the
    // process is only waited for and signalled.
    static let packageRoot: URL = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { url.deleteLastPathComponent() }
        return url
    }()

    /// The folder holding the built products (the test bundle sits next to them).
    static let productsDirectory: URL = {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent()
        while directory.path != "/" {
            if FileManager.default.fileExists(atPath: directory.appendingPathComponent("demo-11-monitor").path) {
                return directory
            }
            directory.deleteLastPathComponent()
        }
        return packageRoot.appendingPathComponent(".build/debug")
    }()

    static var demo: String { productsDirectory.appendingPathComponent("demo-11-monitor").path }
    static var mpirun: String { packageRoot.appendingPathComponent("scripts/mpirun.sh").path }

    let process = Process()
    let folder: URL
    let marker = UUID().uuidString
    private let done = DispatchSemaphore(value: 0)
    private let started = Date()

    /// Starts `program arguments`: the demo under mpirun with `ranks` ranks (1: the demo alone), or any
    /// program given with `program`.
    init(ranks: Int = 3, _ arguments: [String], program: String? = nil, environment: [String: String] = [:]) throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent(
            "parallelvm-monitor-\(UUID().uuidString)"
        )
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        if let program {
            process.executableURL = URL(fileURLWithPath: program)
            process.arguments = arguments
        } else if ranks == 1 {
            process.executableURL = URL(fileURLWithPath: DemoRun.demo)
            process.arguments = arguments
        } else {
            process.executableURL = URL(fileURLWithPath: DemoRun.mpirun)
            process.arguments = ["-n", String(ranks), DemoRun.demo] + arguments
        }
        var env = ProcessInfo.processInfo.environment
        // The test process may itself run under a launcher; its variables must not reach the child.
        for key in env.keys where key.hasPrefix("OMPI_") || key.hasPrefix("PMIX_") || key.hasPrefix("PMI_") {
            env[key] = nil
        }
        env.merge(environment) { $1 }
        env["PARALLELVM_TEST_RUN"] = marker
        process.environment = env
        process.standardOutput = try FileHandle(forWritingTo: stdoutURL)
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        process.standardInput = FileHandle.nullDevice
        process.terminationHandler = { [done] _ in done.signal() }
        // A child inherits the signal mask of the thread that starts it: start it with none blocked.
        var none = sigset_t()
        var previous = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        try process.run()
    }

    var stdoutURL: URL { folder.appendingPathComponent("stdout") }
    var stderrURL: URL { folder.appendingPathComponent("stderr") }
    var stdout: String { (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }

    /// The monitor's address as the demo prints it (`Monitor: http://...`), with the host replaced by
    /// 127.0.0.1 (the demo may listen on every address).
    func monitorURL(timeout: Double = 60) throws -> URL {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let line = stdout.split(separator: "\n").first(where: { $0.hasPrefix("Monitor: ") }),
                var parts = URLComponents(string: String(line.dropFirst("Monitor: ".count)))
            {
                parts.host = "127.0.0.1"
                parts.query = nil
                if let url = parts.url { return url }
            }
            if !process.isRunning { break }
            usleep(50_000)
        }
        throw DemoFailure("the demo printed no monitor address within \(timeout) s\n\(self)")
    }

    /// Waits for the run to end (at most `timeout` seconds, then it is ended); returns its exit status and
    /// whether it had to be ended.
    func finish(timeout: Double) -> (status: Int32, timedOut: Bool) {
        var timedOut = false
        if done.wait(timeout: .now() + timeout) == .timedOut {
            timedOut = true
            kill(process.processIdentifier, SIGTERM)
            if done.wait(timeout: .now() + 5) == .timedOut {
                kill(process.processIdentifier, SIGKILL)
                done.wait()
            }
        }
        killProcesses()
        return (process.terminationStatus, timedOut)
    }

    /// SIGKILL to anything left with this run's marker in its environment.
    private func killProcesses() {
        let needle = Array("PARALLELVM_TEST_RUN=\(marker)".utf8)
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid != getpid(),
                let environment = FileManager.default.contents(atPath: "/proc/\(entry)/environ")
            else { continue }
            if environment.split(separator: 0).contains(where: { Array($0) == needle }) { kill(pid, SIGKILL) }
        }
    }

    var description: String {
        "after \(String(format: "%.1f", Date().timeIntervalSince(started))) s\n--- stdout\n\(stdout)--- stderr\n\(stderr)"
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: folder)
    }
}

struct DemoFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// An HTTP answer: status and body.
struct HTTPAnswer {
    let status: Int
    let body: String
    var json: Any? { try? JSONSerialization.jsonObject(with: Data(body.utf8)) }
}

/// One HTTP request to the monitor, with a time limit.
func request(_ url: URL, method: String = "GET", headers: [String: String] = [:]) async throws -> HTTPAnswer {
    var request = URLRequest(url: url, timeoutInterval: 10)
    request.httpMethod = method
    for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
    let (data, response) = try await URLSession.shared.data(for: request)
    return HTTPAnswer(
        status: (response as? HTTPURLResponse)?.statusCode ?? 0,
        body: String(decoding: data, as: UTF8.self)
    )
}

/// Runs `body` every 100 ms until it returns a value, for at most `timeout` seconds.
func poll<T>(timeout: Double, _ body: () async throws -> T?) async throws -> T? {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if let value = try await body() { return value }
        try await Task.sleep(for: .milliseconds(100))
    }
    return nil
}
