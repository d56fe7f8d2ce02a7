"""Processes the benchmarks spawn (importable by the 'spawn' start method)."""
import shmrcu
from shmrcu import _bench


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
    from shmrcu import _epoch
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
