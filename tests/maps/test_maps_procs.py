"""Maps shared by real processes: concurrent inserts, exact atomic adds,
per-worker counters, read-only enforcement."""
from __future__ import annotations

import errno

import pytest

import shmrcu

import _map_procs
from shmrcu.testing import _hooks


def _run(procs, target, args_per_proc, timeout=120):
    """Start one process per args tuple, release them together, collect results."""
    ctx = procs.ctx
    go = ctx.Event()
    results = ctx.Queue()
    readies = []
    for args in args_per_proc:
        ready = ctx.Event()
        readies.append(ready)
        procs.start(target, *args, ready, go, results)
    for r in readies:
        assert r.wait(60), "a child did not start"
    go.set()
    out = [results.get(timeout=timeout) for _ in args_per_proc]
    for p in procs.started:
        p.join(30)
        assert p.exitcode == 0
    return out


def test_disjoint_concurrent_inserts(runtime, procs):
    n = 20000
    m = runtime.create_map("hash", key="I", value="Q", max_entries=2 * n, name="ins")
    _run(procs, _map_procs.insert_range, [(runtime.name, "ins", 0, n), (runtime.name, "ins", n, 2 * n)])
    assert len(m) == 2 * n
    for k in range(2 * n):
        assert m[k] == 2 * k
    st = m.stats()
    assert st["live"] == 2 * n and st["in_flight"] == 0


def test_same_key_concurrent_inserts_leave_one_copy(runtime, procs):
    # both processes insert the same keys: exactly one LIVE slot per key
    n = 5000
    m = runtime.create_map("hash", key="I", value="Q", max_entries=n, name="dup")
    _run(procs, _map_procs.insert_range, [(runtime.name, "dup", 0, n)] * 2)
    assert len(m) == n and m.stats()["live"] == n
    assert sorted(m.keys()) == list(range(n))


def test_concurrent_adds_are_exact(runtime, procs):
    keys = list(range(64))
    rounds = 3000
    m = runtime.create_map("hash", key="I", value="QQ", max_entries=128, name="ctr")
    _run(procs, _map_procs.add_same_keys, [(runtime.name, "ctr", keys, rounds)] * 2)
    for k in keys:
        assert m[k] == (2 * rounds, 4 * rounds)
    assert len(m) == len(keys)


def test_concurrent_adds_on_array_are_exact(runtime, procs):
    keys = list(range(16))
    rounds = 5000
    a = runtime.create_map("array", value="Q", max_entries=16, name="actr")
    _run(procs, _map_procs.add_same_keys, [(runtime.name, "actr", keys, rounds)] * 2)
    assert a.values() == [2 * rounds] * 16


@pytest.mark.parametrize("kind", ["per_worker_array", "per_worker_hash"])
def test_per_worker_counters_sum_exactly(runtime, procs, kind):
    keys = list(range(8))
    rounds = 2000
    m = runtime.create_map(kind, key=None if kind.endswith("array") else "I", value="Q",
                           max_entries=8, name="pw")
    out = _run(procs, _map_procs.count_per_worker, [(runtime.name, "pw", keys, rounds)] * 3)
    slots = sorted(r[1] for r in out)
    assert len(set(slots)) == 3
    for k in keys:
        assert m[k] == 3 * rounds
        copies = m.per_worker(k)
        assert len(copies) == runtime.max_workers
        assert sum(copies) == 3 * rounds and all(copies[s] == rounds for s in slots)


def test_per_worker_writes_from_controller_and_reader(runtime):
    m = runtime.create_map("per_worker_hash", key="I", value="QQ", max_entries=8)
    m[1] = (5, 6)                          # no reader here: copy 0 gets it, the sum is it
    assert m[1] == (5, 6)
    with pytest.raises(Exception, match="registered reader"):
        m.add(1, (1, 1))
    with runtime.reader() as r:
        m.add(1, (1, 2))
        expected = (6, 8) if r.index == 0 else (1, 2)
        assert m.per_worker(1)[r.index] == expected
        assert m[1] == (6, 8)


def test_worker_readonly_enforced_in_reader_process(runtime, procs):
    ro = runtime.create_map("hash", key="I", value="Q", max_entries=8, name="ro", worker_readonly=True)
    ro[1] = 42
    assert ro.writable                     # the controller maps it read-write
    results = procs.ctx.Queue()
    procs.start(_map_procs.try_writes, runtime.name, "ro", results)
    out = results.get(timeout=60)
    procs.started[0].join(30)
    assert procs.started[0].exitcode == 0          # no segfault
    assert out["value"] == 42 and out["writable"] is False
    for op in ("setitem", "update", "delitem", "add", "clear"):
        assert out[op] == ("ReadOnlyMap", errno.EPERM), op
    assert out["value_after"] == 42 and ro[1] == 42


def test_reader_process_opens_map_of_destroyed_runtime(rt_name, procs):
    import shmrcu
    rt = shmrcu.Runtime.create(rt_name)
    rt.create_map("array", value="Q", max_entries=2, name="gone")
    rt.destroy()
    results = procs.ctx.Queue()
    procs.start(_map_procs.open_and_report, rt_name, "gone", results)
    assert results.get(timeout=60) == ("RuntimeNotFound", errno.ENOENT)


def test_concurrent_churn_keeps_one_copy_per_key(runtime, procs):
    m = runtime.create_map("hash", key="I", value="Q", max_entries=48, name="churn")
    _run(procs, _map_procs.churn, [(runtime.name, "churn", s, 20000) for s in (1, 2)])
    keys = m.keys()
    assert len(keys) == len(set(keys)) == m.stats()["live"] == len(m)
    assert all(m[k] == k for k in keys)
    assert m.stats()["in_flight"] == 0


def test_insert_behind_a_dead_writers_half_insert_gives_up_with_a_clear_error(runtime):
    """A writer killed between claiming a slot and publishing it must not hang others."""
    import errno
    import time

    m = runtime.create_map("hash", key="I", value="Q", max_entries=64)
    _hooks.abandon_insert(m, 7)          # the state a SIGKILLed inserter of key 7 leaves
    m[8] = 1                           # other keys are unaffected
    t0 = time.monotonic()
    with pytest.raises(shmrcu.ShmrcuError, match="never finished") as exc:
        m[7] = 1
    assert exc.value.errno == errno.EBUSY
    assert 0.9 < time.monotonic() - t0 < 10
    assert m[8] == 1 and 7 not in m


def test_full_map_waits_for_inserts_in_flight(runtime):
    """A map filled only by reservations of inserts in flight is not full yet: those
    inserts may be of this key, or yield and give their reservation back."""
    import errno

    m = runtime.create_map("hash", key="I", value="Q", max_entries=2)
    m[1] = 1
    _hooks.abandon_insert(m, 2)          # an insert of key 2 in flight (here: never finishing)
    for key in (2, 3):
        with pytest.raises(shmrcu.ShmrcuError, match="never finished") as exc:
            m[key] = 5                 # not MapFull: it waits for that insert, then gives up
        assert exc.value.errno == errno.EBUSY
    m2 = runtime.create_map("hash", key="I", value="Q", max_entries=2)
    m2[1] = m2[2] = 1
    with pytest.raises(shmrcu.MapFull):
        m2[3] = 1                      # nothing in flight: really full, at once
