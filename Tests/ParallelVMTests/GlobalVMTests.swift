import Foundation
import Testing

/// A program whose VM is a lazily initialized global (vm-global-probe): on a worker the whole worker runs
/// inside the global's initializer, and a task that touches the global would wait for itself forever.
@Suite(.serialized)
struct GlobalVMTests {
    static func probe(isolation: String) throws -> RunOutput {
        let script = MPIRun.packageRoot.appendingPathComponent("scripts/mpirun.sh").path
        let program = MPIRun.productsDirectory.appendingPathComponent("vm-global-probe").path
        return try MPIRun.run(
            script,
            ["-n", "2", "-x", "PROBE_ISOLATION", program],
            environment: ["PROBE_ISOLATION": isolation],
            timeout: 60
        )
    }

    @Test func aTaskTouchingTheGlobalVMFailsWithAnErrorAndTheWorkerServesOn() throws {
        let output = try Self.probe(isolation: "process")
        #expect(!output.timedOut, "\(output)")
        #expect(output.status == 0, "\(output)")
        #expect(output.value("failed") == "true", "\(output)")
        #expect(output.value("code") == "true", "the error is not a VMError .notSpawner: \(output)")
        let message = output.value("message") ?? ""
        #expect(message.contains("task 1:1 ('probe.touchesTheVM')"), "\(output)")
        #expect(message.contains("touched a global whose initializer is still running"), "\(output)")
        #expect(message.contains("use the TaskContext the function receives"), "\(output)")
        // Failed within the 3 s watch, not after a timeout.
        #expect(Int(output.value("seconds") ?? "") ?? 99 <= 15, "\(output)")
        // A new task process runs the next task.
        #expect(output.value("next") == "42", "\(output)")
        // A task busy in the kernel for 6 s without waiting, but not spinning on the lock, is left alone.
        #expect(output.value("busy") == "finished", "\(output)")
    }

    @Test func inProcessTheErrorArrivesAndTheRunEndsInsteadOfHanging() throws {
        let output = try Self.probe(isolation: "inProcess")
        #expect(!output.timedOut, "\(output)")
        #expect(output.value("failed") == "true", "\(output)")
        #expect(output.value("code") == "true", "\(output)")
        #expect((output.value("message") ?? "").contains("touched a global whose initializer is still running"))
    }
}
