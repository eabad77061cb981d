// Jobs come from a generator that decides from earlier results when to stop: it produces 0, 1, 2, ...
// until a collector has seen a result of 150 or more (PyOPUS demo/parallel/cooperative/04-dyndispatch.py).
//
//   scripts/run-demo.sh 08-dyndispatch 3

import ParallelVM

let double = RemoteFunction("double") { (value: Int, _: TaskContext) -> Int in 2 * value }

let vm = try VM(functions: [double])

// The generator and the collector share this flag. Both run in this task (the dispatcher takes the next
// job only when a slot is free, and calls the collector between jobs), so a plain variable is enough.
var stopReached = false

// An endless lazy sequence: the dispatcher pulls one job at a time, so the generator reads the flag
// with the results seen so far. PyOPUS's generator does the same with a global flag.
let jobs = (0...).lazy.prefix { _ in !stopReached }.map { Job(double, args: $0) }

// The collector sees each result as its job finishes, in completion order. Returning true keeps the
// dispatch going; stopping the generator (instead of returning false) lets the jobs already out finish.
let results = try await vm.dispatch(jobs) { result in
    let value = try result.get()
    print("Result for value=\(result.index) is \(value) (host \(result.host?.name ?? "local"))")
    if value >= 150 && !stopReached {
        print("Result 150 reached, stopping the generator.")
        stopReached = true
    }
    return true
}

// Jobs that were already running when the generator stopped are in the list too, in job order.
print("Results: \(results.compactMap(\.value))")

try vm.finalize()
