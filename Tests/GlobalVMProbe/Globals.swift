import Foundation
import ParallelVM

// The program's VM as a lazily initialized global, in a file other than main.swift: on a worker, the whole
// worker runs inside this global's initializer.
let vm: VM = {
    let isolation: Isolation =
        ProcessInfo.processInfo.environment["PROBE_ISOLATION"] == "inProcess" ? .inProcess : .process
    do {
        return try VM(functions: [touchesTheVM, double, busyInTheKernel], isolation: isolation)
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

/// Reads /dev/zero for `seconds` without ever waiting: busy, nearly all of it in the kernel, like the spin of
/// `touchesTheVM`, but not stuck. Returns the megabytes read.
let busyInTheKernel = RemoteFunction("probe.busyInTheKernel") { (seconds: Double, _: TaskContext) -> Int in
    let zero = open("/dev/zero", O_RDONLY)
    defer { close(zero) }
    var buffer = [UInt8](repeating: 1, count: 1 << 20)
    let end = Date().addingTimeInterval(seconds)
    var megabytes = 0
    while Date() < end {
        megabytes += read(zero, &buffer, buffer.count) == buffer.count ? 1 : 0
    }
    return megabytes
}
