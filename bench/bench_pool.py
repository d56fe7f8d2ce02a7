"""Worker pool throughput and grace periods under load (issue 5).

    pytest bench/bench_pool.py --benchmark-enable -s

* ``traffic_accounting`` events/s per worker, 1 and 2 workers, for the Cython
  kernel (per-worker and shared stats maps) and for the same program written
  as a Python callable.  Each round reads the ledgers over a 0.5 s window of a
  running pool (start-up excluded); the median round is reported.
* grace-period latency p50/p99 as the demo measures it: A/B swaps every
  100 ms with the pool running on every core.
"""
import statistics
import time

import pytest

import shmrcu
from shmrcu.cli import demo
from shmrcu.pool import WorkerPool
from shmrcu.sources import Traffic

WINDOW_S = 0.5
PROGRAMS = {"cython": "traffic_accounting",
            "python": "shmrcu.pool.programs.python_examples:traffic_accounting"}


def _setup(rt, kind):
    a = rt.create_map(kind, key="I", value="QQ", max_entries=1024, name="stats")
    cfg = rt.create_map("array_of_maps", key="I", max_entries=1, inner=a, name="cfg")
    cfg[0] = a


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("maps", ["per_worker_hash", "hash"])
@pytest.mark.parametrize("impl", ["cython", "python"])
def test_traffic_accounting_events_per_worker(benchmark, rt_name, workers, maps, impl):
    if impl == "python" and maps == "hash":
        pytest.skip("the Python callable is measured once (per-worker maps)")
    rates = []
    with shmrcu.Runtime.create(rt_name, max_workers=8) as rt:
        _setup(rt, maps)
        source = Traffic(keys=1000, dist="zipf", batch=4096 if impl == "cython" else 512)
        with WorkerPool(rt, workers=workers, program=PROGRAMS[impl], source=source) as pool:
            time.sleep(0.3)                       # warm up: maps filled, caches hot

            def window():
                a0, t0 = pool.applied(), time.perf_counter()
                time.sleep(WINDOW_S)
                rates.append((pool.applied() - a0) / (time.perf_counter() - t0) / workers)
            benchmark.pedantic(window, rounds=7, iterations=1)
            assert pool.stats()["errors"] == []
    med = statistics.median(rates)
    benchmark.extra_info["events_per_s_per_worker_median"] = round(med)
    print(f"\n  {impl} traffic_accounting, {maps}, {workers} worker(s): "
          f"median {med / 1e6:.2f} M events/s per worker (rounds: "
          + ", ".join(f"{r / 1e6:.1f}" for r in rates) + ")")


@pytest.mark.parametrize("workers", [1, 2])
def test_grace_period_latency_with_pool_running(benchmark, workers):
    results = []

    def run():
        results.append(demo.run(demo.DemoConfig(workers=workers, duration=3.0, interval_ms=20)))
    benchmark.pedantic(run, rounds=1, iterations=1)
    s = results[0]
    assert s["exact"]
    benchmark.extra_info.update({k: s[k] for k in ("gp_p50_us", "gp_p99_us", "swap_sync_p50_us",
                                                     "swap_sync_p99_us", "grace_periods")})
    print(f"\n  demo with {workers} worker(s): {s['grace_periods']} grace periods, "
          f"p50 {s['gp_p50_us']:.1f} us, p99 {s['gp_p99_us']:.1f} us; swap+sync p50 "
          f"{s['swap_sync_p50_us']:.1f} us, p99 {s['swap_sync_p99_us']:.1f} us; "
          f"{s['events_per_s'] / 1e6:.1f} M events/s")
