import Foundation
import Glibc
import Testing

@testable import ParallelVMExperiment

@Suite("Output collection: globs, atomic publishing, symlinks, failures")
struct OutputTests {
    /// An open experiment and a task folder with some files.
    private func fixture() throws -> (TemporaryFolder, Experiment, String) {
        let root = try TemporaryFolder()
        let experiment = try Experiment(name: "e", in: root.sub("experiments"))
        try experiment.open()
        try root.write("task/result.txt", "result")
        try root.write("task/notes.txt", "notes")
        try root.write("task/data/a.bin", "a")
        try root.write("task/data/deep/b.bin", "b")
        try root.write("task/.hidden.txt", "hidden")
        try root.write("secret", "outside the task folder")
        return (root, experiment, root.sub("task"))
    }

    private func listing(_ folder: String) throws -> [String] {
        guard let enumerator = FileManager.default.enumerator(atPath: folder) else { return [] }
        return (enumerator.allObjects as? [String] ?? []).sorted()
    }

    @Test("patterns copy matching files and folders into outputs/<job>/, keeping their paths")
    func collects() throws {
        let (root, experiment, task) = try fixture()
        defer { try? experiment.close() }
        let collected = try experiment.collectOutputs(
            jobIndex: 7,
            from: task,
            patterns: ["*.txt", "data/deep/*.bin", "missing*"]
        )
        #expect(collected == ["data/deep/b.bin", "notes.txt", "result.txt"])
        let job = experiment.outputsFolder + "/7"
        #expect(try listing(job) == ["data", "data/deep", "data/deep/b.bin", "notes.txt", "result.txt"])
        #expect(try String(contentsOfFile: job + "/result.txt", encoding: .utf8) == "result")

        #expect(try experiment.collectOutputs(jobIndex: 8, from: task, patterns: ["data", "data/a.bin"]) == ["data"])
        #expect(try listing(experiment.outputsFolder + "/8") == ["data", "data/a.bin", "data/deep", "data/deep/b.bin"])
        #expect(
            try experiment.collectOutputs(jobIndex: 9, from: task, patterns: ["**/*.bin"]) == [
                "data/a.bin", "data/deep/b.bin",
            ]
        )
        #expect(try experiment.collectOutputs(jobIndex: 10, from: task, patterns: [".hidden.txt"]) == [".hidden.txt"])
        // Nothing matched still publishes an (empty) folder: the collection is done.
        #expect(try experiment.collectOutputs(jobIndex: 11, from: task, patterns: ["nothing"]) == [])
        #expect(try listing(experiment.outputsFolder + "/11") == [])
        _ = root
    }

    @Test(
        "patterns that leave the task folder are refused",
        arguments: ["/etc/passwd", "../secret", "data/../../secret", ""]
    )
    func escapingPatterns(pattern: String) throws {
        let (root, experiment, task) = try fixture()
        defer { try? experiment.close() }
        let error = try #require(throws: ExperimentError.self) {
            try experiment.collectOutputs(jobIndex: 1, from: task, patterns: [pattern])
        }
        #expect(error.code == .invalidPattern)
        #expect(!FileManager.default.fileExists(atPath: experiment.outputsFolder + "/1"))
        _ = root
    }

    @Test("symbolic links are copied as links and never followed out of the task folder")
    func symlinks() throws {
        let (root, experiment, task) = try fixture()
        defer { try? experiment.close() }
        try FileManager.default.createSymbolicLink(atPath: task + "/leak", withDestinationPath: root.sub("secret"))
        try FileManager.default.createSymbolicLink(atPath: task + "/outside", withDestinationPath: root.path)
        let collected = try experiment.collectOutputs(
            jobIndex: 1,
            from: task,
            patterns: ["leak", "outside/secret", "outside/*"]
        )
        #expect(collected == ["leak"])
        let copied = experiment.outputsFolder + "/1/leak"
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: copied) == root.sub("secret"))
        #expect(try listing(experiment.outputsFolder + "/1") == ["leak"])
    }

    @Test("nothing is at outputs/<job> until the rename; then all of it is")
    func atomicPublish() throws {
        let (root, experiment, task) = try fixture()
        defer { try? experiment.close() }
        let job = experiment.outputsFolder + "/3"
        var sawStaging = false
        _ = try experiment.collectOutputs(jobIndex: 3, from: task, patterns: ["*.txt", "data"]) { () throws in
            #expect(!FileManager.default.fileExists(atPath: job))
            let entries = try FileManager.default.contentsOfDirectory(atPath: experiment.outputsFolder)
            sawStaging = entries.contains { $0.hasPrefix(".staging-3-") }
        }
        #expect(sawStaging)
        #expect(try listing(job).count == 6)
        #expect(try FileManager.default.contentsOfDirectory(atPath: experiment.outputsFolder) == ["3"])
        _ = root
    }

    @Test("collecting again replaces the old outputs in one step; a reader sees old or new, never a mix")
    func replaces() throws {
        let (root, experiment, task) = try fixture()
        defer { try? experiment.close() }
        _ = try experiment.collectOutputs(jobIndex: 2, from: task, patterns: ["result.txt"])
        let job = experiment.outputsFolder + "/2"
        try root.write("task/result.txt", "second")
        _ = try experiment.collectOutputs(jobIndex: 2, from: task, patterns: ["result.txt", "notes.txt"]) { () throws in
            // Before the swap the old outputs are complete and untouched.
            #expect(try listing(job) == ["result.txt"])
            #expect(try String(contentsOfFile: job + "/result.txt", encoding: .utf8) == "result")
        }
        #expect(try listing(job) == ["notes.txt", "result.txt"])
        #expect(try String(contentsOfFile: job + "/result.txt", encoding: .utf8) == "second")
        #expect(try FileManager.default.contentsOfDirectory(atPath: experiment.outputsFolder) == ["2"])
    }

    @Test("a copy that fails half way leaves no outputs/<job> and no staging folder, and names the path")
    func failedCopy() throws {
        let (root, experiment, task) = try fixture()
        defer { try? experiment.close() }
        try root.write("task/zz-unreadable.txt", "x")
        chmod(task + "/zz-unreadable.txt", 0)
        defer { chmod(task + "/zz-unreadable.txt", 0o644) }
        if getuid() == 0 {
            // Root reads anything: fail from the hook instead, after everything was staged.
            struct Injected: Error {}
            #expect(throws: Injected.self) {
                try experiment.collectOutputs(jobIndex: 4, from: task, patterns: ["*.txt"]) { throw Injected() }
            }
        } else {
            let error = try #require(throws: ExperimentError.self) {
                try experiment.collectOutputs(jobIndex: 4, from: task, patterns: ["*.txt"])
            }
            #expect(error.path == task + "/zz-unreadable.txt")
            #expect(error.description.contains("Permission denied"))
        }
        #expect(!FileManager.default.fileExists(atPath: experiment.outputsFolder + "/4"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: experiment.outputsFolder) == [])
    }

    @Test("a missing task folder is an error naming it")
    func missingTaskFolder() throws {
        let (root, experiment, _) = try fixture()
        defer { try? experiment.close() }
        let error = try #require(throws: ExperimentError.self) {
            try experiment.collectOutputs(jobIndex: 1, from: root.sub("nope"), patterns: ["*"])
        }
        #expect(error.path == root.sub("nope"))
        #expect(error.description.contains("No such file"))
    }

    @Test("staging folders a crash left behind are removed when the experiment opens again")
    func leftovers() throws {
        let (root, experiment, _) = try fixture()
        try experiment.close()
        try root.write("experiments/e/outputs/.staging-5-abc/half.txt", "half")
        try root.write("experiments/e/outputs/5/whole.txt", "whole")
        try experiment.open()
        defer { try? experiment.close() }
        #expect(try FileManager.default.contentsOfDirectory(atPath: experiment.outputsFolder) == ["5"])
    }
}
