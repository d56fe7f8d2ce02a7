"""Child processes for the controller tests (importable by 'spawn')."""
from __future__ import annotations

import os
import random
import time

import shmrcu


def accounting_reader(name: str, ready, stop, results, per_section: int, seed: int) -> None:
    """The netd pattern's reader: inside a section, look up cfg[0] and add to it."""
    rng = random.Random(seed)
    added = 0
    with shmrcu.Runtime.attach(name) as rt, rt.reader() as r:
        cfg = rt.map("cfg")
        ready.set()
        keys = [rng.randrange(64) for _ in range(4096)]
        i = 0
        while not stop.is_set():
            with r.section():
                stats = cfg[0]
                for _ in range(per_section):
                    stats.add(keys[i & 4095], 1)
                    i += 1
            added += per_section
    results.put(added)


def map_holder(name: str, map_names: list, ready, housekeep, stop, info) -> None:
    """QSBR reader that maps the given maps, then keeps passing quiescent states
    without housekeeping until ``housekeep`` is set (so its mappings stay)."""
    with shmrcu.Runtime.attach(name) as rt, rt.reader() as r:
        rt._housekeeper_stop.set()            # a process whose housekeeping is late
        r.online()
        total = 0
        for n in map_names:
            m = rt.map(n)
            total += m[0]                     # touch it: the segment is mapped here now
        info.put((os.getpid(), total))
        ready.set()
        while not stop.is_set():
            r.quiescent()
            if housekeep.is_set():
                rt.housekeeping(r)
            time.sleep(0.001)
        r.offline()


def hold_section(name: str, ready, release) -> None:
    with shmrcu.Runtime.attach(name) as rt, rt.reader() as r:
        with r.section():
            ready.set()
            release.wait(60)


def controller_takeover_child(name: str, ready) -> None:
    """Take control, create maps, retire them while a reader blocks their grace
    period, then wait to be killed."""
    rt = shmrcu.Runtime.attach(name, controller=True)
    maps = [rt.create_map("array", value="Q", max_entries=1024, name=f"old{i}") for i in range(3)]
    for m in maps:
        rt.retire(m)
    ready.set()
    time.sleep(600)
