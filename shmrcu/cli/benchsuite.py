"""``shmrcu bench``: shmrcu side by side with the usual ways to share a table between processes.

Three groups, one table:

* **lookups** (one process, u32 key -> u64 value, 4096 keys, Python loop):
  shmrcu ``map[k]`` inside a read-side section, shmrcu ``lookup_batch``
  (no GIL), vs ``multiprocessing.shared_memory`` + ``multiprocessing.Lock``
  (the lock taken per lookup, a plain array indexed by key -- the fastest
  honest version of that design), UltraDict (if installed) and
  ``Manager().dict()``.
* **accounting** (2 processes, per-uid (packets, bytes) counters fed by the
  same synthetic traffic): the shmrcu ``WorkerPool`` running the built-in
  Cython program ``traffic_accounting`` vs 2 processes updating
  shared_memory under a Lock, and a ``Manager().dict()`` under a Manager lock.
* **grace period** (lower is better): ``rt.synchronize()`` with one reader
  process busy on the other core vs the kernel's RCU grace period
  (``membarrier(MEMBARRIER_CMD_GLOBAL)``, i.e. ``synchronize_rcu()``).

Ratios are against the group's baseline (shared_memory+Lock; the kernel for
grace periods): ``x`` faster (throughput) or ``x`` lower latency.

All measurement code is here (children are spawned with the functions below),
so ``shmrcu bench`` works from an installed package.  ``--quick`` finishes in
well under 30 s on 2 cores; matplotlib is optional (``--plot``).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import struct
import sys
import time
from typing import Any, Callable

SCHEMA = 1
KEYS = 4096


# ---------------------------------------------------------------------------
# timing helpers

def _rate(fn: Callable[[], Any], ops_per_call: int, seconds: float) -> float:
    """Operations per second: call ``fn`` (one warm-up call) until ``seconds`` passed."""
    fn()
    clock = time.perf_counter
    n = 0
    t0 = clock()
    while True:
        fn()
        n += ops_per_call
        dt = clock() - t0
        if dt >= seconds:
            return n / dt


def _percentiles(ns: list[int]) -> tuple[float, float]:
    xs = sorted(ns)
    return xs[len(xs) // 2] / 1e3, xs[min(len(xs) - 1, int(len(xs) * 0.99))] / 1e3


class _Params:
    def __init__(self, quick: bool):
        self.quick = quick
        self.lookup_s = 0.3 if quick else 1.5
        self.manager_s = 0.3 if quick else 1.0
        self.accounting_s = 1.0 if quick else 3.0
        self.slow_accounting_s = 0.5 if quick else 1.5
        self.sync_rounds = 2000 if quick else 20000
        self.kernel_rounds = 15 if quick else 100


def _runtime_name(tag: str) -> str:
    return f"bench-{os.getpid()}-{tag}"


# ---------------------------------------------------------------------------
# lookups, one process

def bench_lookups(p: _Params, log) -> list[dict]:
    import shmrcu
    rows: list[dict] = []
    keys = list(range(KEYS))
    random.Random(1).shuffle(keys)

    # shmrcu: a hash map, per-call lookups inside one section per pass; and lookup_batch
    log("lookups: shmrcu")
    with shmrcu.Runtime.create(_runtime_name("lookup"), max_workers=4) as rt, rt.reader() as r:
        m = rt.create_map("hash", key="I", value="Q", max_entries=KEYS, name="table")
        for k in range(KEYS):
            m[k] = k * 3
        section = r.section
        get = m.__getitem__

        def per_call():
            with section():
                for k in keys:
                    get(k)
        rows.append(_row("shmrcu_call", f"shmrcu map[k], {KEYS} per read-side section",
                         _rate(per_call, KEYS, p.lookup_s)))

        def section_each():
            for k in keys:
                with section():
                    get(k)
        rows.append(_row("shmrcu_call_section", "shmrcu map[k], one section per lookup",
                         _rate(section_each, KEYS, p.lookup_s)))
        try:
            import numpy as np
            karr = np.array(keys, dtype=np.uint32)
            out = np.empty(KEYS, dtype=np.uint64)
        except ImportError:
            karr = struct.pack(f"{KEYS}I", *keys)
            out = bytearray(8 * KEYS)
        lookup_batch = m.lookup_batch

        def batch():
            with section():
                lookup_batch(karr, out)
        rows.append(_row("shmrcu_batch", "shmrcu lookup_batch (no GIL)", _rate(batch, KEYS, p.lookup_s)))

    # multiprocessing.shared_memory + Lock: an array indexed by key, the lock per lookup
    log("lookups: shared_memory+Lock")
    from multiprocessing import shared_memory
    ctx = mp.get_context("spawn")
    shm = shared_memory.SharedMemory(create=True, size=8 * KEYS)
    try:
        buf = shm.buf
        u64 = struct.Struct("Q")
        for k in range(KEYS):
            u64.pack_into(buf, 8 * k, k * 3)
        lock = ctx.Lock()
        unpack_from = u64.unpack_from

        def shm_lock():
            for k in keys:
                with lock:
                    unpack_from(buf, 8 * k)
        rows.append(_row("shm_lock", "shared_memory + Lock (per lookup)", _rate(shm_lock, KEYS, p.lookup_s),
                         baseline=True))
        del buf
    finally:
        shm.close()
        shm.unlink()

    # UltraDict
    log("lookups: UltraDict")
    try:
        from UltraDict import UltraDict
    except ImportError:
        rows.append(_skip("ultradict", "UltraDict", "not installed (pip install UltraDict)"))
    else:
        d = UltraDict({k: k * 3 for k in range(KEYS)}, name=f"shmrcu-bench-ul-{os.getpid()}",
                      buffer_size=1 << 20, auto_unlink=True)
        try:
            def ultra():
                for k in keys:
                    d[k]
            rows.append(_row("ultradict", "UltraDict d[k]", _rate(ultra, KEYS, p.lookup_s)))
        finally:
            d.unlink()

    # Manager().dict(): every lookup is a round trip to the manager process
    log("lookups: Manager().dict()")
    with ctx.Manager() as mgr:
        d = mgr.dict({k: k * 3 for k in range(KEYS)})
        few = keys[:256]

        def managed():
            for k in few:
                d[k]
        rows.append(_row("manager", "Manager().dict() d[k]", _rate(managed, len(few), p.manager_s)))
    return rows


# ---------------------------------------------------------------------------
# accounting, 2 processes

ACCT_KEYS = 1024
ACCT_BATCH = 256


def _untracked() -> None:
    """In a child that only attaches segments its parent owns: keep them away from the
    resource tracker it shares with the parent (Python < 3.13 registers every attach, and
    unbalanced register/unregister pairs from several children make the tracker complain
    or unlink segments still in use)."""
    from multiprocessing import resource_tracker
    resource_tracker.register = lambda name, rtype: None
    resource_tracker.unregister = lambda name, rtype: None


def _acct_shm_lock(shm_name: str, lock, wid: int, seconds: float, start, results) -> None:
    """Child: per event, under the Lock, read-modify-write (packets, bytes) of its uid."""
    from multiprocessing import shared_memory

    from ..pool._traffic import UID_BASE, TrafficGenerator
    _untracked()
    shm = shared_memory.SharedMemory(shm_name)
    buf = shm.buf
    st = struct.Struct("QQ")
    unpack_from, pack_into = st.unpack_from, st.pack_into
    gen = TrafficGenerator(wid + 1, ACCT_KEYS, "uniform", 1.1, ACCT_BATCH, None)
    start.wait()
    n = 0
    clock = time.perf_counter
    t0 = clock()
    deadline = t0 + seconds
    while clock() < deadline:
        for uid, nb in gen.next_batch().tolist():
            off = (uid - UID_BASE) * 16
            with lock:
                pk, by = unpack_from(buf, off)
                pack_into(buf, off, pk + 1, by + nb)
        n += ACCT_BATCH
    results.put(n / (clock() - t0))
    del buf
    shm.close()


def _acct_manager(d, lock, wid: int, seconds: float, start, results) -> None:
    """Child: the same accounting on a Manager dict under a Manager lock."""
    from ..pool._traffic import TrafficGenerator
    gen = TrafficGenerator(wid + 1, ACCT_KEYS, "uniform", 1.1, 16, None)
    start.wait()
    n = 0
    clock = time.perf_counter
    t0 = clock()
    deadline = t0 + seconds
    while clock() < deadline:
        for uid, nb in gen.next_batch().tolist():
            with lock:
                pk, by = d.get(uid, (0, 0))
                d[uid] = (pk + 1, by + nb)
        n += 16
    results.put(n / (clock() - t0))


def _run_children(ctx, target, args_for, n: int, seconds: float) -> float:
    start = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=args_for(i) + (seconds, start, results), daemon=True)
             for i in range(n)]
    for pr in procs:
        pr.start()
    try:
        time.sleep(0.05)
        start.set()
        rates = [results.get(timeout=seconds + 60) for _ in procs]
    finally:
        for pr in procs:
            pr.join(10)
            if pr.is_alive():
                pr.kill()
                pr.join(5)
    return sum(rates)


def bench_accounting(p: _Params, log, workers: int = 2) -> list[dict]:
    rows: list[dict] = []
    ctx = mp.get_context("spawn")

    log("accounting: shmrcu WorkerPool (Cython traffic_accounting)")
    rows.append(_pool_row(p, workers))

    log("accounting: shared_memory+Lock")
    from multiprocessing import shared_memory
    shm = shared_memory.SharedMemory(create=True, size=16 * ACCT_KEYS)
    try:
        lock = ctx.Lock()
        rate = _run_children(ctx, _acct_shm_lock, lambda i: (shm.name, lock, i), workers, p.accounting_s)
        rows.append(_row("acct_shm_lock", f"shared_memory + Lock, {workers} processes (Python)", rate,
                         baseline=True))
    finally:
        shm.close()
        shm.unlink()

    log("accounting: Manager().dict()")
    with ctx.Manager() as mgr:
        d, lock = mgr.dict(), mgr.Lock()
        rate = _run_children(ctx, _acct_manager, lambda i: (d, lock, i), workers, p.slow_accounting_s)
        rows.append(_row("acct_manager", f"Manager().dict() + Manager Lock, {workers} processes", rate))

    try:
        import UltraDict  # noqa: F401
        import atomics  # noqa: F401  (UltraDict's shared_lock needs it)
    except ImportError as e:
        rows.append(_skip("acct_ultradict", "UltraDict (shared_lock)",
                          f"{e.name} not installed" if e.name != "atomics" else
                          "needs UltraDict's shared_lock (pip install atomics)"))
    else:
        log("accounting: UltraDict")
        rows.append(_ultradict_accounting(ctx, p, workers))
    return rows


def _acct_ultradict(name: str, wid: int, seconds: float, start, results) -> None:
    from UltraDict import UltraDict

    from ..pool._traffic import TrafficGenerator
    _untracked()
    d = UltraDict(name=name, shared_lock=True)
    gen = TrafficGenerator(wid + 1, ACCT_KEYS, "uniform", 1.1, 16, None)
    start.wait()
    n = 0
    clock = time.perf_counter
    t0 = clock()
    deadline = t0 + seconds
    while clock() < deadline:
        for uid, nb in gen.next_batch().tolist():
            with d.lock:
                pk, by = d.get(uid, (0, 0))
                d[uid] = (pk + 1, by + nb)
        n += 16
    results.put(n / (clock() - t0))


def _ultradict_accounting(ctx, p: _Params, workers: int) -> dict:
    from UltraDict import UltraDict
    name = f"shmrcu-bench-ud-{os.getpid()}"
    try:
        d = UltraDict(name=name, create=True, buffer_size=1 << 22, shared_lock=True, auto_unlink=False)
    except Exception as e:   # noqa: BLE001 -- an optional peer: report, do not fail the suite
        for leftover in (name, name + "_memory"):     # it may fail after creating its segments
            try:
                os.unlink(os.path.join("/dev/shm", leftover))
            except OSError:
                pass
        return _skip("acct_ultradict", "UltraDict (shared_lock)", f"cannot create: {e}")
    try:
        rate = _run_children(ctx, _acct_ultradict, lambda i: (d.name, i), workers, p.slow_accounting_s)
        return _row("acct_ultradict", f"UltraDict + shared lock, {workers} processes", rate)
    except Exception as e:   # noqa: BLE001
        return _skip("acct_ultradict", "UltraDict (shared_lock)", f"failed: {e}")
    finally:
        d.unlink()


def _pool_row(p: _Params, workers: int) -> dict:
    label = f"shmrcu WorkerPool, {workers} workers, Cython traffic_accounting"
    try:
        from ..pool import WorkerPool
        from ..pool.sources import Traffic
    except ImportError as e:
        return _skip("acct_shmrcu_pool", label, f"WorkerPool unavailable ({e})")
    import shmrcu
    with shmrcu.Runtime.create(_runtime_name("pool"), max_workers=max(4, workers)) as rt:
        stats = rt.create_map("hash", key="I", value="QQ", max_entries=2 * ACCT_KEYS, name="stats")
        cfg = rt.create_map("array_of_maps", max_entries=1, inner=stats, name="cfg")
        cfg[0] = stats
        try:
            pool = WorkerPool(rt, workers=workers, program="traffic_accounting",
                              source=Traffic(keys=ACCT_KEYS, batch=4096), args={"cfg": "cfg"})
        except Exception as e:   # noqa: BLE001
            return _skip("acct_shmrcu_pool", label, f"cannot build the pool: {e}")
        with pool:
            t_end = time.monotonic() + 5.0
            while pool.applied() == 0 and time.monotonic() < t_end:   # workers warm up
                time.sleep(0.01)
            time.sleep(0.1)
            a0, t0 = pool.applied(), time.perf_counter()
            time.sleep(p.accounting_s)
            a1, t1 = pool.applied(), time.perf_counter()
        if a1 <= a0:
            return _skip("acct_shmrcu_pool", label, "the pool applied no events (see pool.stats())")
        return _row("acct_shmrcu_pool", label, (a1 - a0) / (t1 - t0))


# ---------------------------------------------------------------------------
# grace periods

def _busy_reader(name: str, stop, ready, qsbr: bool) -> None:
    """Child: one reader kept busy (QSBR batches or short sections) until stop[0] != 0."""
    import shmrcu
    from ..testing import _bench
    with shmrcu.Runtime.attach(name) as rt, rt.reader() as r:
        ready.set()
        _bench.busy_reader(r, memoryview(stop).cast("B"), qsbr, 200)


def _sync_latencies(ctx, rounds: int, qsbr: bool) -> list[int]:
    """rt.synchronize() latencies (ns) while one reader process is busy on the other core."""
    import shmrcu
    name = _runtime_name("qsbr" if qsbr else "sections")
    clock = time.perf_counter_ns
    with shmrcu.Runtime.create(name, max_workers=4) as rt:
        stop, ready = ctx.RawArray("B", 1), ctx.Event()
        child = ctx.Process(target=_busy_reader, args=(name, stop, ready, qsbr), daemon=True)
        child.start()
        try:
            if not ready.wait(30):
                raise RuntimeError("the busy reader process did not start")
            for _ in range(100):
                rt.synchronize(timeout=5)
            lat = []
            for _ in range(rounds):
                t0 = clock()
                rt.synchronize(timeout=5)
                lat.append(clock() - t0)
        finally:
            stop[0] = 1
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join(5)
    return lat


def bench_grace(p: _Params, log) -> list[dict]:
    from ..core import _epoch
    rows: list[dict] = []
    ctx = mp.get_context("spawn")
    clock = time.perf_counter_ns
    for qsbr, style in ((False, "sections"), (True, "QSBR")):
        log(f"grace periods: shmrcu synchronize with a busy {style} reader")
        s50, s99 = _percentiles(_sync_latencies(ctx, p.sync_rounds, qsbr))
        tag = "qsbr" if qsbr else "sections"
        rows.append(_row(f"gp_shmrcu_{tag}_p50", f"shmrcu synchronize(), busy {style} reader: p50", s50,
                         unit="us"))
        rows.append(_row(f"gp_shmrcu_{tag}_p99", f"shmrcu synchronize(), busy {style} reader: p99", s99,
                         unit="us", ratio_to="gp_kernel_p99"))
    log("grace periods: kernel membarrier(GLOBAL)")
    kern = []
    for _ in range(p.kernel_rounds):
        t0 = clock()
        _epoch.kernel_synchronize_rcu()
        kern.append(clock() - t0)
    k50, k99 = _percentiles(kern)
    rows.append(_row("gp_kernel_p50", "kernel grace period, membarrier(GLOBAL): p50", k50, unit="us",
                     baseline=True))
    rows.append(_row("gp_kernel_p99", "kernel grace period, membarrier(GLOBAL): p99", k99, unit="us",
                     baseline=True))
    return rows


# ---------------------------------------------------------------------------
# rows, ratios, table

def _row(id_: str, label: str, value: float, unit: str = "ops/s", baseline: bool = False,
         ratio_to: str | None = None) -> dict:
    return {"id": id_, "label": label, "value": float(value), "unit": unit, "baseline": baseline,
            "ratio": None, "ratio_to": ratio_to, "skipped": None}


def _skip(id_: str, label: str, reason: str) -> dict:
    return {"id": id_, "label": label, "value": None, "unit": None, "baseline": False,
            "ratio": None, "ratio_to": None, "skipped": reason}


def _ratios(group: dict) -> None:
    """``ratio``: how many times better than the baseline (the group's first baseline row,
    or the row named by ``ratio_to``); recorded in ``ratio_to``."""
    by_id = {r["id"]: r for r in group["rows"]}
    first = next((r for r in group["rows"] if r["baseline"] and r["value"]), None)
    for r in group["rows"]:
        if r["baseline"] or r["value"] is None:
            continue
        base = by_id.get(r["ratio_to"]) if r["ratio_to"] else first
        if base is None or not base["value"]:
            continue
        r["ratio_to"] = base["id"]
        if group["higher_is_better"]:
            r["ratio"] = r["value"] / base["value"]
        else:
            r["ratio"] = base["value"] / r["value"] if r["value"] else None


GROUPS = [
    ("lookups", f"Lookups, 1 process, Python loop ({KEYS} u32 keys -> u64)", "lookups/s", True, bench_lookups),
    ("accounting", "Per-uid accounting (packets, bytes), synthetic traffic", "events/s", True, bench_accounting),
    ("grace", "Grace period latency (lower is better)", "us", False, bench_grace),
]


def run_suite(quick: bool = False, log: Callable[[str], None] | None = None,
              groups: list[str] | None = None) -> dict:
    """Run the comparison; returns the JSON-ready results."""
    log = log or (lambda msg: None)
    p = _Params(quick)
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "schema": SCHEMA, "quick": quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "machine": platform.machine()},
        "groups": [],
    }
    for gid, title, unit, higher, fn in GROUPS:
        if groups is not None and gid not in groups:
            continue
        try:
            rows = fn(p, log)
        except Exception as e:   # noqa: BLE001 -- one group failing should not lose the others
            rows = [_skip(f"{gid}_error", title, f"failed: {type(e).__name__}: {e}")]
        g = {"id": gid, "title": title, "unit": unit, "higher_is_better": higher, "rows": rows}
        _ratios(g)
        out["groups"].append(g)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "us":
        return f"{v:,.1f} us" if v < 1000 else f"{v / 1000:,.2f} ms"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:,.2f}{suffix}/s"
    return f"{v:,.0f}/s"


def _fmt_ratio(r: dict, higher: bool) -> str:
    if r["skipped"]:
        return "skipped: " + r["skipped"]
    if r["baseline"]:
        return "1.00x (baseline)"
    if r["ratio"] is None:
        return "-"
    x = r["ratio"]
    if x >= 1:
        word = "faster" if higher else "lower"
        return f"{x:,.0f}x {word}" if x >= 100 else f"{x:,.2f}x {word}"
    return f"{1 / x:,.1f}x {'slower' if higher else 'higher'}"


def format_table(res: dict) -> str:
    lines = []
    width = max(len(r["label"]) for g in res["groups"] for r in g["rows"]) + 2
    for g in res["groups"]:
        lines.append(f"{g['title']} [{g['unit']}]")
        for r in g["rows"]:
            lines.append(f"  {r['label']:<{width}}{_fmt_value(r['value'], r['unit'] or g['unit']):>14}   "
                         f"{_fmt_ratio(r, g['higher_is_better'])}")
        lines.append("")
    m = res["machine"]
    lines.append(f"{m['cpus']} CPUs, Python {m['python']}, {'--quick, ' if res['quick'] else ''}"
                 f"{res['seconds']:.1f} s")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    """A bar chart per group (log scale); needs matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = [g for g in res["groups"] if any(r["value"] for r in g["rows"])]
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 3.2 * len(groups)), squeeze=False)
    for ax, g in zip(axes[:, 0], groups):
        rows = [r for r in g["rows"] if r["value"]]
        ax.barh([r["label"] for r in rows], [r["value"] for r in rows],
                color=["tab:blue" if r["id"].startswith(("shmrcu", "acct_shmrcu", "gp_shmrcu"))
                       else "tab:gray" for r in rows])
        ax.set_xscale("log")
        ax.set_xlabel(g["unit"])
        ax.set_title(g["title"])
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main_args(args) -> int:
    from .ops import OpsError
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise OpsError("--plot needs matplotlib, which is not installed "
                           "(pip install matplotlib)") from None
    if args.json:
        try:
            with open(args.json, "a"):
                pass
        except OSError as e:
            raise OpsError(f"cannot write {args.json}: {e.strerror}") from None

    def log(msg: str) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\r\x1b[K  running {msg} ...")
            sys.stderr.flush()

    res = run_suite(quick=args.quick, log=log)
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
    print(format_table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    if args.plot:
        plot(res, args.plot)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``shmrcu bench`` (and of ``python -m shmrcu.cli.benchsuite``)."""
    p.add_argument("--quick", action="store_true", help="short runs (under 30 s on 2 cores)")
    p.add_argument("--json", metavar="FILE", help="write the measurements as JSON to FILE")
    p.add_argument("--plot", metavar="FILE.png", help="draw a bar chart (needs matplotlib)")


def main(argv: list[str] | None = None) -> int:
    """``python -m shmrcu.cli.benchsuite [--quick] [--json FILE] [--plot FILE.png]``.

    Stands alone (it does not import the CLI, which imports this module)."""
    from .ops import OpsError
    p = argparse.ArgumentParser(prog="python -m shmrcu.cli.benchsuite",
                                description="shmrcu vs shared_memory+Lock, UltraDict, Manager dict; "
                                            "synchronize vs the kernel's grace period")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return main_args(args)
    except OpsError as e:
        print(f"shmrcu bench: {e}", file=sys.stderr)
        return e.code


if __name__ == "__main__":
    sys.exit(main())
