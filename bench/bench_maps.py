"""Map lookups from Python next to the peers a Python user would pick today (issue 3).

    OPENBLAS_NUM_THREADS=1 pytest bench/bench_maps.py --benchmark-enable -s

One reader (this process) looks up random keys of a 100k-entry table while one
writer process changes one entry per millisecond.  Same keys (0..99999, the
same random lookup sequence) for every contender, same run:

* ``dict``            a plain local dict (no writer: the speed to match);
* ``shmrcu section``  ``m[k]`` inside one open read-side section;
* ``shmrcu per-op``   one section per lookup, ``with r.section(): m[k]``, and the
                      fused ``m.lookup(k, r)``;
* ``shmrcu batch``    ``m.lookup_batch(keys)`` (numpy, without the GIL), one thread
                      and ``threads=2``;
* ``shm+Lock``        ``multiprocessing.shared_memory`` array + ``multiprocessing.Lock``;
* ``UltraDict``       ``UltraDict(shared_lock=True)`` (skipped if not installed);
* ``Manager``         ``multiprocessing.Manager().dict()`` (fewer lookups: it is slow).

Each benchmark records ``Mops`` (million lookups per second, from the median
round) in extra_info and prints one line; targets: section >= dict (>= 20 M/s
where the issue measured), per-op >= 5 M/s, batch >= 200 M keys/s.
"""
import multiprocessing as mp
import random

import numpy as np
import pytest

import shmrcu
import _bench_map_procs as procs

N = procs.N_KEYS
LOOKUPS = 200_000
ROUNDS = 15
RESULTS = {}


def lookup_keys(n=LOOKUPS):
    rnd = random.Random(1)
    return [rnd.randrange(N) for _ in range(n)]


def report(benchmark, label, n):
    mops = n / benchmark.stats.stats.median / 1e6
    benchmark.extra_info["Mops"] = round(mops, 3)
    RESULTS[label] = mops
    print(f"\n{label:<28} {mops:9.2f} M lookups/s (median of {benchmark.stats.stats.rounds} rounds)")


class Writer:
    """Start a writer process (one change per ms) and stop it on exit."""

    def __init__(self, target, *args):
        ctx = mp.get_context("spawn")
        self.stop, ready = ctx.Event(), ctx.Event()
        self.p = ctx.Process(target=target, args=args + (ready, self.stop), daemon=True)
        self.p.start()
        assert ready.wait(60), "writer did not start"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.p.join(10)
        if self.p.is_alive():
            self.p.kill()


@pytest.fixture(scope="module")
def table():
    """A runtime with the 100k-entry hash map, shared by the shmrcu benchmarks."""
    import os
    name = f"benchmaps{os.getpid()}"
    rt = shmrcu.Runtime.create(name, max_workers=8)
    try:
        m = rt.create_map("hash", key="Q", value="Q", max_entries=N, name="table")
        keys = np.arange(N, dtype=np.uint64)
        m.update_batch(keys, keys * 3)
        with Writer(procs.shmrcu_writer, name, "table"):
            yield rt, m
    finally:
        rt.destroy()


def test_local_dict(benchmark):
    d = {k: 3 * k for k in range(N)}
    keys = lookup_keys()

    def run():
        for k in keys:
            d[k]
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    report(benchmark, "dict (local, no writer)", len(keys))


def test_shmrcu_in_open_section(benchmark, table):
    rt, m = table
    keys = lookup_keys()
    with rt.reader() as r:
        def run():
            with r.section():
                for k in keys:
                    m[k]
        benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    report(benchmark, "shmrcu m[k] in one section", len(keys))


def test_shmrcu_section_per_lookup(benchmark, table):
    rt, m = table
    keys = lookup_keys()
    with rt.reader() as r:
        section = r.section

        def run():
            for k in keys:
                with section():
                    m[k]
        benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    report(benchmark, "shmrcu section per lookup", len(keys))


def test_shmrcu_fused_lookup(benchmark, table):
    rt, m = table
    keys = lookup_keys()
    with rt.reader() as r:
        lookup = m.lookup

        def run():
            for k in keys:
                lookup(k, r)
        benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    report(benchmark, "shmrcu m.lookup(k, r)", len(keys))


def test_shmrcu_lookup_batch(benchmark, table):
    rt, m = table
    keys = np.array(lookup_keys(), dtype=np.uint64)
    out = np.empty(len(keys), dtype=np.uint64)
    with rt.reader() as r:
        def run():
            with r.section():
                m.lookup_batch(keys, out)
        benchmark.pedantic(run, rounds=ROUNDS * 4, warmup_rounds=2)
    assert (out[:10] >= 0).all()
    report(benchmark, "shmrcu lookup_batch", len(keys))


def test_shmrcu_lookup_batch_two_threads(benchmark, table):
    rt, m = table
    keys = np.array(lookup_keys(), dtype=np.uint64)
    out = np.empty(len(keys), dtype=np.uint64)
    with rt.reader() as r:
        def run():
            with r.section():
                m.lookup_batch(keys, out, threads=2)
        benchmark.pedantic(run, rounds=ROUNDS * 4, warmup_rounds=2)
    report(benchmark, "shmrcu lookup_batch x2 threads", len(keys))


def test_shared_memory_with_lock(benchmark):
    from multiprocessing import shared_memory
    ctx = mp.get_context("spawn")
    lock = ctx.Lock()
    shm = shared_memory.SharedMemory(create=True, size=8 * N)
    buf = shm.buf.cast("Q")
    try:
        for k in range(N):
            buf[k] = 3 * k
        keys = lookup_keys()
        with Writer(procs.shm_lock_writer, shm.name, lock):
            def run():
                for k in keys:
                    with lock:
                        buf[k]
            benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
        report(benchmark, "shared_memory + Lock", len(keys))
    finally:
        buf.release()
        shm.close()
        shm.unlink()


def test_ultradict(benchmark):
    UltraDict = pytest.importorskip("UltraDict").UltraDict
    try:
        ud = UltraDict(shared_lock=True, buffer_size=64 << 20)
    except Exception as e:            # e.g. the `atomics` dependency is missing
        pytest.skip(f"UltraDict(shared_lock=True) unavailable: {e}")
    try:
        ud.update({k: 3 * k for k in range(N)})
        keys = lookup_keys(50_000)
        with Writer(procs.ultradict_writer, ud.name):
            def run():
                for k in keys:
                    ud[k]
            benchmark.pedantic(run, rounds=5, warmup_rounds=1)
        report(benchmark, "UltraDict(shared_lock=True)", len(keys))
    finally:
        ud.unlink()


def test_manager_dict(benchmark):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        d = manager.dict({k: 3 * k for k in range(N)})
        keys = lookup_keys(2_000)
        with Writer(procs.manager_writer, d):
            def run():
                for k in keys:
                    d[k]
            benchmark.pedantic(run, rounds=3, warmup_rounds=1)
        report(benchmark, "Manager().dict()", len(keys))


def test_zz_summary():
    """Prints every result of this run together (runs last by name)."""
    if RESULTS:
        print("\n\nsummary (M lookups/s, same run, same keys):")
        for label, mops in RESULTS.items():
            print(f"  {label:<28} {mops:9.2f}")
