// A hand-written asynchronous loop on a Farm, as parallel optimisation algorithms (DE, PSADE) use it:
// spawn while slots are free, join one finished job at a time, stop spawning when a result reaches 150,
// then wait for the jobs still running (PyOPUS demo/parallel/cooperative/05-asyncloop.py).
//
//   scripts/run-demo.sh 09-asyncloop 3

import ParallelVM

let double = RemoteFunction("double") { (value: Int, _: TaskContext) -> Int in 2 * value }

let vm = try VM(functions: [double])

// The value at which we stop spawning.
let stopAtResult = 150

// A farm runs one job per worker slot (or, without workers, runs them in this process).
let farm = try Farm<Int>(vm)
var results: [Int?] = []
var stop = false
var nextValue = 0

// Run until we have decided to stop and every spawned job has been joined.
while !(stop && farm.outstanding == 0) {
    // Spawn while there is room. With nothing running, spawn anyway: join needs something to wait for.
    while !stop && (farm.outstanding == 0 || farm.hasFreeSlot) {
        let index = try await farm.spawn(Job(double, args: nextValue))
        print("Spawned job \(index) for value \(nextValue)")
        nextValue += 1
    }

    // Join one job: the next to finish, whichever it is.
    guard let result = try await farm.join() else { break }
    let value = try result.get()
    print("Received \(value) from \(result.task.map(\.description) ?? "this process")")

    if result.index >= results.count {
        results.append(contentsOf: repeatElement(nil, count: result.index + 1 - results.count))
    }
    results[result.index] = value

    if value >= stopAtResult && !stop {
        stop = true
        print("Spawning no more tasks")
    }
}
await farm.close()

print("Results: \(results.map { $0.map(String.init) ?? "nil" }.joined(separator: ", "))")
try vm.finalize()
