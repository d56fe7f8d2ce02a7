"""The main job: Android netd's A/B stats maps, with a grace period at every swap.

Two stats maps A and B (uid -> (packets u64, bytes u64)) sit behind an
array_of_maps ``cfg``; worker processes run ``traffic_accounting`` on
synthetic traffic, adding to whichever map ``cfg[0]`` names.  Every interval
the controller (this process) swaps ``cfg[0]`` to the other map, waits for a
grace period -- after which no worker can still be adding to the retired map
-- reads the retired map's totals and clears it.

The verdict proves the grace periods: every event a worker applied (its
ledger, committed at apply time) must show up in exactly one read of a
retired map.  A grace period that returned early would let a worker add to a
map after it was read and cleared, and ``counted`` would fall short.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import TextIO

from ..pool import WorkerPool
from ..runtime import Runtime
from ..pool.sources import Traffic


@dataclass
class DemoConfig:
    workers: int = 2             # fits a 2-core laptop
    duration: float = 5.0        # seconds
    interval_ms: float = 100.0   # swap period
    keys: int = 1024             # distinct uids
    dist: str = "zipf"
    batch: int = 4096            # events per batch
    maps: str = "per_worker"     # per_worker (exact across SIGKILL) or shared (atomic adds)
    pin: bool = True
    seed: int = 1
    name: str | None = None      # runtime name; default demo-<pid>

    def validate(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.duration <= 0:
            raise ValueError(f"--duration must be > 0, got {self.duration}")
        if self.interval_ms <= 0:
            raise ValueError(f"--interval must be > 0 ms, got {self.interval_ms}")
        if self.maps not in ("per_worker", "shared"):
            raise ValueError(f"--maps must be per_worker or shared, got {self.maps!r}")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _totals(m) -> tuple[int, int]:
    packets = nbytes = 0
    for v in m.values():           # per-worker maps: summed over every worker's copy
        packets += v[0]
        nbytes += v[1]
    return packets, nbytes


class _StopFlag:
    """First Ctrl-C: stop after the current step, with a summary.  Second: abort."""

    def __init__(self):
        self.event = threading.Event()
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def run(cfg: DemoConfig, progress: TextIO | None = None) -> dict:
    """Run the demo; returns the summary dict.  ``progress``: a stream for the live line."""
    cfg.validate()
    name = cfg.name or f"demo-{os.getpid()}"
    kind = "per_worker_hash" if cfg.maps == "per_worker" else "hash"
    # room for replacements: a dead worker's slot may not be reclaimed yet when
    # its successor registers
    rt = Runtime.create(name, max_workers=max(8, 2 * cfg.workers + 2))
    try:
        with _StopFlag() as stop:
            return _run(rt, cfg, kind, stop, progress)
    finally:
        rt.destroy()                 # every segment of the runtime, whatever happened


def _run(rt: Runtime, cfg: DemoConfig, kind: str, stop: _StopFlag, progress: TextIO | None) -> dict:
    a = rt.create_map(kind, key="I", value="QQ", max_entries=cfg.keys, name="stats_a")
    b = rt.create_map(kind, key="I", value="QQ", max_entries=cfg.keys, name="stats_b")
    outer = rt.create_map("array_of_maps", key="I", max_entries=1, inner=a, name="cfg")
    outer[0] = a
    live, spare = a, b
    source = Traffic(seed=cfg.seed, keys=cfg.keys, dist=cfg.dist, batch=cfg.batch)
    pool = WorkerPool(rt, workers=cfg.workers, program="traffic_accounting", source=source,
                      pin=cfg.pin, args={"cfg": "cfg"})
    counted = counted_bytes = swaps = 0
    swap_us: list[float] = []
    interrupted = False
    gp0 = rt.stats()["grace_periods"]
    t_start = time.monotonic()
    applied0 = 0
    try:
        pool.start()
        t_start = time.monotonic()
        applied0 = pool.applied()        # rates count from here (start-up excluded)
        t_end = t_start + cfg.duration
        next_tick = t_start + cfg.interval_ms / 1000
        last_t, last_applied = t_start, pool.applied()
        while True:
            if stop.event.wait(max(0.0, min(next_tick, t_end) - time.monotonic())):
                interrupted = True
                break
            now = time.monotonic()
            if now >= t_end:
                break
            next_tick += cfg.interval_ms / 1000
            # -- the netd step: swap, grace period, read the retired map, clear it
            t0 = time.perf_counter()
            outer.swap(0, spare)     # returns after a grace period: no worker holds `live`
            swap_us.append((time.perf_counter() - t0) * 1e6)
            swaps += 1
            live, spare = spare, live
            pool.settle()            # dead workers' in-flight events settled before we read
            p, by = _totals(spare)
            counted += p
            counted_bytes += by
            spare.clear()
            if progress is not None:
                applied = pool.applied()
                rate = (applied - last_applied) / max(1e-9, now - last_t)
                last_t, last_applied = now, applied
                gps = rt.stats()["grace_periods"] - gp0
                progress.write(f"\r{now - t_start:6.1f}s  {rate / 1e6:8.2f} M events/s  "
                               f"{gps:6d} grace periods  swap+sync {swap_us[-1]:8.1f} us  "
                               f"restarts {pool.stats()['restarts']}   ")
                progress.flush()
    finally:
        elapsed = time.monotonic() - t_start
        final = pool.stop()
        if progress is not None:
            progress.write("\n")
            progress.flush()
    # workers are gone (and dead ones settled): whatever is left is in the two maps
    for m in (live, spare):
        p, by = _totals(m)
        counted += p
        counted_bytes += by
    applied = final["applied"]
    st = rt.stats()
    rate = (applied - applied0) / elapsed if elapsed > 0 else 0.0
    per_worker = [rate * w["applied"] / applied if applied else 0.0 for w in final["per_worker"]]
    return {
        "workers": cfg.workers,
        "duration_s": round(elapsed, 3),
        "events": applied,
        "events_per_s": rate,
        "events_per_s_per_worker": per_worker,
        "applied": applied,
        "counted": counted,
        "counted_bytes": counted_bytes,
        "exact": counted == applied,
        "difference": counted - applied,
        "grace_periods": st["grace_periods"] - gp0,
        "gp_p50_us": st["gp_p50_us"],
        "gp_p99_us": st["gp_p99_us"],
        "swaps": swaps,
        "swap_sync_p50_us": _percentile(swap_us, 0.50),
        "swap_sync_p99_us": _percentile(swap_us, 0.99),
        "restarts": final["restarts"],
        "dropped": final["dropped"],
        "uncertain": final["uncertain"],
        "recoveries": final["recoveries"],
        "errors": [e["traceback"].strip().splitlines()[-1] for e in final["errors"] if e["traceback"]],
        "interrupted": interrupted,
        "maps": cfg.maps,
        "runtime": rt.name,
        "config": asdict(cfg),
    }


def _us(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} us"


def format_summary(s: dict) -> str:
    lines = [
        f"shmrcu demo: {s['workers']} workers, {s['duration_s']:.2f} s"
        + (" (interrupted)" if s["interrupted"] else ""),
        f"  events          {s['events']:,}  ({s['events_per_s'] / 1e6:.2f} M/s)",
        "  per worker      " + ", ".join(f"{r / 1e6:.2f} M/s" for r in s["events_per_s_per_worker"]),
        f"  swaps           {s['swaps']}  (swap+sync p50 {_us(s['swap_sync_p50_us'])}, "
        f"p99 {_us(s['swap_sync_p99_us'])})",
        f"  grace periods   {s['grace_periods']}  (p50 {_us(s['gp_p50_us'])}, p99 {_us(s['gp_p99_us'])})",
        f"  restarts        {s['restarts']}" + (f"  (dropped {s['dropped']})" if s["dropped"] else ""),
    ]
    if s["exact"]:
        lines.append(f"  exact: counted == applied ({s['counted']:,})")
    else:
        lines.append(f"  NOT exact: counted {s['counted']:,} != applied {s['applied']:,} "
                     f"(difference {s['difference']:+,}"
                     + (f", {s['uncertain']} uncertain in-flight events" if s["uncertain"] else "") + ")")
    for e in s["errors"][:5]:
        lines.append(f"  worker error: {e}")
    return "\n".join(lines)


def main(cfg: DemoConfig, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """Run and print; exit status 0 when exact, 1 otherwise."""
    progress = sys.stderr if (not as_json and sys.stderr.isatty()) else None
    summary = run(cfg, progress)
    if as_json:
        out.write(json.dumps(summary) + "\n")
    else:
        out.write(format_summary(summary) + "\n")
    out.flush()
    return 0 if summary["exact"] else 1
