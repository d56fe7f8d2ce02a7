"""Per-call costs of reading and writing values: single-u64 ("Q") and multi-field ("QQQQ").

A plain script, so that two checkouts can be compared in one run on one machine
(whole values, issue 11: before/after):

    PYTHONPATH=/path/to/old/checkout python bench/ab_values.py
    PYTHONPATH=/path/to/new/checkout python bench/ab_values.py

Reports the median (and range) over 9 rounds of, for each value format:
``m[k]`` inside one long section, one section per lookup (``with r.section(): m[k]``),
``lookup_batch`` of 4096 keys (per key), ``m[k] = v`` (an update of an existing key),
and ``update_batch`` of 4096 existing keys (per key).  Maps: hash, key "I", 4096 keys.
"""
import os
from array import array

import shmrcu
from _ab import per_call_ns, report

KEYS = 4096


def rows_for(rt, r, fmt):
    m = rt.create_map("hash", key="I", value=fmt, max_entries=KEYS, name=f"v{fmt}")
    nf = len(fmt)
    val = (lambda i: i) if nf == 1 else (lambda i: (i,) * nf)
    for k in range(KEYS):
        m[k] = val(k)
    keys = array("I", range(KEYS))
    vals = array("Q", [k for k in range(KEYS) for _ in range(nf)])
    out = m.lookup_batch(keys)
    mask = KEYS - 1
    rows = []
    with r.section():
        rows.append((f"{fmt}: m[k] in a section", per_call_ns(lambda i: m[i & mask], 20000)))
    sec = r.section

    def one(i):
        with sec():
            m[i & mask]
    rows.append((f"{fmt}: one section per lookup", per_call_ns(one, 20000)))
    with r.section():
        rows.append((f"{fmt}: lookup_batch (per key)",
                     per_call_ns(lambda i: m.lookup_batch(keys, out), 50, KEYS)))

    def upd(i):
        m[i & mask] = val(i)
    rows.append((f"{fmt}: m[k] = v (existing key)", per_call_ns(upd, 20000)))
    rows.append((f"{fmt}: update_batch (per key)", per_call_ns(lambda i: m.update_batch(keys, vals), 50, KEYS)))
    return rows


def main():
    rt = shmrcu.Runtime.create(f"abvalues{os.getpid()}")
    try:
        r = rt.reader()
        rows = rows_for(rt, r, "Q") + rows_for(rt, r, "QQQQ")
        r.close()
        report(rows)
    finally:
        rt.destroy()


if __name__ == "__main__":
    main()
