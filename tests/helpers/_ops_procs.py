"""Child processes for tests/cli/test_cli_ops.py (importable by 'spawn')."""
from __future__ import annotations

import time

import shmrcu


def controller_with_maps(name: str, ready, reader: bool = True) -> None:
    """Create runtime ``name`` with a few maps (and a reader), then wait to be SIGKILLed."""
    rt = shmrcu.Runtime.create(name, max_workers=4)
    stats = rt.create_map("hash", key="I", value="QQ", max_entries=128, name="stats")
    stats[10001] = (1, 100)
    cfg = rt.create_map("array_of_maps", max_entries=2, inner=stats, name="cfg")
    cfg[0] = stats
    rt.create_map("array", value="Q", max_entries=16, name="arr")
    r = rt.reader(worker_id=0) if reader else None
    ready.set()
    time.sleep(60)
    del r
    rt.destroy()
