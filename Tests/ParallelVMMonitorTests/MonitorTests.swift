import Foundation
import Testing

/// The monitor served for real by `demo-11-monitor` under mpirun (3 ranks: two worker slots).
@Suite(.serialized)
struct MonitorTests {
    @Test(.timeLimit(.minutes(2)))
    func statusShowsTheHostsAndARunningTask() async throws {
        let run = try DemoRun(["--port", "0", "--jobs", "6", "--job-seconds", "1", "--print-every", "0"])
        let base = try run.monitorURL()
        let status = try await poll(timeout: 30) { () -> [String: Any]? in
            let answer = try await request(base.appendingPathComponent("api/status"))
            guard answer.status == 200, let status = answer.json as? [String: Any],
                let running = status["running"] as? [[String: Any]], !running.isEmpty
            else { return nil }
            return status
        }
        let found = try #require(status, "no running task in /api/status\n\(run)")
        let hosts = try #require(found["hosts"] as? [[String: Any]])
        #expect(hosts.count == 1)
        #expect((hosts.first?["name"] as? String)?.isEmpty == false)
        #expect(hosts.first?["slots"] as? Int == 2)
        #expect((hosts.first?["busy"] as? Int ?? 0) >= 1)
        let tasks = try #require(found["tasks"] as? [String: Any])
        #expect((tasks["running"] as? Int ?? 0) >= 1)
        #expect((tasks["submitted"] as? Int ?? 0) >= (tasks["running"] as? Int ?? 0))
        #expect(tasks["done"] is Int)
        let task = try #require((found["running"] as? [[String: Any]])?.first)
        #expect(task["function"] as? String == "monitor-demo.work")
        #expect((task["arguments"] as? String)?.hasPrefix("job ") == true)
        #expect(task["host"] as? String == hosts.first?["name"] as? String)

        // The events so far: the host first, then a spawn.
        let events = try await request(base.appendingPathComponent("api/events"))
        let types = (events.json as? [[String: Any]])?.compactMap { $0["type"] as? String } ?? []
        #expect(types.first == "hostUp")
        #expect(types.contains("taskSpawned"))

        // The metrics parse as Prometheus text and show the running task.
        let metrics = try await request(base.appendingPathComponent("metrics"))
        #expect(metrics.status == 200)
        let samples = try PrometheusText.parse(metrics.body)
        #expect(!samples.isEmpty)
        #expect(samples.allSatisfy { $0.name.hasPrefix("parallelvm_") })
        #expect((samples.first { $0.name == "parallelvm_tasks_running" }?.value ?? 0) >= 1)
        #expect(samples.first { $0.name == "parallelvm_host_slots" }?.value == 2)
        #expect(samples.first { $0.name == "parallelvm_host_slots" }?.labels["host"] == hosts.first?["name"] as? String)

        // A kill of a task that does not run is refused with the reason.
        let refused = try await request(base.appendingPathComponent("api/tasks/1:999/kill"), method: "POST")
        #expect(refused.status == 409)
        #expect(refused.body.contains("not running"))
        let malformed = try await request(base.appendingPathComponent("api/tasks/seven/kill"), method: "POST")
        #expect(malformed.status == 400)
        #expect(malformed.body.contains("'seven' is not a task ID"))

        let end = run.finish(timeout: 60)
        #expect(end.status == 0 && !end.timedOut, "\(run)")
        #expect(run.stdout.contains("Done: 6 succeeded, 0 failed"), "\(run)")
    }

    @Test(.timeLimit(.minutes(1)))
    func listeningOffLoopbackWithoutATokenIsRefused() throws {
        let run = try DemoRun(ranks: 1, ["--host", "0.0.0.0", "--port", "0", "--jobs", "1"])
        let end = run.finish(timeout: 30)
        #expect(end.status == 1 && !end.timedOut, "\(run)")
        #expect(run.stderr.contains("refusing to listen on '0.0.0.0' without a token"), "\(run)")
        #expect(!run.stdout.contains("Monitor: "), "\(run)")
    }

