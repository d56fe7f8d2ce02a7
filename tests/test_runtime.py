"""Runtime lifecycle and bad input: every failure is a specific, actionable error."""
from __future__ import annotations

import errno
import os

import posix_ipc
import pytest

import shmrcu
from shmrcu.core import segment as seg
from shmrcu.core._epoch import LAYOUT

import _procs


def shm_path(name: str, part: str = "ctl") -> str:
    return seg.SHM_DIR + seg.shm_name(name, part)


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 65, "sp ace", "ünï", None, 3, "a\x00b"])
def test_bad_names_rejected(bad):
    with pytest.raises(ValueError, match=r"1-64 characters of \[A-Za-z0-9_.-\]"):
        shmrcu.Runtime.create(bad)
    with pytest.raises(ValueError, match="1-64 characters"):
        shmrcu.Runtime.attach(bad)


def test_good_name_edge_lengths(rt_name):
    name = (rt_name + "-" + "x" * 64)[:64]
    with shmrcu.Runtime.create(name) as rt:
        assert os.path.exists(shm_path(name))
        assert rt.name == name
    assert not os.path.exists(shm_path(name))


def test_create_attach_close_destroy(rt_name):
    rt = shmrcu.Runtime.create(rt_name, max_workers=4, mode=0o640)
    try:
        assert os.stat(shm_path(rt_name)).st_mode & 0o777 == 0o640
        other = shmrcu.Runtime.attach(rt_name)
        assert other.max_workers == 4 and other.mode == 0o640 and not other.is_controller
        other.close()
        other.close()  # idempotent
        with pytest.raises(shmrcu.ReaderClosed):
            other.synchronize()
    finally:
        removed = rt.destroy()
    assert seg.shm_name(rt_name, "ctl") in removed
    assert not os.path.exists(shm_path(rt_name))


def test_missing_runtime(rt_name):
    with pytest.raises(shmrcu.RuntimeNotFound, match=rt_name) as info:
        shmrcu.Runtime.attach(rt_name)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.errno == errno.ENOENT


def test_double_create(runtime):
    with pytest.raises(shmrcu.RuntimeExists, match="already exists") as info:
        shmrcu.Runtime.create(runtime.name)
    assert isinstance(info.value, FileExistsError)
    # the first runtime is untouched
    with shmrcu.Runtime.attach(runtime.name) as again:
        assert again.max_workers == runtime.max_workers


@pytest.mark.parametrize("kwargs, match", [
    ({"max_workers": 0}, "max_workers"),
    ({"max_workers": 10**6}, "max_workers"),
    ({"sections": "maybe"}, "sections"),
    ({"mode": 0o10000}, "mode"),
])
def test_bad_create_arguments(rt_name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        shmrcu.Runtime.create(rt_name, **kwargs)
    assert not os.path.exists(shm_path(rt_name))


def _write_foreign(name: str, data: bytes) -> None:
    shm = posix_ipc.SharedMemory(seg.shm_name(name, "ctl"), posix_ipc.O_CREX, size=len(data))
    os.pwrite(shm.fd, data, 0)
    shm.close_fd()


def test_foreign_segment_is_corrupt(rt_name):
    _write_foreign(rt_name, b"not a shmrcu segment".ljust(8192, b"\xff"))
    try:
        with pytest.raises(shmrcu.CorruptSegment, match="bad magic"):
            shmrcu.Runtime.attach(rt_name)
    finally:
        seg.unlink(seg.shm_name(rt_name, "ctl"))


def test_empty_segment_is_corrupt(rt_name):
    posix_ipc.SharedMemory(seg.shm_name(rt_name, "ctl"), posix_ipc.O_CREX).close_fd()
    try:
        with pytest.raises(shmrcu.CorruptSegment, match="truncated"):
            shmrcu.Runtime.attach(rt_name)
    finally:
        seg.unlink(seg.shm_name(rt_name, "ctl"))


@pytest.mark.parametrize("damage, match", [
    ("truncate_header", "truncated"),
    ("truncate_slots", "says it is"),
    ("version", "layout version"),
    ("slot_size", "sizes"),
    ("max_workers", "do not fit"),
])
def test_damaged_control_segment(runtime, damage, match):
    path = shm_path(runtime.name)
    with open(path, "r+b") as f:
        if damage == "truncate_header":
            f.truncate(100)
        elif damage == "truncate_slots":
            f.truncate(LAYOUT["header_size"] + 10)
        elif damage == "version":
            f.seek(8); f.write((99).to_bytes(4, "little"))
        elif damage == "slot_size":
            f.seek(28); f.write((7).to_bytes(4, "little"))
        elif damage == "max_workers":
            f.seek(24); f.write((10**6).to_bytes(4, "little"))
    with pytest.raises(shmrcu.CorruptSegment, match=match):
        shmrcu.Runtime.attach(runtime.name)
    runtime.close()   # our own mapping may now be past the end: do not touch it


def test_slot_exhaustion_names_max_workers(rt_name):
    with shmrcu.Runtime.create(rt_name, max_workers=2) as rt:
        a, b = rt.reader(), rt.reader()
        with pytest.raises(shmrcu.NoFreeSlot, match=r"all 2 worker slots.*max_workers"):
            rt.reader()
        a.close()
        c = rt.reader()                # a released slot is reusable at once
        assert c.slot_index == a.slot_index
        b.close(); c.close()


def test_slots_of_a_dead_process_are_reclaimed_on_claim(rt_name, procs):
    with shmrcu.Runtime.create(rt_name, max_workers=3) as rt:
        ready, done = procs.ctx.Event(), procs.ctx.Event()
        p = procs.start(_procs.claim_slots, rt_name, 3, ready, done)
        assert ready.wait(30)
        with pytest.raises(shmrcu.NoFreeSlot):
            rt.reader()
        p.kill(); p.join(10)
        readers = [rt.reader() for _ in range(3)]   # every slot came back
        assert sorted(r.slot_index for r in readers) == [0, 1, 2]
        assert rt.stats()["slots_reclaimed"] == 3
        for r in readers:
            r.close()


def test_reader_dropped_without_close_frees_its_slot(rt_name):
    with shmrcu.Runtime.create(rt_name, max_workers=1) as rt:
        r = rt.reader()
        del r
        with rt.reader() as again:
            assert again.slot_index == 0


def test_reader_state_machine(runtime):
    with runtime.reader() as r:
        assert not r.is_online and r.epoch == 0
        with pytest.raises(RuntimeError, match="online"):
            r.quiescent()
        with r.section():
            with r.section():
                assert r.depth == 2 and r.epoch == runtime.stats()["global_epoch"]
                with pytest.raises(RuntimeError, match="inside a read-side section"):
                    r.quiescent()
            assert r.depth == 1
        assert r.depth == 0 and r.epoch == 0
        r.online()
        runtime.start_grace_period()
        r.quiescent()
        assert r.epoch == runtime.stats()["global_epoch"]
        with r.section():        # a section inside QSBR-online keeps the slot online
            pass
        assert r.epoch != 0
        r.offline()
        assert r.epoch == 0
    with pytest.raises(shmrcu.ReaderClosed):
        r.online()
