"""How long a one-call reload takes: ``outer.replace`` of a 50,000-entry table, from a dict,
from a numpy structured array and from packed (keys, values) buffers, against the parts it is
made of (create_map + update_batch + swap + retire by hand).  A plain script:

    python bench/reload.py

Reports the median (and range) over 7 reloads of each; no reader is registered, so the grace
period inside the swap is the bookkeeping alone.
"""
import os
import statistics
import time

import numpy as np

import shmrcu

N = 50_000
ROUNDS = 7


def timed(fn):
    s = []
    for i in range(ROUNDS):
        t0 = time.perf_counter()
        fn(i)
        s.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(s), min(s), max(s)


def main():
    rt = shmrcu.Runtime.create(f"reload{os.getpid()}")
    try:
        tmpl = {"kind": "hash", "key": "I", "value": "QQ", "max_entries": N}
        outer = rt.create_map("array_of_maps", max_entries=1, name="cfg", inner=tmpl)
        keys = np.arange(N, dtype=np.uint32)
        vals = np.repeat(np.arange(N, dtype=np.uint64), 2)
        rows = np.zeros(N, dtype=[("k", "u4"), ("a", "u8"), ("b", "u8")])
        rows["k"], rows["a"], rows["b"] = keys, keys, keys
        as_dict = {int(k): (int(k), int(k)) for k in keys}

        def by_hand(i):
            new = rt.create_map("hash", key="I", value="QQ", max_entries=N)
            new.update_batch(keys, vals)
            old = outer.swap(0, new)
            if old is not None:
                rt.retire(old)
        results = [
            ("by hand: create + update_batch + swap + retire", timed(by_hand)),
            ("replace((keys, values) buffers)", timed(lambda i: outer.replace(0, (keys, vals)))),
            ("replace(numpy structured array)", timed(lambda i: outer.replace(0, rows))),
            ("replace(dict)", timed(lambda i: outer.replace(0, as_dict))),
        ]
        rt.barrier(timeout=30)
        for label, (med, lo, hi) in results:
            print(f"{label:48s} median {med:8.1f} ms  (range {lo:.1f}-{hi:.1f})  {N} entries")
    finally:
        rt.destroy()


if __name__ == "__main__":
    main()
