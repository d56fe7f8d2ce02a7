"""The runtime outlives its controller; attached processes never serve a destroyed runtime.

``Runtime.create_or_take_over`` is the long-lived controller's one call (``close``/``with``
leave the runtime alive); ``destroy`` (and ``shmrcu cleanup``) first mark every map freed and
the control segment destroyed, so attached processes raise ``RuntimeDestroyed`` (ESTALE) at
their next map access, section, quiescent point or runtime call, and can attach the
re-created runtime; ``cleanup`` never removes a runtime with live readers unless forced.
"""
from __future__ import annotations

import errno
import os

import pytest

import shmrcu
from shmrcu.cli import ops
from shmrcu.core import segment as seg

import _lifecycle_procs


def _segments(name):
    return seg.runtime_segments(name)


def test_create_or_take_over_outlives_its_controller(rt_name):
    rt = shmrcu.Runtime.create_or_take_over(rt_name)      # creates
    m = rt.create_map("hash", key="I", value="Q", max_entries=8, name="cfg")
    m[1] = 5
    with rt:
        pass                                               # closes, never destroys
    assert rt.closed and _segments(rt_name)
    again = shmrcu.Runtime.create_or_take_over(rt_name)   # takes over
    try:
        assert again.is_controller and again.map("cfg")[1] == 5
        with pytest.raises(shmrcu.ControllerBusy):
            shmrcu.Runtime.create_or_take_over(rt_name)    # a live controller holds it
    finally:
        again.destroy()
    assert not _segments(rt_name)


def test_controller_process_exit_leaves_the_runtime_to_its_successor(rt_name, procs):
    done = procs.ctx.Event()
    p = procs.start(_lifecycle_procs.dead_controller, rt_name, done)
    assert done.wait(60)
    p.join(30)
    assert p.exitcode == 0
    rt = shmrcu.Runtime.create_or_take_over(rt_name)
    try:
        assert rt.map("cfg")[1] == 11
    finally:
        rt.destroy()


def test_destroy_makes_attached_processes_raise_and_reattach(rt_name, procs):
    rt = shmrcu.Runtime.create(rt_name)
    rt.create_map("hash", key="I", value="Q", max_entries=8, name="cfg")[1] = 1
    ctx = procs.ctx
    ready, destroyed, recreated, results = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
    procs.start(_lifecycle_procs.reader_through_destroy, rt_name, ready, destroyed, recreated, results)
    assert ready.wait(60)
    rt.destroy()
    destroyed.set()
    rt2 = shmrcu.Runtime.create(rt_name)                   # a new incarnation, same name
    try:
        rt2.create_map("hash", key="I", value="Q", max_entries=8, name="cfg")[1] = 2
        recreated.set()
        out = results.get(timeout=60)
    finally:
        rt2.destroy()
    estale = ("RuntimeDestroyed", errno.ESTALE)
    assert out == {"before": 1, "m[k]": estale, "section": estale, "rt.map": estale,
                   "rt.reader": estale, "after": 2}


def test_cleanup_never_removes_a_runtime_that_readers_still_serve(rt_name, procs):
    ctx = procs.ctx
    done = ctx.Event()
    procs.start(_lifecycle_procs.dead_controller, rt_name, done)
    assert done.wait(60)
    procs.started[0].join(30)
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    reader = procs.start(_lifecycle_procs.idle_reader, rt_name, ready, stop, results)
    assert ready.wait(60)
    (entry,) = [e for e in ops.list_runtimes() if e["name"] == rt_name]
    assert entry["state"] == "dead" and entry["readers"] == 1 and entry["reader_pids"] == [reader.pid]
    res = ops.cleanup(prefix=rt_name)
    assert not res["removed"] and "live reader" in res["skipped"][0]["reason"]
    with pytest.raises(ops.OpsError, match="live reader"):
        ops.cleanup(rt_name)
    assert _segments(rt_name)
    res = ops.cleanup(rt_name, force=True)                 # named and forced: removed ...
    assert res["removed"] and not _segments(rt_name)
    stop.set()
    assert results.get(timeout=60) == ("RuntimeDestroyed", errno.ESTALE)   # ... and never served


