// Multi-rank test scenarios. The test suite runs `mpirun -n N vm-scenarios NAME [ARGS]` and asserts on the
// `key=value` lines a scenario prints and on the exit status of the run. Every rank runs this program;
// workers stay inside `VM(...)` and never reach the scenario code.

import Foundation
import ParallelVM
import Synchronization

/// A scenario runs on the spawner with the VM every scenario shares.
typealias Scenario = @Sendable (VM, [String]) throws -> Void

/// Prints one observation for the test to check, flushed at once so that a crash cannot lose it.
func report(_ key: String, _ value: Any) {
    print("\(key)=\(value)")
    fflush(nil)
}

let scenarios: [String: Scenario] = foundationScenarios.merging(dispatchScenarios) { first, _ in first }
    .merging(storageScenarios) { first, _ in first }
    .merging(logScenarios) { first, _ in first }
    .merging(edgeScenarios) { first, _ in first }
    .merging(faultScenarios) { first, _ in first }
    .merging(clusterScenarios) { first, _ in first }
    .merging(experimentScenarios) { first, _ in first }
    .merging(experimentTaskScenarios) { first, _ in first }
    .merging(eventScenarios) { first, _ in first }
    .merging(unsharedScenarios) { first, _ in first }
    .merging(localScenarios) { first, _ in first }
    .merging(directRouteScenarios) { first, _ in first }

let arguments = Array(CommandLine.arguments.dropFirst())
guard let name = arguments.first, let scenario = scenarios[name] else {
    FileHandle.standardError.write(
        Data("usage: vm-scenarios NAME [ARGS]; names: \(scenarios.keys.sorted().joined(separator: " "))\n".utf8)
    )
    exit(2)
}
if ProcessInfo.processInfo.environment["SCENARIO_LOG_CAPTURE"] != nil {
    LoggingSystem.bootstrap { _ in CapturingLogHandler() }
}
let debug = Int(ProcessInfo.processInfo.environment["SCENARIO_DEBUG"] ?? "0") ?? 0
let environment = ProcessInfo.processInfo.environment
let isolation: Isolation =
    environment["SCENARIO_ISOLATION"] == "inProcess"
    ? .inProcess : environment["SCENARIO_MEMORY_LIMIT"].flatMap(Int.init).map { .process(memoryLimit: $0) } ?? .process
let vm = try VM(
    functions: foundationFunctions + dispatchFunctions + storageFunctions + logFunctions + edgeFunctions
        + faultFunctions + clusterFunctions + experimentFunctions + experimentTaskFunctions + eventFunctions
        + unsharedFunctions + localFunctions + directRouteFunctions,
    debug: debug,
    isolation: isolation,
    setup: { setupRuns.withLock { $0 += 1 } }
)
try scenario(vm, Array(arguments.dropFirst()))
if ProcessInfo.processInfo.environment["SCENARIO_SKIP_FINALIZE"] == nil, !vm.isFinalized {
    try vm.finalize()
}
