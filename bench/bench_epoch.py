"""RCU core costs (issue 2).

    pytest bench/bench_epoch.py --benchmark-enable -s

Reports, as medians on this machine: quiescent() and section enter+exit in a
nogil loop (ns/op), and rt.synchronize() latency p50/p99 from Python with one
reader process busy on the other core, next to the kernel's own grace period
(membarrier(MEMBARRIER_CMD_GLOBAL)) timed in the same run.
"""
import statistics

import pytest

import shmrcu
from shmrcu.testing import _bench

from _bench_procs import latency_vs_kernel, start_busy_reader

LOOP = 20_000_000


def per_op(benchmark, fn, n):
    samples = []

    def run():
        samples.append(fn(n) / n)
    benchmark.pedantic(run, rounds=15, iterations=1, warmup_rounds=2)
    ns = statistics.median(samples)
    benchmark.extra_info["ns_per_op_median"] = round(ns, 3)
    print(f"\n  {benchmark.name}: median {ns:.3f} ns/op over {len(samples)} rounds of {n:,}")
    return ns


def test_quiescent_nogil(benchmark, rt_name):
    with shmrcu.Runtime.create(rt_name) as rt, rt.reader() as r:
        per_op(benchmark, lambda n: _bench.quiescent_loop(r, n), LOOP)


@pytest.mark.parametrize("sections", ["fence", "membarrier"])
def test_section_enter_exit_nogil(benchmark, rt_name, sections):
    with shmrcu.Runtime.create(rt_name, sections=sections) as rt, rt.reader() as r:
        assert rt.sections == sections, "membarrier unavailable on this kernel"
        per_op(benchmark, lambda n: _bench.section_loop(r, n), LOOP // 4)


@pytest.mark.parametrize("style", ["sections", "qsbr"])
def test_synchronize_with_busy_reader(benchmark, rt_name, style):
    with shmrcu.Runtime.create(rt_name) as rt:
        p, stop = start_busy_reader(rt_name, qsbr=style == "qsbr")
        try:
            latency_vs_kernel(benchmark, f"synchronize ({style} reader busy)",
                              lambda: rt.synchronize(timeout=5))
        finally:
            stop[0] = 1
            p.join(10)