    @Test(.timeLimit(.minutes(1)))
    func withATokenTheAPIAndKillNeedIt() async throws {
        let run = try DemoRun(
            ranks: 1,
            [
                "--host", "0.0.0.0", "--port", "0", "--token", "s3cret", "--jobs", "1", "--job-seconds", "0",
                "--linger", "20",
            ]
        )
        let base = try run.monitorURL()
        let status = base.appendingPathComponent("api/status")
        let withoutToken = try await request(status)
        #expect(withoutToken.status == 401)
        #expect(withoutToken.body.contains("needs its token"))
        let wrongToken = try await request(status, headers: ["Authorization": "Bearer guess"])
        #expect(wrongToken.status == 401)
        let killAnswer = try await request(base.appendingPathComponent("api/tasks/1:1/kill"), method: "POST")
        #expect(killAnswer.status == 401)
        #expect(try await request(base.appendingPathComponent("metrics")).status == 401)
        #expect(try await request(base).status == 401)
        #expect(try await request(status, headers: ["Authorization": "Bearer s3cret"]).status == 200)
        var query = URLComponents(url: status, resolvingAgainstBaseURL: false)!
        query.queryItems = [URLQueryItem(name: "token", value: "s3cret")]
        #expect(try await request(query.url!).status == 200)
        kill(run.process.processIdentifier, SIGTERM)
        _ = run.finish(timeout: 20)
    }

    static let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// In CI chromium is installed by `.ci/run`; elsewhere the test runs when it is there.
    @Test(
        .timeLimit(.minutes(3)),
        .enabled(if: chromium != nil || ProcessInfo.processInfo.environment["CI"] != nil, "needs chromium")
    )
    func aBrowserSeesATaskKillsItAndSeesItKilled() throws {
        let chromium = try #require(MonitorTests.chromium, "chromium is not installed (apt-get install chromium)")
        // The monitor stays up a while after the dispatch, so that the page can show it finished.
        let run = try DemoRun([
            "--port", "0", "--jobs", "2", "--job-seconds", "60", "--print-every", "1", "--linger", "10",
        ])
        let base = try run.monitorURL()
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("browser.py")
        let browser = try DemoRun(
            ["python3", script.path, chromium, base.appendingPathComponent("tasks").absoluteString, "90"],
            program: "/usr/bin/env"
        )
        let browserEnd = browser.finish(timeout: 120)
        #expect(browserEnd.status == 0 && !browserEnd.timedOut, "\(browser)\n--- the demo:\n\(run)")
        let lines = browser.stdout.split(separator: "\n").map(String.init)
        let seen = lines.first { $0.hasPrefix("seen=") }?.dropFirst(5)
        #expect(seen != nil, "\(browser)")
        #expect(lines.contains("killed=\(seen ?? "")"), "\(browser)")
        #expect(lines.contains("finished=1"), "\(browser)")
        // Both jobs were killed from the page, so the dispatch ends long before the jobs would have.
        let end = run.finish(timeout: 30)
        #expect(end.status == 0 && !end.timedOut, "\(run)")
        #expect(run.stdout.contains("Done: 0 succeeded, 2 failed"), "\(run)")
    }
}

/// The progress line of a dispatch under mpirun.
@Suite(.serialized)
struct ProgressLineTests {
    static let arguments = ["--port", "0", "--jobs", "20", "--job-seconds", "0.2", "--print-every", "4"]

    /// `script` gives mpirun a pseudo-terminal as its controlling terminal, as when run from a shell.
    @Test(.timeLimit(.minutes(2)))
    func drawsOnTheTerminalAndKeepsOutputApart() throws {
        let command = ([DemoRun.mpirun, "-n", "3", DemoRun.demo] + ProgressLineTests.arguments).joined(separator: " ")
        let run = try DemoRun(["-qfec", command, "/dev/null"], program: "/usr/bin/script")
        let end = run.finish(timeout: 90)
        #expect(end.status == 0 && !end.timedOut, "\(run)")
        let raw = run.stdout
        // Drawn in place, more than once, and finished at 20 of 20.
        #expect(raw.components(separatedBy: "\r20/20 jobs (100%)").count > 1, "\(run)")
        #expect(raw.components(separatedBy: " jobs (").count > 3, "\(run)")
        let screen = TerminalScreen.render(raw)
        // Every line the collector printed stands alone on the screen: no progress text runs into it.
        let collected = screen.filter { $0.contains("job ") && $0.contains(" gave ") }
        #expect(collected.count == 5, "\(screen)")
        for line in collected {
            #expect(line.range(of: #"^job \d+ gave \d+ on \S+$"#, options: .regularExpression) != nil, "\(line)")
        }
        #expect(screen.contains { $0.hasPrefix("20/20 jobs (100%)") }, "\(screen)")
        #expect(screen.contains("Done: 20 succeeded, 0 failed"), "\(screen)")
    }

