// Measures message delay and throughput between the spawner and a bounce-back task for payloads from
// 0 bytes to 10 MB (PyOPUS demo/parallel/vm/03-messaging.py). The payload is a byte array, which the VM
// sends without encoding or copying it into a frame.
//
//   scripts/run-demo.sh 03-messaging 2

import Foundation
import ParallelVM

/// Sends every byte array it receives back to its sender, until it receives a string.
let bounce = RemoteFunction("bounce") { (_: Int, task: TaskContext) -> Int in
    var count = 0
    while let (source, message) = try task.receiveMessage(), case .user(let user) = message, user.holds([UInt8].self) {
        try task.sendMessage(to: source, try user.decode(as: [UInt8].self))
        count += 1
    }
    return count
}

let vm = try VM(functions: [bounce])
guard let task = try vm.spawnFunction(bounce, args: 0, count: 1).first else {
    print("No worker slot: run under mpirun with at least 2 ranks, e.g. scripts/run-demo.sh 03-messaging 2")
    try vm.finalize()
    exit(0)
}

let sizes = [0, 8, 1_000, 100_000, 1_000_000, 10_000_000]
print("Bouncing messages between the spawner and task \(task) on \(vm.hostID(task)?.name ?? "?")")
print("     size   round trips    one-way delay    throughput")
for size in sizes {
    let payload = [UInt8](repeating: 0x5a, count: size)
    // Enough round trips for about a tenth of a second per size, at least 5.
    let roundTrips = max(5, min(20_000, 200_000_000 / max(size, 10_000)))
    // One round trip first so that connection set-up is not measured.
    try vm.sendMessage(to: task, payload)
    _ = try vm.receiveMessage(timeout: 60)
    let start = Date()
    for _ in 0..<roundTrips {
        try vm.sendMessage(to: task, payload)
        guard let (_, message) = try vm.receiveMessage(timeout: 60), case .user(let user) = message else {
            fatalError("the bounce task stopped answering")
        }
        let echoed = try user.decode(as: [UInt8].self)
        precondition(echoed.count == size, "a bounced message came back with the wrong size")
    }
    let seconds = Date().timeIntervalSince(start)
    let oneWay = seconds / Double(2 * roundTrips)
    let throughput = size == 0 ? "-" : String(format: "%10.1f MB/s", Double(size) / oneWay / 1e6)
    print(String(format: "%9d %13d %13.2f µs    ", size, roundTrips, oneWay * 1e6) + throughput)
}

try vm.sendMessage(to: task, "stop")
while let (_, message) = try vm.receiveMessage(timeout: 60) {
    if case .taskExit = message { break }
}
try vm.finalize()
