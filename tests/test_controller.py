"""The controller: update-implies-sync, batches, retire/free, barrier, takeover."""
from __future__ import annotations

import os
import signal
import time

import pytest

import shmrcu
from shmrcu.core import segment as seg

import _ctl_procs
from _threads import ReaderThread


def shm_used() -> int:
    st = os.statvfs(seg.SHM_DIR)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def stats_maps(rt, entries=128, kind="hash"):
    key = "I" if kind == "hash" else None
    a = rt.create_map(kind, key=key, value="Q", max_entries=entries, name="A")
    b = rt.create_map(kind, key=key, value="Q", max_entries=entries, name="B")
    cfg = rt.create_map("array_of_maps", max_entries=1, inner=a, name="cfg")
    return a, b, cfg


def run_accounting(rt, procs, sync: bool, swaps: int, per_section: int = 64, kind: str = "hash"):
    """Readers add into cfg[0]; the controller swaps A<->B, reads the retired totals, clears it."""
    a, b, cfg = stats_maps(rt, kind=kind)
    cfg.update(0, a, sync=False)
    ready = [procs.ctx.Event() for _ in range(2)]
    stop, results = procs.ctx.Event(), procs.ctx.Queue()
    for i in range(2):
        procs.start(_ctl_procs.accounting_reader, rt.name, ready[i], stop, results, per_section, i)
    assert all(e.wait(30) for e in ready)
    counted, live, spare = 0, a, b
    for _ in range(swaps):
        old = cfg.swap(0, spare, sync=sync)
        assert old.id == live.id
        counted += sum(v for _, v in old.items())
        old.clear()
        live, spare = spare, old
    stop.set()
    added = results.get(timeout=30) + results.get(timeout=30)
    counted += sum(v for _, v in live.items()) + sum(v for _, v in spare.items())
    return added, counted


def test_ab_accounting_is_exact_with_update_implies_sync(runtime, procs):
    added, counted = run_accounting(runtime, procs, sync=True, swaps=300)
    assert added > 0
    assert counted == added


def test_ab_accounting_without_grace_periods_loses_increments(runtime, procs):
    """The same check with sync=False and no synchronize must be able to fail.

    (Array inner maps here: without grace periods a hash map can never reuse
    the slots its clear() deleted, so readers would hit MapFull instead.)"""
    for attempt in range(5):
        added, counted = run_accounting(runtime, procs, sync=False, swaps=300, per_section=512,
                                        kind="array")
        if counted != added:
            break
        for n in ("cfg", "A", "B"):
            shmrcu.maps.destroy_map(runtime, runtime.map(n))
    assert counted < added, "increments added to a map after it was read and cleared must be lost"


def test_swap_waits_for_a_grace_period_by_default(runtime):
    a, b, cfg = stats_maps(runtime)
    cfg[0] = a
    with ReaderThread(runtime) as r:        # holds whatever it read until it is quiescent
        start = runtime.stats()["grace_periods"]
        old = cfg.swap(0, b, sync=False)    # opt-out: returns at once
        assert old.id == a.id and runtime.stats()["grace_periods"] == start
        with pytest.raises(shmrcu.GracePeriodTimeout):
            runtime.synchronize(timeout=0.05)
        r.quiescent()
        r.offline()
    before = runtime.stats()["grace_periods"]
    cfg[0] = a                              # default: one grace period
    assert runtime.stats()["grace_periods"] == before + 1


def test_failed_update_never_waits(runtime):
    a, b, cfg = stats_maps(runtime)
    wrong = runtime.create_map("hash", key="I", value="I", max_entries=128)
    cfg[0] = a
    with ReaderThread(runtime) as r:        # any wait would block (no quiescent state)
        before = runtime.stats()["grace_periods"]
        t0 = time.monotonic()
        with pytest.raises(ValueError) as exc:
            cfg[0] = wrong                  # template mismatch
        assert exc.value.errno == 22
        with pytest.raises(shmrcu.KeyExists):
            cfg.update(0, b, flags=shmrcu.NOEXIST)
        assert time.monotonic() - t0 < 0.5
        assert runtime.stats()["grace_periods"] == before
        r.offline()


def test_batch_of_ten_swaps_costs_one_grace_period(runtime):
    a, b, cfg = stats_maps(runtime)
    cfg[0] = a
    before = runtime.stats()["grace_periods"]
    with runtime.batch():
        for i in range(10):
            cfg.swap(0, b if i % 2 == 0 else a)
        assert runtime.stats()["grace_periods"] == before     # nothing waited inside
    assert runtime.stats()["grace_periods"] == before + 1


