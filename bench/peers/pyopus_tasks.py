"""PyOPUS 0.9's MPI virtual machine running the trivial task: raw spawnFunction/receiveMessage (a new
task in each slot as soon as its task exits, as vm-bench does) and cOS.dispatch.

Run with `mpirun -n N python pyopus_tasks.py TASKS`. Workers stay inside the import of
pyopus.parallel.mpi. Prints `peer_pyopus_spawn_w<workers>` and `peer_pyopus_dispatch_w<workers>` in tasks/s.
"""

import peerlib  # before the VM: workers must be able to import the task by name
from pyopus.parallel.base import MsgTaskExit, MsgTaskResult
from pyopus.parallel.cooperative import cOS
from pyopus.parallel.mpi import MPI as VM

from common import emit, rate, tasks_argument

n = tasks_argument()
vm = VM(debug=0)
workers = vm.slots() - 1


def spawn_farm():
    spawned = results = total = 0
    while spawned < n and vm.freeSlots() > 0:
        vm.spawnFunction(peerlib.double, args=(spawned,), count=1, sendBack=True)
        spawned += 1
    while results < n or vm.freeSlots() < vm.slots() - 1:
        received = vm.receiveMessage(120)
        if received is None:
            raise SystemExit("pyopus_tasks.py: a task stopped answering")
        _, message = received
        if type(message) is MsgTaskResult:
            total += message.returnValue
            results += 1
        elif type(message) is MsgTaskExit and spawned < n:
            vm.spawnFunction(peerlib.double, args=(spawned,), count=1, sendBack=True)
            spawned += 1
    assert total == n * (n - 1)


def dispatched():
    results = cOS.dispatch(jobList=((peerlib.double, [x]) for x in range(n)), remote=True)
    assert results[-1] == 2 * (n - 1)


emit(f"peer_pyopus_spawn_w{workers}", rate(n, spawn_farm))
cOS.setVM(vm)
emit(f"peer_pyopus_dispatch_w{workers}", rate(n, dispatched))
cOS.finalize()
