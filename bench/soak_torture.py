"""Soak the grace-period torture matrix: >= 10^8 checked reads, violations must be 0.

    python bench/soak_torture.py --reads 100000000            # the whole matrix
    python bench/soak_torture.py --reads 2e7 --cells fence-qsbr-threads,membarrier-sections-fork
    python bench/soak_torture.py --broken                      # mutation check: every cell must see violations

The cells are those of tests/test_torture_matrix.py ({fence, membarrier} x
{sections, qsbr} x {procs, threads, fork}), each with the updater
(synchronize), the poller (start/poll_grace_period), map churn (create / swap /
retire / background free / poison after free) and periodic barrier() running
during the reads (tests/helpers/_torture_procs.py).  ``--reads`` is the total over the
selected cells, split evenly between cells and between each cell's readers.
Prints one line per cell (reads, violations per protected object, grace periods,
maps churned, reads/s) and exits 1 on any violation or error.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (os.path.join(ROOT, "tests", "helpers"), ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)

import shmrcu  # noqa: E402
from shmrcu.core import segment as seg  # noqa: E402

import _torture_procs as tp  # noqa: E402
from _spawn import Procs  # noqa: E402


def all_cells() -> list[tuple[str, str, str]]:
    return [(s, st, m) for s in tp.SECTIONS for st in tp.STYLES for m in tp.MODELS]


def run(cells, total_reads: int, broken: bool, max_seconds: float) -> int:
    per_cell = max(1, total_reads // len(cells))
    procs = Procs()
    failures = 0
    grand = 0
    t_all = time.monotonic()
    print(f"{'cell':32} {'readers':>7} {'reads':>12} {'viol(main/poll/map)':>20} {'synchronize':>11} "
          f"{'polled GPs':>10} {'maps':>6} {'barriers':>8} {'stale_acks':>10} {'secs':>6} {'reads/s':>12}",
          flush=True)
    for i, (sections, style, model) in enumerate(cells):
        label = f"{sections}-{style}-{model}"
        name = f"soak{os.getpid()}-{i}"
        rt = shmrcu.Runtime.create(name, sections=sections, max_workers=16)
        try:
            if rt.sections != sections:
                print(f"{label:32} SKIPPED: no usable membarrier(GLOBAL_EXPEDITED) on this kernel", flush=True)
                continue
            n = tp.READERS[model]
            reads = max(1, per_cell // n)
            if broken:      # readers stop at the first violation: give them room to meet one
                reads = max(reads, 20_000_000)
            out = tp.run_cell(rt, procs, model, style, reads, broken,
                              max_seconds=max_seconds)
        finally:
            procs.reap()
            if not rt.closed:
                rt.destroy()
            for leftover in seg.runtime_segments(name):
                seg.unlink(leftover)
        ok = [r for r in out["readers"] if "error" not in r]
        read_s = max((r["seconds"] for r in ok), default=0.0)
        rate = out["reads"] / read_s if read_s else 0.0
        grand += out["reads"]
        viol = f"{out['bad_main']}/{out['bad_poll']}/{out['bad_map']}"
        print(f"{label:32} {len(ok):>7} {out['reads']:>12,} {viol:>20} {out['updates']:>11,} "
              f"{out['poller']['updates']:>10,} {out['churn']['maps']:>6,} {out['barrier']['barriers']:>8,} "
              f"{out['stale_acks']:>10} {read_s:>6.1f} {rate:>12,.0f}", flush=True)
        for e in out["errors"]:
            print(f"    ERROR: {e}", flush=True)
        if out["errors"]:
            failures += 1
        elif broken:
            if out["bad_main"] == 0:
                print("    MISSED: a broken synchronize went unnoticed in this cell", flush=True)
                failures += 1
        elif out["bad_main"] or out["bad_poll"] or out["bad_map"]:
            print("    VIOLATIONS: a reader saw freed data", flush=True)
            failures += 1
    print(f"total: {grand:,} checked reads in {time.monotonic() - t_all:.0f}s over {len(cells)} cells; "
          f"{'mutation check' if broken else 'violations'}: "
          f"{'FAILED in ' + str(failures) + ' cell(s)' if failures else ('caught everywhere' if broken else 0)}",
          flush=True)
    return 1 if failures else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reads", type=float, default=1e8, help="checked reads in total (default 1e8)")
    ap.add_argument("--cells", default="", help="comma-separated sections-style-model cells (default: all 12)")
    ap.add_argument("--broken", action="store_true",
                    help="mutation check: synchronize does not wait; every cell must see violations")
    ap.add_argument("--max-seconds", type=float, default=900.0, help="limit per cell (default 900)")
    args = ap.parse_args(argv)
    cells = all_cells()
    if args.cells:
        want = {c.strip() for c in args.cells.split(",") if c.strip()}
        unknown = want - {"-".join(c) for c in cells}
        if unknown:
            ap.error(f"unknown cells {sorted(unknown)}; known: {', '.join('-'.join(c) for c in cells)}")
        cells = [c for c in cells if "-".join(c) in want]
    return run(cells, int(args.reads), args.broken, args.max_seconds)


if __name__ == "__main__":
    sys.exit(main())
