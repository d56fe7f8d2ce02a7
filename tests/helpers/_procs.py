"""Entry points of the real processes that tests spawn (importable by 'spawn')."""
from __future__ import annotations

import os
import time

import shmrcu
from shmrcu.core import segment as seg
from shmrcu.testing import _torture


def torture_reader(name: str, qsbr: bool, reads: int, results) -> None:
    with shmrcu.Runtime.attach(name) as rt, rt.reader() as reader:
        area = seg.Segment.open(seg.shm_name(name, "torture"))
        try:
            results.put(("qsbr" if qsbr else "sections",) + _torture.read_loop(reader, area.mapping, reads, qsbr))
        finally:
            area.close()


def hold_section(name: str, ready, release, info) -> None:
    """Enter a section, say so, and stay in it until ``release`` is set."""
    with shmrcu.Runtime.attach(name) as rt, rt.reader() as reader:
        with reader.section():
            info.put((os.getpid(), reader.slot_index))
            ready.set()
            while not release.wait(0.01):
                pass
        info.put("left")
        release.clear()
        release.wait(30)


def busy_sections(name: str, ready, stop) -> None:
    """Short sections back to back (a web-server-like reader)."""
    with shmrcu.Runtime.attach(name) as rt, rt.reader() as reader:
        ready.set()
        section = reader.section
        while not stop.is_set():
            for _ in range(1000):
                with section():
                    pass


def claim_slots(name: str, n: int, ready, done) -> None:
    with shmrcu.Runtime.attach(name) as rt:
        readers = [rt.reader() for _ in range(n)]
        ready.set()
        done.wait(30)
        del readers


def controller_then_wait(name: str, ready, done) -> None:
    """Create a runtime (holding the controller lease) and wait to be killed."""
    rt = shmrcu.Runtime.create(name)
    ready.set()
    done.wait(60)
    rt.destroy()
