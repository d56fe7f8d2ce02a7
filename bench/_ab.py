"""What the A/B scripts (ab_paths.py, ab_values.py) share: per-call timing and the report."""
import os
import statistics
import time

import shmrcu

ROUNDS = 9


def per_call_ns(fn, n, per=1):
    """Median, min and max over ROUNDS rounds of ns per call of ``fn(i)`` (i < n), divided
    by ``per`` (items per call)."""
    samples = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter_ns()
        for i in range(n):
            fn(i)
        samples.append((time.perf_counter_ns() - t0) / (n * per))
    return statistics.median(samples), min(samples), max(samples)


def report(rows, width=36):
    """Print each (label, (median, lo, hi)) row, after the checkout being measured."""
    print(f"shmrcu from {os.path.dirname(shmrcu.__file__)}")
    for label, (med, lo, hi) in rows:
        print(f"{label:{width}s} median {med:8.1f} ns  (range {lo:.1f}-{hi:.1f})")
