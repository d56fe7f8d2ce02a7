"""The controller lease: one controller at a time, released by the kernel at death."""
from __future__ import annotations

import os

import pytest

import shmrcu

import _procs


def test_second_controller_is_refused_with_the_holders_pid(runtime):
    assert runtime.is_controller
    other = shmrcu.Runtime.attach(runtime.name)
    try:
        assert not other.is_controller
        with pytest.raises(shmrcu.ControllerBusy, match=f"pid {os.getpid()}") as exc:
            other.take_control()
        assert exc.value.pid == os.getpid()
        with pytest.raises(shmrcu.ControllerBusy):
            shmrcu.Runtime.attach(runtime.name, controller=True)
        with pytest.raises(shmrcu.ShmrcuError, match="not the controller"):
            other.batch()
        with pytest.raises(shmrcu.ShmrcuError, match="only the controller"):
            other.destroy()
        runtime.release_control()          # a voluntary hand-over
        other.take_control()
        assert other.is_controller and not runtime.is_controller
        assert other.stats()["controller_pid"] == os.getpid()
        other.release_control()
        runtime.take_control()
    finally:
        other.close()


def test_lease_of_a_killed_controller_is_taken_over(rt_name, procs):
    ready, done = procs.ctx.Event(), procs.ctx.Event()
    p = procs.start(_procs.controller_then_wait, rt_name, ready, done)
    assert ready.wait(30)
    with pytest.raises(shmrcu.ControllerBusy, match=f"pid {p.pid}"):
        shmrcu.Runtime.attach(rt_name, controller=True)
    p.kill()
    p.join(10)
    with shmrcu.Runtime.attach(rt_name, controller=True) as rt:
        assert rt.is_controller
        rt.destroy()
    assert not any(n.startswith(f"shmrcu.{rt_name}.") for n in os.listdir("/dev/shm"))


def test_empty_batch_waits_for_nothing(runtime):
    with runtime.reader() as r:
        r.online()                        # a reader that never passes a quiescent state
        before = runtime.stats()["grace_periods"]
        with runtime.batch():
            pass                          # nothing changed: no grace period, no wait
        assert runtime.stats()["grace_periods"] == before
        r.offline()
