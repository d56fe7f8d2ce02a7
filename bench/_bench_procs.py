"""Processes the benchmarks spawn (importable by the 'spawn' start method)."""
import shmrcu
from shmrcu.testing import _bench


def busy_reader(name, stop, ready, qsbr, batch):
    with shmrcu.Runtime.attach(name) as rt, rt.reader() as r:
        ready.set()
        _bench.busy_reader(r, memoryview(stop).cast("B"), qsbr, batch)


def percentiles(xs):
    """(p50, p99) of a list of samples."""
    xs = sorted(xs)
    return xs[len(xs) // 2], xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def kernel_grace_periods(n=200):
    """n timings (ns) of the kernel's own grace period: membarrier(MEMBARRIER_CMD_GLOBAL)."""
    import time
    from shmrcu.core import _epoch
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        _epoch.kernel_synchronize_rcu()
        out.append(time.perf_counter_ns() - t0)
    return out


def start_busy_reader(rt_name, qsbr=False, batch=200):
    """A reader process busy on the other core; returns (process, stop flag)."""
    import multiprocessing as mp
    import time
    ctx = mp.get_context("spawn")
    stop, ready = ctx.RawArray("B", 1), ctx.Event()
    p = ctx.Process(target=busy_reader, args=(rt_name, stop, ready, qsbr, batch))
    p.start()
    assert ready.wait(30)
    time.sleep(0.2)
    return p, stop


def latency_vs_kernel(benchmark, label, op, rounds=20000):
    """Time ``op`` one call per round (p50/p99) next to the kernel's grace period,
    record both in the benchmark's extra_info and print one line."""
    import time
    lat, clock = [], time.perf_counter_ns

    def one():
        t0 = clock()
        op()
        lat.append(clock() - t0)
    benchmark.pedantic(one, rounds=rounds, iterations=1, warmup_rounds=100)
    kern = kernel_grace_periods()
    p50, p99 = percentiles(lat)
    k50, k99 = percentiles(kern)
    benchmark.extra_info.update(p50_us=p50 / 1e3, p99_us=p99 / 1e3, kernel_gp_p50_us=k50 / 1e3,
                                kernel_gp_p99_us=k99 / 1e3, kernel_over_shmrcu=k50 / p50)
    print(f"\n  {label}: p50 {p50/1e3:.2f} us  p99 {p99/1e3:.2f} us | "
          f"kernel membarrier(GLOBAL): p50 {k50/1e3:.0f} us  p99 {k99/1e3:.0f} us | "
          f"ratio kernel/shmrcu p50 = {k50/p50:,.0f}x")
