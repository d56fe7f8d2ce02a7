"""Processes the benchmarks spawn (importable by the 'spawn' start method)."""
import shmrcu
from shmrcu import _bench


def busy_reader(name, stop, ready, qsbr, batch):
    with shmrcu.Runtime.attach(name) as rt, rt.reader() as r:
        ready.set()
        _bench.busy_reader(r, memoryview(stop).cast("B"), qsbr, batch)
