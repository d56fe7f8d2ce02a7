"""Run inside a private mount namespace whose /dev/shm is a small tmpfs (see
test_memory.py): fill it, retire a map, and create another one with and
without ``wait_for_memory``.  Prints one JSON line of findings."""
from __future__ import annotations

import json
import sys
import threading

import shmrcu

MIB = 1 << 20


def main() -> None:
    out = {}
    with shmrcu.Runtime.create("shmfull") as rt:
        a = rt.create_map("array", value="Q", max_entries=40 * MIB // 8, name="a")
        rt.create_map("array", value="Q", max_entries=40 * MIB // 8, name="b")
        with rt.reader() as r:
            r.online()                       # holds every grace period until offline
            rt.retire(a)
            try:
                rt.create_map("array", value="Q", max_entries=40 * MIB // 8, name="c")
                out["first"] = "created"
            except shmrcu.OutOfSharedMemory as e:
                out["first"] = str(e)
                out["first_errno"] = e.errno
            threading.Timer(0.3, r.offline).start()
            c = rt.create_map("array", value="Q", max_entries=40 * MIB // 8, name="c",
                              wait_for_memory=True)
            c[0] = 7
            out["second"] = c[0]
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
