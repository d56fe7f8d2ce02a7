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
