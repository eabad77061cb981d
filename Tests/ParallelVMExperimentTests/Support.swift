import Foundation
import Glibc
import Testing

@testable import ParallelVMExperiment

/// A temporary parent folder for experiments, removed when the test ends.
final class TemporaryFolder {
    let path: String

    init() throws {
        path =
            FileManager.default.temporaryDirectory.appendingPathComponent("parallelvm-experiment-\(UUID().uuidString)")
            .path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func sub(_ relative: String) -> String { path + "/" + relative }

    /// Writes a file (and its folders).
    func write(_ relative: String, _ text: String) throws {
        let url = URL(fileURLWithPath: sub(relative))
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: url)
    }
}

enum Support {
    /// A record for job `index`.
    static func record(
        _ index: Int,
        key: UInt64? = nil,
        success: Bool = true,
        value: [UInt8]? = nil,
        task: String = "1:1"
    ) -> JournalRecord {
        JournalRecord(
            index: index,
            key: JobKey(value: key ?? UInt64(index) &* 0x9E37_79B9_7F4A_7C15),
            outcome: success
                ? .success(typeName: "Swift.Int", value: value ?? Array("value \(index)".utf8))
                : .failure(typeName: "Demo.Failure", message: "job \(index) failed"),
            attempts: 1,
            host: "host-a",
            task: task,
            started: Date(timeIntervalSince1970: 1_700_000_000 + Double(index)),
            ended: Date(timeIntervalSince1970: 1_700_000_000.5 + Double(index))
        )
    }

    static func fileSize(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : -1
    }

    static func truncate(_ path: String, to size: Int) {
        #expect(Glibc.truncate(path, off_t(size)) == 0)
    }

    static func readBytes(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }

    static func writeBytes(_ path: String, _ bytes: [UInt8]) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// The probe executable, built next to the test bundle.
    static let probe: String = {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent()
        while directory.path != "/" {
            let candidate = directory.appendingPathComponent("vm-experiment-probe").path
            if access(candidate, X_OK) == 0 { return candidate }
            directory.deleteLastPathComponent()
        }
        return URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("vm-experiment-probe").path
    }()

    /// Starts the probe holding experiment `name` in `parent`; returns once it says "open" (or the error).
    static func startProbe(parent: String, name: String) throws -> (process: Process, firstLine: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: probe)
        process.arguments = [parent, name]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        var line: [UInt8] = []
        let fd = pipe.fileHandleForReading.fileDescriptor
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 100) >= 0 else { break }
            if poller.revents == 0 { continue }
            var byte: UInt8 = 0
            guard read(fd, &byte, 1) == 1, byte != UInt8(ascii: "\n") else { break }
            line.append(byte)
        }
        return (process, String(decoding: line, as: UTF8.self))
    }

    /// Polls until `condition` holds or `limit` seconds pass.
    static func eventually(within limit: Double = 10, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(limit)
        while Date() < deadline {
            if condition() { return true }
            usleep(10_000)
        }
        return condition()
    }
}
