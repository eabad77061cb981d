// Prints the spawner's view of the virtual machine: its host, its task ID, its parent, the per-host slot
// table and the slot counts (PyOPUS demo/parallel/vm/01-config.py).
//
//   scripts/run-demo.sh 01-config 3

import ParallelVM

// Every rank runs this line; on workers it never returns (they serve tasks until the spawner finalizes).
let vm = try VM()

print("Spawner host     : \(vm.hostID()?.name ?? "?")")
print("Spawner task ID  : \(vm.taskID())")
print("Parent task ID   : \(vm.parentTaskID().map(\.description) ?? "none (the spawner has no parent)")")
print("Under mpirun     : \(vm.isDistributed ? "yes" : "no (one process, \(vm.slots() - 1) local slot(s))")")
print()
print(vm.formatSpawnerConfig())
print()
print("Total slots      : \(vm.slots())")
print("Free slots       : \(vm.freeSlots())")
print("Hosts with free  : \(vm.hostsWithFreeSlots().map(\.name).joined(separator: ", "))")

try vm.finalize()
