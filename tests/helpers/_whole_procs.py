"""Entry points of the processes that tests/maps/test_whole_values.py spawns."""
from __future__ import annotations

import os
import signal
import time
from array import array

import shmrcu
from shmrcu.maps import _kernels
from shmrcu.testing import _whole
from shmrcu.testing import _hooks


def _whole_py(v) -> bool:
    """A value read from Python is whole when all its fields are equal (a ``"32s"``
    value: all its bytes; ``set()`` of bytes is the set of byte values)."""
    if isinstance(v, tuple) and len(v) == 1 and isinstance(v[0], bytes):
        v = v[0]
    return len(set(v)) <= 1


def writer(rt_name: str, map_name: str, n_keys: int, torn: bool, repeat_byte: bool,
           ready, stop, results) -> None:
    """Rewrite every key with whole values as fast as it can, until ``stop``."""
    with shmrcu.Runtime.attach(rt_name) as rt:
        m = rt.map(map_name)
        _kernels._set_torn_writes(torn)
        ready.set()
        n = 0
        while not stop.is_set():
            n += _whole.write_loop(m, n_keys, 0.2, 0, repeat_byte)
        results.put(("writer", n))


def reader(rt_name: str, map_name: str, n_keys: int, mode: str, reads: int, ready, go, results) -> None:
    """Read ``reads`` values one way (python, get, batch, kernel, items); count torn ones."""
    with shmrcu.Runtime.attach(rt_name) as rt, rt.reader() as r:
        m = rt.map(map_name)
        ready.set()
        go.wait(60)
        torn = done = 0
        if mode == "kernel":
            with r.section():
                whole, torn, missing = _whole.read_loop(m, n_keys, reads)
            done = whole + torn
        elif mode == "batch":
            keys = array("I", [i % n_keys for i in range(4096)])
            out = None
            while done < reads:
                with r.section():
                    out = m.lookup_batch(keys, out)
                torn += _whole.count_torn(out, len(out) // 4096)
                done += 4096
        elif mode in ("python", "get"):
            while done < reads:
                with r.section():
                    for k in range(n_keys):
                        v = m[k] if mode == "python" else m.get(k)
                        if not _whole_py(v):
                            torn += 1
                done += n_keys
        elif mode == "dump":                  # `shmrcu map dump`'s data, as the CLI prints it
            from shmrcu.cli import ops
            while done < reads:
                for e in ops.map_dump(rt_name, map_name)["entries"]:
                    if len(set(e["value"])) > 1:
                        torn += 1
                    done += 1
        elif mode == "items":
            while done < reads:
                with r.section():
                    for _, v in m.items():
                        if not _whole_py(v):
                            torn += 1
                        done += 1
        else:
            raise ValueError(mode)
        results.put((mode, done, torn))


def abandon_update_and_die(rt_name: str, map_name: str, key, value, results) -> None:
    """Claim ``key``'s cell, write half of ``value``, then die by SIGKILL mid-update."""
    rt = shmrcu.Runtime.attach(rt_name)
    m = rt.map(map_name)
    _hooks.abandon_update(m, key, value)
    results.put(("claimed", rt._control.writer_id))
    time.sleep(0.2)               # let the queue's feeder thread flush
    os.kill(os.getpid(), signal.SIGKILL)


def abandon_update_and_hang(rt_name: str, map_name: str, key, value, results) -> None:
    """Claim ``key``'s cell and stay alive holding it (a stopped writer)."""
    rt = shmrcu.Runtime.attach(rt_name)
    m = rt.map(map_name)
    _hooks.abandon_update(m, key, value)
    results.put(("claimed", rt._control.writer_id))
    time.sleep(600)