    /// Without a terminal (no controlling terminal, output in files) nothing is drawn unless asked.
    @Test(.timeLimit(.minutes(2)))
    func staysOffWithoutATerminalUnlessForced() throws {
        let plain = try DemoRun(
            ["--wait", DemoRun.mpirun, "-n", "3", DemoRun.demo] + ProgressLineTests.arguments,
            program: "/usr/bin/setsid"
        )
        let plainEnd = plain.finish(timeout: 90)
        #expect(plainEnd.status == 0 && !plainEnd.timedOut, "\(plain)")
        #expect(!plain.stderr.contains(" jobs ("), "\(plain)")
        #expect(!plain.stdout.contains("\r"), "\(plain)")

        let forced = try DemoRun(
            ["--wait", DemoRun.mpirun, "-n", "3", DemoRun.demo] + ProgressLineTests.arguments,
            program: "/usr/bin/setsid",
            environment: ["PARALLELVM_PROGRESS": "1"]
        )
        let forcedEnd = forced.finish(timeout: 90)
        #expect(forcedEnd.status == 0 && !forcedEnd.timedOut, "\(forced)")
        #expect(forced.stderr.contains("\r20/20 jobs (100%)"), "\(forced)")
    }
}

/// What a terminal shows for some output: `\r` returns to the line's start, `ESC[K` clears to its end,
/// other characters overwrite.
enum TerminalScreen {
    static func render(_ output: String) -> [String] {
        var lines: [String] = []
        var line: [Character] = []
        var column = 0
        var characters = Array(output)[...]
        while let character = characters.popFirst() {
            switch character {
            case "\n", "\r\n":
                lines.append(String(line))
                line = []
                column = 0
            case "\r":
                column = 0
            case "\u{1B}":
                // A CSI sequence: ESC [ parameters final-byte; only K (erase to end of line) matters here.
                guard characters.first == "[" else { continue }
                characters.removeFirst()
                while let next = characters.popFirst() {
                    if next.isLetter {
                        if next == "K" { line.removeSubrange(min(column, line.count)...) }
                        break
                    }
                }
            default:
                if column < line.count { line[column] = character } else { line.append(character) }
                column += 1
            }
        }
        if !line.isEmpty { lines.append(String(line)) }
        return lines
    }
}

/// A strict enough reader of the Prometheus text format (0.0.4): `# HELP` and `# TYPE` comments, then
/// samples `name{label="value",...} number`, each family's TYPE before its samples.
enum PrometheusText {
    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    static func parse(_ text: String) throws -> [Sample] {
        var samples: [Sample] = []
        var typed: [String: String] = [:]
        let name = #"^[a-zA-Z_:][a-zA-Z0-9_:]*$"#
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = String(line)
            if line.isEmpty { continue }
            if line.hasPrefix("#") {
                let fields = line.split(separator: " ", maxSplits: 3).map(String.init)
                guard fields.count >= 3, fields[0] == "#", fields[2].range(of: name, options: .regularExpression) != nil
                else {
                    throw Malformed(description: "line \(number + 1): bad comment '\(line)'")
                }
                if fields[1] == "TYPE" {
                    guard fields.count == 4,
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(fields[3]),
                        typed[fields[2]] == nil
                    else { throw Malformed(description: "line \(number + 1): bad TYPE '\(line)'") }
                    typed[fields[2]] = fields[3]
                }
                continue
            }
            var rest = line[...]
            let nameEnd = rest.firstIndex { $0 == "{" || $0 == " " } ?? rest.endIndex
            let sampleName = String(rest[..<nameEnd])
            guard sampleName.range(of: name, options: .regularExpression) != nil else {
                throw Malformed(description: "line \(number + 1): bad metric name in '\(line)'")
            }
            guard typed[sampleName] != nil else {
                throw Malformed(description: "line \(number + 1): \(sampleName) has no TYPE before it")
            }
            rest = rest[nameEnd...]
            var labels: [String: String] = [:]
            if rest.first == "{" {
                rest.removeFirst()
                while rest.first != "}" {
                    guard let equals = rest.firstIndex(of: "=") else {
                        throw Malformed(description: "line \(number + 1): bad labels in '\(line)'")
                    }
                    let key = String(rest[..<equals])
                    rest = rest[rest.index(after: equals)...]
                    guard rest.first == "\"" else { throw Malformed(description: "line \(number + 1): unquoted label") }
                    rest.removeFirst()
                    var value = ""
                    while let character = rest.popFirst(), character != "\"" {
                        if character == "\\", let escaped = rest.popFirst() {
                            value.append(escaped == "n" ? "\n" : escaped)
                        } else {
                            value.append(character)
                        }
                    }
                    labels[key] = value
                    if rest.first == "," { rest.removeFirst() }
                    guard !rest.isEmpty else { throw Malformed(description: "line \(number + 1): unclosed labels") }
                }
                rest.removeFirst()
            }
            guard rest.first == " ", let value = Double(rest.dropFirst().split(separator: " ").first ?? "") else {
                throw Malformed(description: "line \(number + 1): bad value in '\(line)'")
            }
            samples.append(Sample(name: sampleName, labels: labels, value: value))
        }
        return samples
    }
}
