"""The long-lived controller that tests/test_prefork_serving.py starts, kills and restarts."""
from __future__ import annotations

import time

import shmrcu

KEYS = 64


def controller(name: str, started, stop, interval: float = 0.02) -> None:
    """Create or take over runtime ``name``; reload table version v (every key -> (v, v))
    every ``interval`` s with one ``outer.replace`` until ``stop``; leave the runtime alive."""
    rt = shmrcu.Runtime.create_or_take_over(name)
    try:
        try:
            outer = rt.map("blocklist")
        except shmrcu.MapNotFound:
            outer = rt.create_map("array_of_maps", max_entries=1, name="blocklist",
                                  inner={"kind": "hash", "key": "I", "value": "QQ", "max_entries": KEYS})
        while not stop.is_set():
            try:
                v = outer[0].version + 1                 # replace numbers it the same way
            except KeyError:
                v = 1
            info = outer.replace(0, {k: (v, v) for k in range(KEYS)})
            assert info["version"] == v
            started.set()
            time.sleep(interval)
    finally:
        rt.close()
