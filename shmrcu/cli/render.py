"""Text for the operations commands and ``top``: tables, byte sizes, the runtime header.

Pure functions of the dicts that ``ops`` returns; no I/O but ``_dump_json``'s print.
"""
from __future__ import annotations

import json
from typing import Any


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n}"   # pragma: no cover


def _num(x: float | None, nd: int = 0) -> str:
    if x is None:
        return "-"
    if nd == 0:
        return f"{x:,.0f}"
    return f"{x:,.{nd}f}"


def _table(rows: list[list[str]], header: list[str], right: set[int] = frozenset()) -> str:
    cols = [header] + rows
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]

    def line(r):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join(line(r) for r in cols)


def _dump_json(obj: Any, pretty: bool) -> None:
    if pretty:
        print(json.dumps(obj, indent=2, sort_keys=False))
    else:
        print(json.dumps(obj, separators=(",", ":")))


def _key_text(k: Any) -> str:
    if isinstance(k, list):
        return "(" + ", ".join(_key_text(x) for x in k) + ")"
    return repr(k) if isinstance(k, str) else str(k)


def _refs_text(refs: list[dict]) -> str:
    if not refs:
        return "-"
    return ",".join(f"{r['outer_name'] or r['outer_id']}[{_key_text(r['key'])}]" for r in refs)


def _cpu_text(w: dict) -> str:
    if w["cpu"] is None:
        return "-"
    aff = w.get("affinity")
    pinned = aff is not None and len(aff) == 1
    return f"{w['cpu']}{'*' if pinned else ''}"


def workers_table(workers: list[dict]) -> str:
    rows = [[w["slot"], w["pid"], w["worker_id"] if w["worker_id"] >= 0 else "-",
             w["state"] + (" STALLED" if w["stalled"] else ""), _cpu_text(w),
             _num(w["cpu_percent"]), w["epoch_lag"], _num(w["events_per_s"]), _num(w["events"]),
             w["restarts"]] for w in workers]
    return _table(rows, ["SLOT", "PID", "WID", "STATE", "CPU", "CPU%", "LAG", "EVENTS/S", "EVENTS",
                         "RESTARTS"], right={0, 1, 2, 5, 6, 7, 8, 9})


def maps_table(maps: list[dict]) -> str:
    rows = [[m["id"], m["name"] or "-", m["kind"], f"{m['key']}({m['key_size']}B)",
             f"{m['value']}({m['value_size']}B)", m["max_entries"],
             "-" if m["entries"] is None else m["entries"], _bytes(m["bytes"]),
             _refs_text(m["referenced_by"]), m["state"]] for m in maps]
    return _table(rows, ["ID", "NAME", "KIND", "KEY", "VALUE", "MAX", "USED", "MEMORY",
                         "REFERENCED-BY", "STATE"], right={0, 5, 6, 7})


def grace_text(g: dict) -> str:
    p50 = "-" if g["p50_us"] is None else f"{g['p50_us']:.1f}us"
    p99 = "-" if g["p99_us"] is None else f"{g['p99_us']:.1f}us"
    rate = "" if g.get("per_s") is None else f" ({g['per_s']:.1f}/s)"
    return (f"grace periods: {g['count']}{rate}  p50 {p50}  p99 {p99}  "
            f"pending retired: {g['pending_retired']} ({_bytes(g['pending_retired_bytes'])})  "
            f"slots reclaimed: {g['slots_reclaimed']}")


def header_text(s: dict) -> str:
    """Two lines: controller and epochs; slots, sections and memory."""
    c = s["controller"]
    ctl = f"pid {c['pid']} ({'alive' if c['alive'] else 'DEAD'})" if c["pid"] else \
        ("alive" if c["alive"] else "none")
    return (f"runtime {s['runtime']}: controller {ctl}, epoch {s['epoch']['global']} "
            f"(completed {s['epoch']['completed']})\n"
            f"slots {len(s['workers'])}/{s['max_workers']}, sections {s['sections']}, "
            f"{s['memory']['segments']} segments, {_bytes(s['memory']['bytes'])}")
