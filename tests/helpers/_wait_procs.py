"""Entry points of the processes that test_threads_waits.py spawns (importable by 'spawn')."""
from __future__ import annotations

import os
import time

import shmrcu
from shmrcu.testing import _hooks


def map_then_reader(name: str, cmds, replies) -> None:
    """Map the map "victim" with housekeeping stopped (a process that has not got round
    to it yet), register a reader only when told to (after the controller freed the
    map), then run housekeeping when told to."""
    rt = shmrcu.Runtime.attach(name)
    rt._housekeeper_stop.set()              # no background unmapping in this process
    thread = getattr(rt, "_housekeeper_thread", None)
    if thread is not None:
        thread.join(5)
    else:
        time.sleep(0.1)
    m = rt.map("victim")
    replies.put(("mapped", os.getpid(), m.id, len(m)))
    assert cmds.get(timeout=60) == "reader"
    r = rt.reader()
    replies.put(("reader", r.slot_index))
    assert cmds.get(timeout=60) == "housekeeping"
    rt.housekeeping()
    replies.put(("housekept",))
    cmds.get(timeout=60)                    # "exit"
    r.close()
    rt.close()


def abandon_insert_and_die(name: str, map_name: str, key: int) -> None:
    """A writer that dies between claiming a hash slot and publishing it."""
    rt = shmrcu.Runtime.attach(name)
    _hooks.abandon_insert(rt.map(map_name), key)
    os._exit(0)                             # no cleanup of any kind: as if SIGKILLed


def delete_key_loop(name: str, map_name: str, key: int, seconds: float, ready, out) -> None:
    """Delete ``key`` as fast as possible for ``seconds`` (a concurrent deleter)."""
    rt = shmrcu.Runtime.attach(name)
    m = rt.map(map_name)
    n = 0
    ready.set()
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        try:
            del m[key]
            n += 1
        except KeyError:
            pass
    out.put(n)
    rt.close()


def outer_exchange_or_delete(name: str, map_name: str, role: str, key: int, seconds: float,
                             ready, start, out) -> None:
    """Raw inner-id traffic on one outer hash key: role "x" exchanges in fresh odd ids,
    role "d" deletes the key and inserts fresh even ids (NOEXIST).  Reports every id it
    stored and every old id the map handed back to it."""
    rt = shmrcu.Runtime.attach(name)
    o = rt.map(map_name)
    stored: list[int] = []
    got: list[int] = []
    nxt = 1 if role == "x" else 2
    ready.put(role)
    start.wait(60)
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        if role == "x":
            old = o._swap_id(key, nxt)
            stored.append(nxt)
            nxt += 2
            if old:
                got.append(old)
        else:
            try:
                got.append(o._swap_id(key, 0))
            except KeyError:
                pass
            try:
                o._swap_id(key, nxt, shmrcu.NOEXIST)
                stored.append(nxt)
                nxt += 2
            except (KeyError, shmrcu.KeyExists):
                pass
    out.put((role, stored, got))
    rt.close()


def delete_sync_reinsert(name: str, map_name: str, seconds: float, ready, out) -> None:
    """Delete key 1, wait a grace period (its slot may be reused now), insert key 2 and
    check that key 2 holds what we wrote (a controller-side write of key 1 that found
    the old slot must never land in the reused one)."""
    rt = shmrcu.Runtime.attach(name)
    m = rt.map(map_name)
    n = bad = 0
    seen: list = []
    ready.set()
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        try:
            del m[1]
        except KeyError:
            pass
        rt.synchronize()
        try:
            m[2] = 222
        except shmrcu.ShmrcuError:
            continue
        n += 1
        v = m.get(2)
        if v != 222:
            bad += 1
            seen.append(v)
        try:
            del m[2]
        except KeyError:
            pass
        rt.synchronize()
    out.put((n, bad, seen[:5]))
    rt.close()


def die_in_section(name: str) -> None:
    """Enter a section and die there by SIGKILL (no cleanup of any kind)."""
    import signal
    rt = shmrcu.Runtime.attach(name)
    r = rt.reader()
    with r.section():
        os.kill(os.getpid(), signal.SIGKILL)
