"""Controller costs (issue 4).

    pytest bench/bench_controller.py --benchmark-enable -s

* ``outer.swap(k, m)`` including its grace period, with one reader process busy
  in short sections on the other core: p50/p99, next to the kernel's own grace
  period (membarrier(MEMBARRIER_CMD_GLOBAL), which waits for synchronize_rcu)
  timed in the same run.  User reports put the kernel's map-in-map update at
  5-15 ms; the target here is p50 <= 5 us.
* 100 swaps in one ``rt.batch()`` vs 100 swaps each with its own grace period.
"""
import statistics
import time

import shmrcu

from _bench_procs import latency_vs_kernel, start_busy_reader


def outer_with_two_inners(rt):
    a = rt.create_map("hash", key="I", value="QQ", max_entries=1024, name="A")
    b = rt.create_map("hash", key="I", value="QQ", max_entries=1024, name="B")
    cfg = rt.create_map("array_of_maps", max_entries=4, inner=a, name="cfg")
    cfg.update(0, a, sync=False)
    return a, b, cfg


def test_swap_with_grace_period(benchmark, rt_name):
    with shmrcu.Runtime.create(rt_name) as rt:
        a, b, cfg = outer_with_two_inners(rt)
        p, stop = start_busy_reader(rt_name)
        try:
            maps, i = [b, a], [0]

            def swap():
                cfg.swap(0, maps[i[0] & 1])
                i[0] += 1
            latency_vs_kernel(benchmark, "outer.swap + grace period (reader busy)", swap)
        finally:
            stop[0] = 1
            p.join(10)


def test_batch_vs_individual_grace_periods(benchmark, rt_name):
    with shmrcu.Runtime.create(rt_name) as rt:
        a, b, cfg = outer_with_two_inners(rt)
        p, stop = start_busy_reader(rt_name)
        try:
            def individual():
                for i in range(100):
                    cfg.swap(0, b if i % 2 == 0 else a)

            def batched():
                with rt.batch():
                    for i in range(100):
                        cfg.swap(0, b if i % 2 == 0 else a)
            t_ind, t_bat = [], []
            for _ in range(200):
                t0 = time.perf_counter_ns(); individual(); t_ind.append(time.perf_counter_ns() - t0)
                t0 = time.perf_counter_ns(); batched(); t_bat.append(time.perf_counter_ns() - t0)
            benchmark.pedantic(batched, rounds=50, iterations=1)
        finally:
            stop[0] = 1
            p.join(10)
    ind, bat = statistics.median(t_ind) / 1e3, statistics.median(t_bat) / 1e3
    benchmark.extra_info.update(individual_us=ind, batched_us=bat)
    print(f"\n  100 swaps: each with its own grace period {ind:.1f} us, one batch {bat:.1f} us "
          f"(x{ind/bat:.1f})")
