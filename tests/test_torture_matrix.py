"""Grace-period torture over the matrix of ways a program reads:

{fence, membarrier} x {sections, QSBR} x {reader processes, reader threads in one
process, forked children}, each with an updater (synchronize), a poller
(start/poll_grace_period) and map churn (create / swap / retire / background free /
barrier) running during the reads.  Every cell runs twice: with the real
synchronize (no violation anywhere) and with a synchronize that does not wait
(the mutation check: the main area must see violations).  The controller side and
the reader entry points are in _torture_procs.py; bench/soak_torture.py runs the
same cells for >= 10^8 reads.
"""
from __future__ import annotations

import pytest

import shmrcu

import _torture_procs as tp

# Per reader.  A checked read costs 50-150 ns, so 200k reads would be over in
# 20 ms, before most map swaps and grace periods; 1M keeps every reader busy for
# ~0.1-0.3 s while the updater, the poller and the churn run (a cell ~1-1.5 s).
READS = 1_000_000
# Broken runs stop at the first violation; a small fixed budget can end before the
# updater gets a CPU (seen with 28k reads per reader), so the ceiling is high.
BROKEN_READS = 20 * READS


def _cell_id(cell) -> str:
    return "-".join(cell)


CELLS = [(s, st, m) for s in tp.SECTIONS for st in tp.STYLES for m in tp.MODELS]


def _runtime(rt_name: str, sections: str) -> shmrcu.Runtime:
    rt = shmrcu.Runtime.create(rt_name, sections=sections, max_workers=16)
    if rt.sections != sections:
        rt.destroy()
        pytest.skip(f"sections={sections!r} unavailable here (the kernel has no usable "
                    f"membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)): the runtime fell back to fences")
    return rt


def _summary(out: dict) -> str:
    return (f"{out['sections']}/{out['style']}/{out['model']}: reads={out['reads']} "
            f"main={out['bad_main']} poll={out['bad_poll']} map={out['bad_map']} "
            f"updates={out['updates']} polled={out['poller']} churn={out['churn']} "
            f"barrier={out.get('barrier')} switches={out['switches']} housekeeps={out['housekeeps']} "
            f"stale_acks={out['stale_acks']} {out['seconds']:.2f}s")


@pytest.mark.parametrize("cell", CELLS, ids=_cell_id)
def test_torture_cell_no_violations(rt_name, procs, cell):
    sections, style, model = cell
    reads = READS
    for attempt in range(3):
        rt = _runtime(f"{rt_name}.{attempt}" if attempt else rt_name, sections)
        try:
            out = tp.run_cell(rt, procs, model, style, reads, broken=False)
        finally:
            rt.destroy()
        print(_summary(out))
        assert not out["errors"], "\n".join(out["errors"])
        n = tp.READERS[model]
        assert len(out["readers"]) == n
        assert all(r["reads"] == reads for r in out["readers"]), _summary(out)
        # violations fail at once; too little concurrent activity (a loaded machine
        # starved the updaters during the reads) only earns a longer rerun
        assert (out["bad_main"], out["bad_poll"], out["bad_map"]) == (0, 0, 0), _summary(out)
        if out["updates"] > 20 and out["poller"]["updates"] > 5 and out["churn"]["maps"] > 5 \
                and all(r["switches"] >= 2 for r in out["readers"]):
            break
        reads *= 4
    # the three grace-period users really ran during the reads
    assert out["updates"] > 20, _summary(out)
    assert out["poller"]["updates"] > 5, _summary(out)
    assert out["churn"]["maps"] > 5, _summary(out)
    # each reader saw the outer slot change under it (its first map counts once)
    assert all(r["switches"] >= 2 for r in out["readers"]), _summary(out)


@pytest.mark.parametrize("cell", CELLS, ids=_cell_id)
def test_torture_cell_catches_a_broken_synchronize(rt_name, procs, cell):
    """The same cell with a synchronize that does not wait: readers see poison."""
    sections, style, model = cell
    rt = _runtime(rt_name, sections)
    try:
        # readers stop at the first violation; the large budget only matters if none comes
        out = tp.run_cell(rt, procs, model, style, BROKEN_READS, broken=True)
    finally:
        rt.destroy()
    print(_summary(out))
    assert not out["errors"], "\n".join(out["errors"])
    assert out["bad_main"] > 0, f"torture missed a broken synchronize: {_summary(out)}"


def test_reader_registered_across_a_housekeeping_pass_is_acknowledged(runtime):
    """Replay of the interleaving the threads cells hit now and then (stale_acks):
    thread A claims a slot (freed_seen = g), a map is freed (g + 1) and thread B's
    housekeeping runs, then A's reader joins rt._readers.  Registration now holds the
    housekeeping lock, so B's pass waits for it and acknowledges the late reader too;
    before, barrier() waited for that reader until the next free."""
    import threading
    import time
    import weakref

    rt = runtime
    victim = rt.create_map("array", key="I", value="Q", max_entries=4)
    real = rt._readers
    other = []

    class FreeBeforeAdd(weakref.WeakSet):
        def add(self, item):
            gen = rt._control.freed_generation
            rt.retire(victim)                      # freed by the background thread ...
            deadline = time.monotonic() + 10
            while rt._control.freed_generation == gen and time.monotonic() < deadline:
                time.sleep(0.001)
            t = threading.Thread(target=rt.housekeeping)   # ... and another thread's pass
            t.start()
            other.append(t)
            t.join(0.2)                            # it waits for the registration
            real.add(item)

    rt._readers = FreeBeforeAdd()
    try:
        late = rt.reader()
    finally:
        rt._readers = real
    try:
        other[0].join(10)
        assert rt._control.freed_generation > 0
        rt.housekeeping()                          # what the late reader does at a quiescent point
        rt.barrier(timeout=0.5)                    # GracePeriodTimeout naming its slot, before
    finally:
        late.close()
