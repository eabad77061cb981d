"""mpi4py ping-pong between ranks 0 and 1, in buffer mode (Send/Recv of a bytearray) and pickle mode
(send/recv of a bytes object). Run with `mpirun -n 2`. Prints one-way latencies in µs:
`peer_mpi4py_latency_<size>` and `peer_mpi4py_pickle_latency_<size>`.
"""

import statistics
import sys
import time

from mpi4py import MPI

from common import emit, round_trips

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
sizes = [int(s) for s in sys.argv[1:]] or [0, 8, 1000, 100000, 1000000]
if comm.Get_size() != 2:
    sys.exit("mpi4py_pingpong.py needs exactly 2 ranks")


def one_way(count, exchange):
    exchange()  # warm-up
    times = []
    for _ in range(5):
        comm.Barrier()
        start = time.perf_counter()
        for _ in range(count):
            exchange()
        times.append((time.perf_counter() - start) / (2 * count))
    return statistics.median(times)


for size in sizes:
    buffer = bytearray(b"Z" * size)
    count = round_trips(size)

    def buffers():
        if rank == 0:
            comm.Send([buffer, MPI.BYTE], dest=1, tag=1)
            comm.Recv([buffer, MPI.BYTE], source=1, tag=1)
        else:
            comm.Recv([buffer, MPI.BYTE], source=0, tag=1)
            comm.Send([buffer, MPI.BYTE], dest=0, tag=1)

    seconds = one_way(count, buffers)
    if rank == 0:
        emit(f"peer_mpi4py_latency_{size}", seconds * 1e6)

for size in sizes:
    payload = b"Z" * size
    count = round_trips(size)

    def pickled():
        if rank == 0:
            comm.send(payload, dest=1, tag=2)
            assert len(comm.recv(source=1, tag=2)) == size
        else:
            comm.send(comm.recv(source=0, tag=2), dest=0, tag=2)

    seconds = one_way(count, pickled)
    if rank == 0:
        emit(f"peer_mpi4py_pickle_latency_{size}", seconds * 1e6)
