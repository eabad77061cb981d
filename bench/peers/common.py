"""Helpers shared by the peer benchmarks: the same repetitions and medians as vm-bench."""

import statistics
import sys
import time


def emit(name, value):
    print(f"{name} {value:.6g}", flush=True)


def rate(jobs, body, repetitions=5):
    """Median jobs per second of `repetitions` runs of `body`, after one warm-up run."""
    body()
    rates = []
    for _ in range(repetitions):
        start = time.perf_counter()
        body()
        rates.append(jobs / (time.perf_counter() - start))
    return statistics.median(rates)


def round_trips(size):
    """Round trips per repetition, as in bench/c/pingpong.c and vm-bench: about 0.1 s, at least 5."""
    return max(5, min(20_000, 200_000_000 // max(size, 10_000)))


def tasks_argument():
    return int(sys.argv[1]) if len(sys.argv) > 1 else 5000
