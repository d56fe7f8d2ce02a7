"""Per-call costs of the controller's swap and a reader's outer -> inner resolution.

A plain script, so that two checkouts can be compared in one run on one machine:

    PYTHONPATH=/path/to/old/checkout python bench/ab_paths.py
    PYTHONPATH=/path/to/new/checkout python bench/ab_paths.py

Reports the median (and range) over 9 rounds of: ``outer.swap`` with and without
its grace period (no reader registered: the bookkeeping around the exchange,
not the wait), ``outer[0]`` from a non-controller runtime inside a section (the
section guard's cost), and ``m[k]`` inside a section (must not change).
"""
import os

import shmrcu
from _ab import per_call_ns, report



def main():
    rt = shmrcu.Runtime.create(f"abpaths{os.getpid()}")
    try:
        a = rt.create_map("hash", key="I", value="Q", max_entries=64, name="a")
        b = rt.create_map("hash", key="I", value="Q", max_entries=64, name="b")
        a[1] = 5
        cfg = rt.create_map("array_of_maps", max_entries=1, inner=a, name="cfg")
        cfg.update(0, a, sync=False)
        rows = [("outer.swap(sync=False)", per_call_ns(lambda i: cfg.swap(0, b if i & 1 else a, sync=False), 2000)),
                ("outer.swap(sync=True)", per_call_ns(lambda i: cfg.swap(0, b if i & 1 else a), 2000))]
        cfg.swap(0, a, sync=False)
        other = shmrcu.Runtime.attach(rt.name)
        r = other.reader()
        outer, inner = other.map("cfg"), other.map("a")
        with r.section():
            rows.append(("outer[0] in a section (reader)", per_call_ns(lambda i: outer[0], 20000)))
            rows.append(("m[k] in a section", per_call_ns(lambda i: inner[1], 20000)))
        r.close()
        other.close()
        report(rows)
    finally:
        rt.destroy()


if __name__ == "__main__":
    main()
