import Foundation
import ParallelVM

// The program's VM as a lazily initialized global, in a file other than main.swift: on a worker, the whole
// worker runs inside this global's initializer.
let vm: VM = {
    let isolation: Isolation =
        ProcessInfo.processInfo.environment["PROBE_ISOLATION"] == "inProcess" ? .inProcess : .process
    do {
        return try VM(functions: [touchesTheVM, double], isolation: isolation)
    } catch {
        FileHandle.standardError.write(Data("vm-global-probe: \(error)\n".utf8))
        exit(1)
    }
}()

/// Uses the global VM inside a task, as a program might by mistake.
let touchesTheVM = RemoteFunction("probe.touchesTheVM") { (_: Int, _: TaskContext) -> Int in
    vm.freeSlots()
}

let double = RemoteFunction("probe.double") { (value: Int, _: TaskContext) -> Int in 2 * value }
