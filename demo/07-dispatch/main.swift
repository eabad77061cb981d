// Dispatches 100 jobs that double their input and prints the results in job order
// (PyOPUS demo/parallel/cooperative/03-dispatch.py).
//
//   scripts/run-demo.sh 07-dispatch 3     two workers
//   scripts/run-demo.sh 07-dispatch 1     no mpirun: the jobs run in this process
//
// Compare with 06-spawn-result, which farms the same work with spawnFunction and receiveMessage by hand.

import ParallelVM

/// Runs on a worker (or here, without workers): doubles its input.
let double = RemoteFunction("double") { (value: Int, task: TaskContext) -> Int in
    task.logger.info("doubling \(value)")
    return 2 * value
}

// Every rank runs this line; workers stay inside it and serve jobs until the spawner finalizes.
let vm = try VM(functions: [double])

// A job names a registered function and its arguments; `extra` stays here and comes back with the result.
let jobs = (0..<100).map { Job(double, args: $0, extra: "input \($0)") }

// Every free slot gets a job, the next job goes out as soon as a slot frees, and the results come back
// in job order whatever order the jobs finished in. `progress` draws a line on a terminal's stderr.
let results = try await vm.dispatch(jobs, progress: true)

for result in results {
    // A job that throws gives a failed result instead of stopping the others.
    switch result.outcome {
    case .success(let value): print("\(result.extra!) -> \(value) on \(result.host?.name ?? "this process")")
    case .failure(let error): print("\(result.extra!) failed: \(error)")
    }
}
print("Results: \(results.compactMap(\.value))")

try vm.finalize()
