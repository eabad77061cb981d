import Foundation
import Testing

/// `vm.events` under mpirun (3 ranks): what one subscription sees of a task that returns, a task that traps,
/// and a dispatch, and what a subscription with a tiny buffer keeps.
@Suite(.serialized)
struct EventTests {
    /// The events of one run, as `sequence type rest` lines.
    struct Events {
        let lines: [(sequence: Int, type: String, rest: [String])]

        init(_ values: [String]) {
            lines = values.map { value in
                let fields = value.split(separator: " ").map(String.init)
                return (Int(fields[0]) ?? -1, fields.count > 1 ? fields[1] : "", Array(fields.dropFirst(2)))
            }
        }

        /// The types of the events about `task`, in order.
        func types(of task: String) -> [String] {
            lines.filter { line in
                switch line.type {
                case "slotBusy": line.rest.count > 1 && line.rest[1] == task
                case "slotFree": false
                default: line.rest.first == task
                }
            }.map(\.type)
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func eventsComeInOrderForResultsAndCrashes() throws {
        let output = try MPIRun.scenario("events.order", ranks: 3, timeout: 90)
        #expect(output.status == 0, "\(output)")
        #expect(output.value("error") == nil, "\(output)")
        let events = Events(output.values("event"))
        #expect(events.lines.count == 30, "\(output)")

        // Numbered in order, with the host first.
        let sequences = events.lines.map(\.sequence)
        #expect(sequences == sequences.sorted() && Set(sequences).count == sequences.count, "\(output)")
        #expect(events.lines.first?.type == "hostUp", "\(output)")
        #expect(events.lines.first?.rest.last == "0,1,2", "\(output)")

        // The task that returned, and the one that trapped (the second task of the run).
        #expect(events.types(of: "1:1") == ["slotBusy", "taskSpawned", "taskResult", "taskExit"], "\(output)")
        let crashed = events.lines.filter {
            $0.rest.first?.hasSuffix(":2") == true || ($0.type == "slotBusy" && $0.rest.last?.hasSuffix(":2") == true)
        }
        #expect(crashed.map(\.type) == ["slotBusy", "taskSpawned", "taskCrashed", "taskExit"], "\(output)")
        let crash = try #require(events.lines.first { $0.type == "taskCrashed" })
        #expect(crash.rest.joined(separator: " ").contains("SIGILL"), "\(output)")
        let spawn = try #require(events.lines.first { $0.type == "taskSpawned" && $0.rest.first == "1:1" })
        #expect(spawn.rest == ["1:1", "events.echo", "7"], "\(output)")

        // Each slot frees right after its task's exit.
        for (index, line) in events.lines.enumerated() where line.type == "taskExit" {
            let slot = line.rest[0].split(separator: ":")[0]
            #expect(events.lines[index + 1].type == "slotFree", "\(output)")
            #expect(events.lines[index + 1].rest == [String(slot)], "\(output)")
        }

        // Three dispatched jobs, each spawned, returned and exited, then the dispatch's progress.
        #expect(events.lines.filter { $0.type == "taskResult" }.count == 4, "\(output)")
        let progress = events.lines.filter { $0.type == "dispatchProgress" }.map { $0.rest.joined(separator: " ") }
        #expect(progress == ["1 3 false", "2 3 false", "3 3 false", "3 3 true"], "\(output)")

        // A two-event buffer keeps the newest two and counts the rest as dropped.
        #expect(Int(output.value("smallDropped") ?? "") == 28, "\(output)")
        let small = output.values("smallEvent")
        #expect(small.count == 2, "\(output)")
        #expect(small.last?.hasSuffix("dispatchProgress 3 3 true") == true, "\(output)")
    }

    @Test(.timeLimit(.minutes(2)))
    func storagePreparedCarriesFilesAndBytes() throws {
        let share = FileManager.default.temporaryDirectory.appendingPathComponent(
            "parallelvm-events-\(UUID().uuidString)"
        )
        let source = share.appendingPathComponent("inputs")
        let local = share.appendingPathComponent("local")
        try FileManager.default.createDirectory(at: source, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: local, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: share) }
        try Data("abc".utf8).write(to: source.appendingPathComponent("a.txt"))
        try Data("hello".utf8).write(to: source.appendingPathComponent("b.txt"))
        let output = try MPIRun.scenario(
            "events.storage",
            ranks: 2,
            arguments: [source.path],
            environment: ["PARALLEL_MIRRORED_STORAGE": share.path, "PARALLEL_LOCAL_STORAGE": local.path],
            timeout: 90
        )
        #expect(output.status == 0, "\(output)")
        #expect(output.value("storage") == "2 8 true", "\(output)")
        let types = Events(output.values("event")).types(of: "1:1")
        #expect(types == ["slotBusy", "taskSpawned", "storagePrepared", "taskResult", "taskExit"], "\(output)")
    }
}
