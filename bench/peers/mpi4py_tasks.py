"""mpi4py.futures running the trivial task: map, submit, and map with chunksize=100.

Run as `mpirun -n N python -m mpi4py.futures mpi4py_tasks.py TASKS`: rank 0 runs this file, the other
ranks are the pool's workers, which import it under another name (hence the main guard). Prints
`peer_mpi4py_futures_<kind>_w<workers>` lines in tasks/s.
"""

from mpi4py import MPI
from mpi4py.futures import MPIPoolExecutor

from common import emit, rate, tasks_argument
from peerlib import double


def main():
    n = tasks_argument()
    workers = MPI.COMM_WORLD.Get_size() - 1

    with MPIPoolExecutor() as executor:

        def mapped():
            results = list(executor.map(double, range(n)))
            assert results[-1] == 2 * (n - 1)

        def submitted():
            futures = [executor.submit(double, x) for x in range(n)]
            assert sum(future.result() for future in futures) == n * (n - 1)

        chunked_n = 10 * n

        def chunked():
            results = list(executor.map(double, range(chunked_n), chunksize=100))
            assert results[-1] == 2 * (chunked_n - 1)

        emit(f"peer_mpi4py_futures_map_w{workers}", rate(n, mapped))
        emit(f"peer_mpi4py_futures_submit_w{workers}", rate(n, submitted))
        emit(f"peer_mpi4py_futures_map_chunked_w{workers}", rate(chunked_n, chunked))


if __name__ == "__main__":
    main()
