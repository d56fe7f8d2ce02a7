"""Races an independent review of the fork/thread change found (and their fixes).

* Runtime.close() while another thread waits for a grace period or holds a section
  (was: munmap under the waiter -> SIGSEGV; an early end of the other thread's section).
* fork() while another thread opens or closes a slot descriptor (was: the child kept
  an unregistered descriptor, hence the parent's slot lock, after the parent died).
* A reader SIGKILLed inside a section while a retired map waits for its free (was: the
  background free only polled, so it waited until someone else synchronized).
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import shmrcu
from shmrcu.core import segment as seg

import _procs
import _wait_procs
from _threads import ReaderThread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(shmrcu.__file__)))


@pytest.mark.timeout(60)
def test_close_while_another_thread_waits_never_faults(rt_name, procs):
    """A subprocess (so that a SIGSEGV is observed, not suffered): a thread blocks in
    synchronize() on a reader process's section, the main thread closes the runtime."""
    with shmrcu.Runtime.create(rt_name) as owner:
        ready, release, info = procs.ctx.Event(), procs.ctx.Event(), procs.ctx.Queue()
        holder = procs.start(_procs.hold_section, rt_name, ready, release, info)
        assert ready.wait(30)
        script = textwrap.dedent(f"""
            import threading, time, shmrcu
            rt = shmrcu.Runtime.attach({rt_name!r})
            out = []
            def waiter():
                try:
                    rt.synchronize()
                    out.append("returned")
                except shmrcu.ReaderClosed as e:
                    out.append("ReaderClosed")
            t = threading.Thread(target=waiter); t.start(); time.sleep(0.3)
            rt.close()
            t.join(5)
            try:
                rt.synchronize()
            except shmrcu.ReaderClosed:
                out.append("closed")
            print(",".join(out))
        """)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
        release.set()
        holder.join(10)
        assert r.returncode == 0, f"rc {r.returncode}: {r.stderr[-2000:]}"
        assert r.stdout.strip() == "ReaderClosed,closed"


def test_close_refuses_while_another_threads_reader_is_inside_a_section(runtime):
    other = shmrcu.Runtime.attach(runtime.name)
    try:
        with ReaderThread(other, mode="section") as t:
            with pytest.raises(shmrcu.ShmrcuError, match="other threads are online") as exc:
                other.close()
            assert exc.value.errno == errno.EBUSY
            with pytest.raises(shmrcu.GracePeriodTimeout):
                runtime.synchronize(timeout=0.1)     # its section is intact
            t.offline()
        other.close()
        assert other.closed
    finally:
        if not other.closed:
            other.close()


@pytest.mark.timeout(120)
def test_fork_while_another_thread_opens_descriptors_leaks_none(runtime):
    ctl = os.path.join(seg.SHM_DIR, seg.shm_name(runtime.name, "ctl").lstrip("/"))
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            runtime.reader().close()
    t = threading.Thread(target=churn)
    t.start()
    leaks = 0
    try:
        for _ in range(300):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    for fd in os.listdir("/proc/self/fd"):
                        try:
                            if os.readlink(f"/proc/self/fd/{fd}") == ctl:
                                code = 1
                        except OSError:
                            pass
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            leaks += os.waitstatus_to_exitcode(status) != 0
    finally:
        stop.set()
        t.join(10)
    assert leaks == 0, f"{leaks} of 300 forked children kept a descriptor of {ctl}"


@pytest.mark.timeout(60)
def test_background_free_is_not_held_by_a_reader_killed_in_its_section(runtime, procs):
    m = runtime.create_map("array", key="I", value="Q", max_entries=16, name="x")
    p = procs.start(_wait_procs.die_in_section, runtime.name)
    p.join(30)
    assert p.exitcode == -9 and len(runtime.readers_info()) == 1
    runtime.retire(m)
    deadline = time.monotonic() + 5
    while runtime.controller.pending()["retired"] and time.monotonic() < deadline:
        time.sleep(0.01)                    # nobody synchronizes: the free thread must cope
    assert runtime.controller.pending()["retired"] == 0
    assert [i["state"] for i in runtime.maps()] == []


