"""WorkerPool, worker loop, programs and sources -- real processes, real shared memory."""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from shmrcu.pool import programs
from shmrcu.pool import WorkerPool
from shmrcu.pool.programs import ProgramNotFound
from shmrcu.sources import Callable, Traffic, TrafficGenerator, as_batch

import _pool_procs  # noqa: F401  (the programs below live there; children import it by name)


def _stats_maps(rt, kind="per_worker_hash", keys=1024):
    a = rt.create_map(kind, key="I", value="QQ", max_entries=keys, name="stats_a")
    cfg = rt.create_map("array_of_maps", key="I", max_entries=1, inner=a, name="cfg")
    cfg[0] = a
    return a, cfg


def _packets(m) -> int:
    return sum(v[0] for v in m.values())


def _wait(cond, timeout=10.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


# -- the traffic generator ------------------------------------------------------
def test_traffic_is_seeded_and_bounded():
    assert TrafficGenerator(7, 100).sample(1000) == TrafficGenerator(7, 100).sample(1000)
    assert TrafficGenerator(7, 100).sample(100) != TrafficGenerator(8, 100).sample(100)
    g = TrafficGenerator(1, 10, batch=4096, limit=10000)
    sizes = []
    while (b := g.next_batch()) is not None:
        assert b.format == "I" and b.shape[1] == 2
        sizes.append(b.shape[0])
    assert sizes == [4096, 4096, 1808]
    recs = TrafficGenerator(3, 50).sample(5000)
    assert all(10000 <= uid < 10050 and 40 <= nb <= 1500 for uid, nb in recs)


def test_traffic_zipf_is_skewed():
    from collections import Counter
    c = Counter(uid for uid, _ in TrafficGenerator(1, 1000, "zipf", 1.1).sample(200_000))
    top = c.most_common(3)
    assert top[0][0] == 10000 and top[0][1] > 5 * c.get(10010, 1)


@pytest.mark.parametrize("kwargs", [dict(keys=0), dict(dist="pareto"), dict(batch=0), dict(events=-1),
                                    dict(dist="zipf", zipf_s=0)])
def test_traffic_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        Traffic(**kwargs)


def test_as_batch_checks_record_size():
    assert as_batch(b"\0" * 16).shape == (2, 2)
    with pytest.raises(ValueError, match="whole 8-byte records"):
        as_batch(b"\0" * 12)


# -- program names ----------------------------------------------------------------
@pytest.mark.parametrize("name, match", [
    ("nope", "unknown program 'nope'"),
    ("no_such_module_xyz:f", "cannot import module"),
    ("_pool_procs:missing", "has no attribute"),
])
def test_bad_program_name_fails_before_any_worker(runtime, name, match):
    before = set(psutil.Process().children(recursive=True))
    with pytest.raises(ProgramNotFound, match=match):
        WorkerPool(runtime, workers=2, program=name)
    assert set(psutil.Process().children(recursive=True)) <= before
    assert runtime.readers_info() == []


def test_unpicklable_program_is_refused(runtime):
    with pytest.raises(ProgramNotFound, match="cannot be sent"):
        WorkerPool(runtime, workers=1, program=lambda ctx, batch: None)


def test_builtin_names_resolve():
    for name in programs.BUILTIN:
        spec, obj = programs.resolve(name)
        assert spec == name and callable(obj) and hasattr(obj, "bind")


# -- end to end ----------------------------------------------------------------------
def test_python_program_end_to_end(runtime):
    a, _ = _stats_maps(runtime, kind="hash")
    with WorkerPool(runtime, workers=2, program="_pool_procs:count_uids",
                    source=Callable("_pool_procs:small_batches")) as pool:
        assert pool.join(30)
        st = pool.stats()
    assert st["applied"] == 2 * 100 * 10
    assert st["batches"] == 2 * 100
    assert _packets(a) == 2000
    assert a[10000] == (2 * 100 * 2, 2 * 100 * 2 * 100)   # i % 7 == 0 for i in 0, 7 of each batch
    assert st["restarts"] == 0 and st["errors"] == [], st
    assert runtime.readers_info() == []                   # every slot released


def test_python_program_passed_as_callable(runtime):
    a, _ = _stats_maps(runtime, kind="hash")
    with WorkerPool(runtime, workers=1, program=_pool_procs.count_uids,
                    source=Callable(_pool_procs.small_batches)) as pool:
        assert pool.join(30)
    assert _packets(a) == 1000


@pytest.mark.parametrize("kind", ["per_worker_hash", "hash"])
def test_traffic_accounting_kernel_is_exact(runtime, kind):
    a, _ = _stats_maps(runtime, kind=kind)
    with WorkerPool(runtime, workers=2, program="traffic_accounting",
                    source=Traffic(keys=500, dist="zipf", events=300_000)) as pool:
        assert pool.join(60)
        st = pool.stats()
    assert st["applied"] == 600_000 == _packets(a)
    assert st["dropped"] == 0 and st["errors"] == []
    # slot counters were published at every quiescent state
    assert all(w["batches"] >= 300_000 // 4096 for w in st["per_worker"])


def test_route_lookup_counts_hits_and_misses(runtime):
    table = runtime.create_map("hash", key="I", value="I", max_entries=128, name="table")
    for uid in range(10000, 10050):            # half of the 100 uids have a route
        table[uid] = 1
    routes = runtime.create_map("array_of_maps", key="I", max_entries=1, inner=table, name="routes")
    routes[0] = table
    with WorkerPool(runtime, workers=2, program="route_lookup",
                    source=Traffic(keys=100, events=100_000)) as pool:
        assert pool.join(60)
        st = pool.stats()
    hits = sum(w["hits"] for w in st["per_worker"])
    misses = sum(w["misses"] for w in st["per_worker"])
    assert hits + misses == st["applied"] == 200_000
    assert 0.4 < hits / 200_000 < 0.6


def test_missing_cfg_map_is_a_setup_error(runtime):
    with WorkerPool(runtime, workers=1, program="traffic_accounting", restart=False) as pool:
        assert _wait(lambda: pool.stats()["errors"], 20)
        err = pool.stats()["errors"][0]
    assert err["kind"] == "setup" and "no map 'cfg'" in err["traceback"]


# -- failures and supervision ----------------------------------------------------------
def test_program_exception_is_reported_and_worker_restarts(runtime):
    with WorkerPool(runtime, workers=1, program="_pool_procs:raise_on_third_batch",
                    source=Traffic(keys=10)) as pool:
        assert _wait(lambda: pool.stats()["restarts"] >= 2, 30)
        st = pool.stats()
    err = st["errors"][0]
    assert err["kind"] == "program"
    assert "ValueError: program failure in worker 0 (incarnation 0)" in err["traceback"]
    assert "raise_on_third_batch" in err["traceback"]          # a real traceback
    assert st["per_worker"][0]["last_error"]


def test_crash_loop_backs_off(runtime):
    with WorkerPool(runtime, workers=1, program="_pool_procs:always_raise",
                    source=Traffic(keys=10)) as pool:
        time.sleep(3.0)
        restarts = pool.stats()["restarts"]
    # spawning takes ~0.1-0.2 s; without back-off 3 s would give ~15+ restarts
    assert 2 <= restarts <= 10


def test_source_exception_is_reported(runtime):
    with WorkerPool(runtime, workers=1, program="_pool_procs:noop",
                    source=Callable("_pool_procs:raising_source")) as pool:
        assert _wait(lambda: pool.stats()["errors"], 20)
        err = pool.stats()["errors"][0]
    assert err["kind"] == "source" and "OSError: source failure" in err["traceback"]


def test_sigkill_worker_is_restarted_and_counts_stay_exact(runtime):
    a, _ = _stats_maps(runtime)
    with WorkerPool(runtime, workers=2, program="traffic_accounting",
                    source=Traffic(keys=1000, dist="zipf")) as pool:
        for k in range(6):                       # several kills: some land mid-event
            time.sleep(0.3)
            victim = pool.pids()[k % 2]
            os.kill(victim, signal.SIGKILL)
            t0 = time.monotonic()
            assert _wait(lambda: pool.pids()[k % 2] not in (None, victim)
                         and pool.stats()["per_worker"][k % 2]["state"] == "running", 10)
            assert time.monotonic() - t0 < 5
        st = pool.stop()
    assert st["restarts"] == 6
    assert st["uncertain"] == 0
    assert st["applied"] > 0 and _packets(a) == st["applied"]
    assert runtime.readers_info() == []


def test_idle_worker_goes_offline(runtime):
    with WorkerPool(runtime, workers=1, program="_pool_procs:noop",
                    source=Callable("_pool_procs:idle_then_batches")) as pool:
        infos = runtime.readers_info()
        assert len(infos) == 1 and infos[0]["worker_id"] == 0
        t0 = time.monotonic()
        runtime.synchronize(timeout=1.0)         # an idle worker never holds it up
        assert time.monotonic() - t0 < 0.5
        assert pool.join(20)
        assert pool.stats()["applied"] == 5 * 4


def test_workers_are_pinned(runtime):
    cpus = sorted(os.sched_getaffinity(0))
    _stats_maps(runtime)
    with WorkerPool(runtime, workers=2, source=Traffic(keys=10), pin=True) as pool:
        for i, pid in enumerate(pool.pids()):
            assert psutil.Process(pid).cpu_affinity() == [cpus[i % len(cpus)]]


def test_stop_is_clean(runtime):
    _stats_maps(runtime)
    pool = WorkerPool(runtime, workers=2, source=Traffic(keys=10))
    pool.start()
    procs = [psutil.Process(p) for p in pool.pids()]
    assert len(runtime.readers_info()) == 2
    st = pool.stop(timeout=5)
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs)
    assert [w["last_exit"] for w in st["per_worker"]] == [0, 0]   # SIGTERM: finished, exit 0
    assert st["restarts"] == 0
    assert runtime.readers_info() == []
    assert pool.stop() == pool.stats()                               # idempotent


def test_too_many_workers_for_the_runtime(runtime):
    with pytest.raises(ValueError, match="max_workers"):
        WorkerPool(runtime, workers=runtime.max_workers + 1)
