import Foundation
import ParallelVMExperiment
import ParallelVMStorage

/// Where a worker finds the folder of the experiment a task belongs to; it travels in the spawn settings
/// of an experiment's dispatch and with every job that collects outputs.
///
/// A folder inside a mirrored storage entry travels as the entry's index and the path below it, so a
/// host that mounts the shared disk elsewhere still finds it; any other folder travels as it is, and must
/// then be at the same path on every host.
struct ExperimentLocation: Codable, Sendable, Hashable {
    /// The experiment's name.
    var name: String
    /// The folder inside the mirrored storage, when it is in it.
    var mirrored: AbstractPath?
    /// The folder as the spawner sees it.
    var path: String

    /// The location of `experiment`, by this process's mirrored storage.
    init(_ experiment: Experiment) {
        name = experiment.name
        path = experiment.folder
        mirrored = try? MirroredStorage.ofThisProcess().abstractPath(for: experiment.folder)
    }

    /// The folder on this host.
    func localFolder(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
        guard let mirrored else { return path }
        return try MirroredStorage(environment: environment).localPath(for: mirrored)
    }
}