def test_retire_frees_in_the_background(runtime):
    m = runtime.create_map("array", value="Q", max_entries=1024, name="tmp")
    path = seg.SHM_DIR + seg.shm_name(runtime.name, f"map.{m.id}")
    assert os.path.exists(path)
    runtime.retire(m)
    deadline = time.monotonic() + 2
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not os.path.exists(path), "retired map not freed within ~100 ms of its grace period"
    assert "tmp" not in [i["name"] for i in runtime.maps()]
    with pytest.raises(shmrcu.MapClosed):
        m[0]


def test_retire_a_referenced_map_names_the_slot(runtime):
    a, b, cfg = stats_maps(runtime)
    cfg[0] = a
    with pytest.raises(shmrcu.MapInUse, match=r"cfg\[0\]"):
        runtime.retire(a)
    del cfg[0]
    runtime.retire(a)


def test_wait_unreferenced(runtime):
    a, b, cfg = stats_maps(runtime)
    cfg[0] = a
    with pytest.raises(shmrcu.GracePeriodTimeout, match=r"still referenced .* by cfg\[0\]"):
        runtime.wait_unreferenced(a, timeout=0.1)
    with ReaderThread(runtime) as r:
        cfg.swap(0, b, sync=False)
        with pytest.raises(shmrcu.GracePeriodTimeout) as exc:   # unreferenced, reader lags
            runtime.wait_unreferenced(a, timeout=0.1)
        assert exc.value.stalled[0].pid == os.getpid()
        r.offline()                          # the lagging reader lets go
        runtime.wait_unreferenced(a, timeout=5)


def test_barrier_returns_memory_while_a_reader_that_mapped_it_lives(runtime, procs):
    base = shm_used()
    size = 64 << 20
    maps = [runtime.create_map("array", value="Q", max_entries=size // 8, name=f"big{i}")
            for i in range(4)]
    for i, m in enumerate(maps):
        m[0] = i
    assert shm_used() - base >= 4 * size - (1 << 20)
    ready, housekeep, stop, info = (procs.ctx.Event(), procs.ctx.Event(), procs.ctx.Event(),
                                    procs.ctx.Queue())
    p = procs.start(_ctl_procs.map_holder, runtime.name, [m.name for m in maps], ready, housekeep,
                    stop, info)
    assert ready.wait(30)
    pid, total = info.get(timeout=10)
    assert total == 0 + 1 + 2 + 3
    for m in maps:
        runtime.retire(m)
    # grace periods pass (the reader is quiescent) but it has not unmapped yet
    with pytest.raises(shmrcu.GracePeriodTimeout, match="still mapped") as exc:
        runtime.barrier(timeout=0.3)
    assert [s.pid for s in exc.value.stalled] == [pid]
    assert shm_used() - base >= 4 * size - (1 << 20), "memory cannot be back while still mapped"
    housekeep.set()
    runtime.barrier(timeout=10)
    assert p.is_alive()
    assert shm_used() - base < 8 << 20, "the barrier returned before the memory came back"
    stop.set()
    p.join(10)


def test_takeover_completes_pending_frees(rt_name, procs):
    ready, release = procs.ctx.Event(), procs.ctx.Event()
    with shmrcu.Runtime.create(rt_name, max_workers=4) as setup:
        setup.release_control()
        holder = procs.start(_ctl_procs.hold_section, rt_name, ready, release)
        assert ready.wait(30)
        ctl_ready = procs.ctx.Event()
        ctl = procs.start(_ctl_procs.controller_takeover_child, rt_name, ctl_ready)
        assert ctl_ready.wait(30)
        os.kill(ctl.pid, signal.SIGKILL)
        ctl.join(10)
        retired = [i for i in setup.maps() if i["state"] == "retired"]
        assert len(retired) == 3                       # the reader blocked their free
        release.set()
        holder.join(10)
        with shmrcu.Runtime.attach(rt_name, controller=True) as rt:
            rt.barrier(timeout=10)
            assert [i for i in rt.maps() if i["state"] == "retired"] == []
            left = [n for n in seg.runtime_segments(rt_name) if ".map." in n]
            assert left == []
            rt.destroy()
    assert seg.runtime_segments(rt_name) == []


def test_barrier_and_housekeeping_race_from_many_threads(runtime):
    """The housekeeper thread, the free thread and a caller's barrier() all notice a
    free: racing them must neither fail (a CI failure once: KeyError) nor let
    barrier() return before a free the background thread had begun is done."""
    import threading
    maps = [runtime.create_map("array", value="Q", max_entries=4, name=f"m{i}") for i in range(40)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                runtime.housekeeping()
            except BaseException as e:       # noqa: BLE001 - the assertion below reports it
                errors.append(e)
                return

    import sys
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)              # switch threads often: make the race likely
    for t in threads:
        t.start()
    try:
        for m in maps:
            runtime.retire(m)
            runtime.barrier(timeout=10)
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(interval)
    assert errors == []
    assert all(m.closed for m in maps)
    from shmrcu import maps as maps_module
    assert not set(maps_module.mapped_ids(runtime)) & {m.id for m in maps}
