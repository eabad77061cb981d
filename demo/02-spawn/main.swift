// Spawns two `hello` tasks and prints every TaskResult and TaskExit as it arrives, with the number of
// free slots as it changes (PyOPUS demo/parallel/vm/02-spawn.py).
//
//   scripts/run-demo.sh 02-spawn 3

import ParallelVM

/// Runs on a worker: greets from its host and task.
let hello = RemoteFunction("hello") { (greeting: String, task: TaskContext) -> String in
    task.logger.info("saying hello")
    return "\(greeting) from task \(task.taskID) on \(task.host)"
}

let vm = try VM(functions: [hello], debug: 1)
print("Free slots before spawning: \(vm.freeSlots())")

let tasks = try vm.spawnFunction(hello, args: "Hello", count: 2)
if tasks.isEmpty {
    print("Spawned: none (no free worker slots; run under mpirun with 2 or more ranks)")
} else {
    print("Spawned: \(tasks.map(\.description).joined(separator: ", "))")
}
print("Free slots after spawning: \(vm.freeSlots())")

var running = Set(tasks)
while !running.isEmpty, let (source, message) = try vm.receiveMessage(timeout: 30) {
    switch message {
    case .taskResult(let result):
        if result.success {
            print("TaskResult from \(source): \(try result.value(as: String.self))")
        } else {
            print("TaskResult from \(source): failed: \(result.error!)")
        }
    case .taskExit:
        running.remove(source)
        print("TaskExit from \(source); free slots: \(vm.freeSlots())")
    default:
        print("Message from \(source): \(message)")
    }
}
if !running.isEmpty {
    print("Gave up waiting for \(running.sorted().map(\.description).joined(separator: ", "))")
}
print("Free slots at the end: \(vm.freeSlots()) of \(vm.slots() - 1) worker slots")
try vm.finalize()