def test_reader_close_from_another_thread_never_ends_its_section(runtime):
    got = {}

    def hold(ready, release):
        with runtime.reader() as r, r.section():
            got["reader"] = r
            ready.set()
            release.wait(10)
    ready, release = threading.Event(), threading.Event()
    t = threading.Thread(target=hold, args=(ready, release))
    t.start()
    try:
        assert ready.wait(10)
        with pytest.raises(shmrcu.ShmrcuError, match="another thread") as exc:
            got["reader"].close()
        assert exc.value.errno == errno.EBUSY
        with pytest.raises(shmrcu.GracePeriodTimeout):
            runtime.synchronize(timeout=0.1)          # still inside its section
    finally:
        release.set()
        t.join(10)
    runtime.synchronize(timeout=5)


def test_close_waits_for_nogil_batches_of_other_threads(rt_name):
    """rt.close() while another thread runs a GIL-free update_batch / lookup_batch on a map:
    close waits for the batch (it never unmaps under it: that was a SIGSEGV), the batch
    completes whole, and later uses raise instead of faulting."""
    np = pytest.importorskip("numpy")
    n = 400_000
    keys = np.arange(n, dtype=np.uint32)
    vals = np.repeat(np.arange(n, dtype=np.uint64), 2)
    for round_ in range(5):
        rt = shmrcu.Runtime.create(f"{rt_name}-{round_}")
        try:
            m = rt.create_map("hash", key="I", value="QQ", max_entries=n)
            started, outcome = threading.Event(), {}

            def batch():
                started.set()
                try:
                    outcome["updated"] = m.update_batch(keys, vals)
                    outcome["looked"] = len(m.lookup_batch(keys)) // 16   # bytes of "QQ" values
                except shmrcu.ShmrcuError as e:          # the lookup may find the map closed
                    outcome["error"] = type(e).__name__
            t = threading.Thread(target=batch)
            t.start()
            started.wait(10)
            time.sleep(0.005 * round_)
            rt.close()                                    # waits for the running batch
            t.join(30)
            assert outcome.get("updated") == n, outcome
            assert outcome.get("looked", n) == n and outcome.get("error") in (None, "MapClosed", "ReaderClosed")
            with pytest.raises(shmrcu.MapClosed):
                m.lookup_batch(keys[:10])
        finally:
            for name in seg.runtime_segments(f"{rt_name}-{round_}"):
                seg.unlink(name)


def test_close_gives_ebusy_if_a_batch_never_ends(rt_name):
    """A batch that does not end within the wait: EBUSY, and nothing was torn down."""
    from shmrcu.testing import _hooks
    rt = shmrcu.Runtime.create(rt_name)
    try:
        m = rt.create_map("hash", key="I", value="Q", max_entries=4)
        m[1] = 1
        rt.close_wait_s = 0.2
        _hooks.add_busy(m, 1)                         # as a batch running in another thread
        try:
            with pytest.raises(shmrcu.ShmrcuError) as ei:
                rt.close()
            assert ei.value.errno == errno.EBUSY and "batch" in str(ei.value)
            assert not rt.closed and m[1] == 1        # still whole and usable
        finally:
            _hooks.add_busy(m, -1)
    finally:
        rt.destroy()


def test_a_batch_counts_itself_before_it_runs_python_code(rt_name):
    """lookup_batch(default=...) runs Python code (packing the default) after checking the
    handle; a close() from another thread in that gap must wait for the batch, not unmap
    the view under it (then the batch ran on a zeroed view and raised struct.error)."""
    np = pytest.importorskip("numpy")
    rt = shmrcu.Runtime.create(rt_name)
    try:
        m = rt.create_map("hash", key="I", value="QQ", max_entries=8)
        m[1] = (1, 1)
        closed_at, in_pack = [], threading.Event()

        class SlowInt:
            def __index__(self):
                in_pack.set()
                time.sleep(0.3)                   # another thread closes meanwhile
                return 7

        def closer():
            in_pack.wait(10)
            rt.close()
            closed_at.append(time.monotonic())
        t = threading.Thread(target=closer)
        t.start()
        out = m.lookup_batch(np.array([1, 2], dtype=np.uint32), default=(SlowInt(), 7))
        done_at = time.monotonic()
        t.join(10)
        assert bytes(out) == np.array([1, 1, 7, 7], dtype=np.uint64).tobytes()
        assert closed_at and closed_at[0] >= done_at - 0.01      # close waited for the batch
    finally:
        for name in seg.runtime_segments(rt_name):
            seg.unlink(name)
