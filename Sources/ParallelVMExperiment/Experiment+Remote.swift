import Glibc
import ParallelVMStorage

extension Experiment {
    /// `collectOutputs(jobIndex:from:patterns:)` for a job that runs away from the process that has the
    /// experiment open (a worker's task): `folder` is the experiment folder as this host sees it. The
    /// copy is as atomic as there: staged in `outputs/`, synced, renamed into place; a copy cut short (the
    /// task killed) leaves only a staging folder, which the next `open()` removes.
    package static func collectOutputs(
        experiment: String,
        folder: String,
        jobIndex: Int,
        from taskFolder: String,
        patterns: [String]
    ) throws -> [String] {
        let outputsPath = Paths.join(folder, outputsName)
        let outputsFd = try SystemCall.value("open") { Glibc.open(outputsPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            .get("opened", experiment: experiment, path: outputsPath, subject: "outputs folder")
        defer { SystemCall.close(outputsFd) }
        let collector = OutputCollector(experiment: experiment, outputsFd: outputsFd, outputsPath: outputsPath)
        return try collector.collect(jobIndex: jobIndex, from: taskFolder, patterns: patterns)
    }

    /// Why `pattern` cannot name outputs of a job (empty, absolute, or climbing out with `..`), or nil when
    /// it can.
    package static func problem(withOutputPattern pattern: String) -> String? {
        Glob.components(pattern) == nil
            ? "is not a pattern inside the task folder (it is empty, absolute or climbs out with ..)" : nil
    }
}