def test_fork_child_of_a_destroyed_and_recreated_runtime_raises(rt_name):
    """A fork child re-attaches by name; if the runtime was destroyed and re-created since the
    fork, its maps (whose ids now name other maps) are never served: RuntimeDestroyed."""
    rt = shmrcu.Runtime.create(rt_name)
    m = rt.create_map("hash", key="I", value="Q", max_entries=4, name="routes")
    m[1] = 1
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:                                           # child: wait, then use what it inherited
        code = 1
        try:
            os.read(go_r, 1)
            try:
                m[1]
                code = 2                                   # served something: the bug
            except shmrcu.RuntimeDestroyed:
                code = 0
        finally:
            os.write(w, bytes([code]))
            os._exit(0)
    rt.destroy()
    rt2 = shmrcu.Runtime.create(rt_name)
    try:
        rt2.create_map("hash", key="I", value="Q", max_entries=4, name="other")[1] = 999   # id 1 again
        os.write(go_w, b"g")
        assert os.read(r, 1) == b"\x00"
    finally:
        os.waitpid(pid, 0)
        rt2.destroy()


def test_destroy_refused_with_ebusy_leaves_the_runtime_whole(rt_name):
    import threading
    rt = shmrcu.Runtime.create(rt_name)
    m = rt.create_map("hash", key="I", value="Q", max_entries=4, name="cfg")
    m[1] = 1
    inside, leave = threading.Event(), threading.Event()

    def reader():
        with rt.reader() as r, r.section():
            inside.set()
            leave.wait(10)
    t = threading.Thread(target=reader)
    t.start()
    try:
        inside.wait(10)
        with pytest.raises(shmrcu.ShmrcuError) as ei:
            rt.destroy()
        assert ei.value.errno == errno.EBUSY
        assert m[1] == 1 and rt.map("cfg")[1] == 1         # not marked destroyed
    finally:
        leave.set()
        t.join(10)
    rt.destroy()


def test_create_or_take_over_clears_a_destroyed_leftover(rt_name):
    """A destroyer that died after marking the runtime (segments still there, nobody holds the
    lease): the next create_or_take_over removes the leftover and creates a fresh runtime."""
    rt = shmrcu.Runtime.create(rt_name)
    rt.create_map("hash", key="I", value="Q", max_entries=4, name="cfg")
    old = rt.incarnation
    rt._mark_destroyed()
    rt.close()                                             # segments stay: the destroyer "died"
    with pytest.raises(shmrcu.RuntimeNotFound, match="destroyed"):
        shmrcu.Runtime.attach(rt_name)
    fresh = shmrcu.Runtime.create_or_take_over(rt_name)
    try:
        assert fresh.incarnation != old and fresh.maps() == []
    finally:
        fresh.destroy()


def test_unmapped_after_destroy_still_says_runtime_destroyed(rt_name):
    """After its housekeeping unmapped the maps of a destroyed runtime, an attached process
    still gets RuntimeDestroyed (it re-attaches on that), not a bare MapClosed."""
    rt = shmrcu.Runtime.create(rt_name)
    rt.create_map("hash", key="I", value="QQ", max_entries=4, name="cfg")[1] = (1, 1)
    other = shmrcu.Runtime.attach(rt_name)
    m = other.map("cfg")
    assert m[1] == (1, 1)
    rt.destroy()
    other.housekeeping()                                   # unmaps the freed maps
    assert m.closed
    for use in (lambda: m[1], lambda: m.lookup_batch(b"\x01\x00\x00\x00"), lambda: m.get(1)):
        with pytest.raises(shmrcu.RuntimeDestroyed):
            use()
    other.close()
