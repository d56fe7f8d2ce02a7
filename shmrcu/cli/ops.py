"""Operating a runtime: the data behind ``shmrcu list / stat / map / top / cleanup``.

Every function returns plain dicts and lists (JSON-ready: ints, floats, strs,
bools, None, lists) so the CLI, ``top`` and tests share one source of truth.
The field names are stable; they are documented in the README ("Operating a runtime").

Nothing here takes the controller lease: the CLI attaches as a plain observer
(no reader slot), so it never holds up a grace period.  The only exception is
``cleanup(name, force=True)``, which unlinks segments but still never takes the
lease.

User errors (missing runtime, bad name, permission denied, corrupt segment,
unknown map) are raised as ``OpsError``: one line, meant for stderr.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import fcntl
import os
import re
import socket
import struct
import time
from typing import Any, Iterator

from ..core import segment as seg
from ..errors import ShmrcuError

SCHEMA = 1                       # bumped only when a field changes meaning or disappears
STALL_S = 1.0                    # an online reader that has not advanced for this long is "stalled"
SAMPLE_S = 0.2                   # stat: two samples this far apart give events/s

# /dev/shm file name -> (runtime, part).  The runtime name may contain dots, so
# the part is recognised from the end: ctl, dir, torture[.x], map.<id>.
_SEG_RE = re.compile(r"^" + re.escape(seg.PREFIX) + r"(?P<rt>.+?)\.(?P<part>ctl|dir|torture(?:\..*)?|map\.\d+)$")


class OpsError(Exception):
    """A user error: the message is one line for stderr; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------
# error translation

@contextlib.contextmanager
def user_errors(what: str = "") -> Iterator[None]:
    """Turn the errors a user can cause into one-line ``OpsError``s."""
    prefix = f"{what}: " if what else ""
    try:
        yield
    except OpsError:
        raise
    except PermissionError as e:
        raise OpsError(f"{prefix}permission denied: {_one_line(e)}", 13) from None
    except (ShmrcuError, KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e   # KeyError's str() quotes
        raise OpsError(f"{prefix}{_one_line(msg)}") from None
    except OSError as e:
        raise OpsError(f"{prefix}{_one_line(e)}") from None


def _one_line(e: object) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


# ---------------------------------------------------------------------------
# segments in /dev/shm

def parse_segment(filename: str) -> tuple[str, str] | None:
    """``"shmrcu.net.map.3"`` -> ``("net", "map.3")``; None for other files."""
    m = _SEG_RE.match(filename)
    if not m:
        return None
    return m.group("rt"), m.group("part")


def _scan() -> dict[str, list[str]]:
    """runtime name -> its /dev/shm file names (control segment last)."""
    try:
        names = os.listdir(seg.SHM_DIR)
    except FileNotFoundError:
        return {}
    out: dict[str, list[str]] = {}
    for n in names:
        p = parse_segment(n)
        if p is not None:
            out.setdefault(p[0], []).append(n)
    for files in out.values():
        files.sort(key=lambda f: (f.endswith(".ctl"), f.endswith(".dir"), _map_id_of(f) or 0, f))
    return out


def _map_id_of(filename: str) -> int | None:
    p = parse_segment(filename)
    if p and p[1].startswith("map."):
        return int(p[1][4:])
    return None


def _file(filename: str) -> str:
    return os.path.join(seg.SHM_DIR, filename)


def _size(filename: str) -> int | None:
    try:
        return os.stat(_file(filename)).st_size
    except FileNotFoundError:
        return None


def segment_bytes(runtime: str, part: str) -> int | None:
    """Size of one segment in /dev/shm (None when it does not exist)."""
    return _size(seg.shm_name(runtime, part).lstrip("/"))


def _any_lock_held(filename: str) -> bool | None:
    """True if any process holds an OFD lock anywhere in the file (controller lease
    or a reader slot); None if the file cannot be opened.  Used when the control
    segment cannot be attached (corrupt): the safe reading of "is it in use"."""
    try:
        fd = os.open(_file(filename), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        # struct flock: l_type, l_whence (short), l_start, l_len (off_t), l_pid (pid_t)
        fl = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        try:
            res = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, fl)
        except OSError:
            return None
        return struct.unpack("hhqqi4x", res)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# attaching as an observer

def attach(name: str):
    """``Runtime.attach(name)`` with user-facing errors; the caller closes it."""
    from ..runtime import Runtime
    with user_errors():
        seg.validate_name(name)
    with user_errors(f"runtime {name!r}"):
        try:
            return Runtime.attach(name)
        except FileNotFoundError:
            raise OpsError(f"runtime {name!r} not found: no {seg.SHM_DIR}/{seg.PREFIX}{name}.ctl "
                           "(`shmrcu list` shows the runtimes present)") from None


@contextlib.contextmanager
def attached(name: str):
    rt = attach(name)
    try:
        yield rt
    finally:
        rt.close()


# ---------------------------------------------------------------------------
# list

def list_runtimes() -> list[dict]:
    """Every runtime with segments in /dev/shm (sorted by name).

    Fields: name, state (live | dead | corrupt | orphaned | inaccessible),
    controller_pid, controller_alive, readers, reader_pids, maps, segments, bytes, error."""
    out = []
    for name, files in sorted(_scan().items()):
        sizes = [_size(f) or 0 for f in files]
        entry: dict[str, Any] = {
            "name": name, "state": "orphaned", "controller_pid": None, "controller_alive": None,
            "readers": None, "reader_pids": None,
            "maps": sum(1 for f in files if _map_id_of(f) is not None),
            "segments": len(files), "bytes": sum(sizes), "error": None,
        }
        if any(f.endswith(".ctl") for f in files):
            entry.update(_probe_runtime(name))
        out.append(entry)
    return out


def _probe_runtime(name: str) -> dict:
    """state/controller of a runtime that has a control segment."""
    from ..runtime import Runtime
    try:
        rt = Runtime.attach(name)
    except PermissionError as e:
        return {"state": "inaccessible", "error": _one_line(e)}
    except FileNotFoundError:
        return {"state": "orphaned"}                 # removed under us
    except (ShmrcuError, ValueError, OSError) as e:
        held = _any_lock_held(seg.shm_name(name, "ctl").lstrip("/"))
        return {"state": "corrupt", "controller_alive": held, "error": _one_line(e)}
    try:
        alive = bool(rt._control.controller_alive())
        st = rt.stats()
        readers = [r for r in rt.readers_info() if r["alive"]]
        return {"state": "live" if alive else "dead", "controller_alive": alive,
                "controller_pid": st["controller_pid"] or None, "readers": len(readers),
                "reader_pids": sorted({r["pid"] for r in readers})}
    finally:
        rt.close()


# ---------------------------------------------------------------------------
# maps

def _jsonable(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        try:
            text = b.rstrip(b"\0").decode("ascii")
            if text.isprintable():
                return text
        except UnicodeDecodeError:
            pass
        return b.hex()
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and v != v:            # NaN is not JSON
        return None
    return v


def _format_size(fmt: str) -> int:
    from ..maps import _formats
    try:
        return _formats.parse(fmt, "format").size
    except Exception:      # noqa: BLE001 -- informational only
        try:
            return struct.calcsize(fmt)
        except struct.error:
            return 0


def _outer_refs(rt, infos: list[dict]) -> dict[int, list[dict]]:
    """inner map id -> [{outer_id, outer_name, key}] for every outer slot that holds it."""
    refs: dict[int, list[dict]] = {}
    for info in infos:
        if info["kind"] not in ("array_of_maps", "hash_of_maps") or info["state"] == "freed":
            continue
        try:
            outer = rt.map(info["id"])
            keys = outer.keys()
        except (ShmrcuError, OSError, KeyError):
            continue
        for k in keys:
            try:
                inner_id = outer._lookup_id(k)
            except (ShmrcuError, KeyError):
                continue                    # deleted meanwhile
            if inner_id:
                refs.setdefault(int(inner_id), []).append(
                    {"outer_id": info["id"], "outer_name": info["name"], "key": _jsonable(k)})
    return refs


def _map_record(rt, info: dict, refs: dict[int, list[dict]]) -> dict:
    entries = version = None
    if info["state"] != "freed":
        try:
            m = rt.map(info["id"])
            entries, version = len(m), m.version
        except (ShmrcuError, OSError, KeyError):
            entries = None
    return {
        "id": info["id"], "name": info["name"], "kind": info["kind"], "state": info["state"],
        "key": info["key"], "key_size": _format_size(info["key"]),
        "value": info["value"], "value_size": _format_size(info["value"]),
        "max_entries": info["max_entries"], "entries": entries, "version": version,
        "bytes": segment_bytes(rt.name, f"map.{info['id']}"),
        "flags": list(info.get("flags") or ()),
        "referenced_by": refs.get(info["id"], []),
    }


def _maps(rt) -> list[dict]:
    with user_errors(f"runtime {rt.name!r}"):
        infos = rt.maps()
        refs = _outer_refs(rt, infos)
        return [_map_record(rt, i, refs) for i in infos]


def map_show(name: str) -> list[dict]:
    """Every map of runtime ``name`` (fields as ``stat(name)["maps"]``)."""
    with attached(name) as rt:
        return _maps(rt)


def _resolve_map(rt, which: str | int):
    with user_errors(f"runtime {rt.name!r}"):
        if isinstance(which, str) and which.isdigit():
            which = int(which)
        try:
            return rt.map(which)
        except KeyError:
            raise OpsError(f"runtime {rt.name!r} has no map {which!r} "
                           f"(`shmrcu map show {rt.name}` lists them)") from None


DISPLAY_FORMATS = ("ipv4", "ipv6", "hex", "int")


def _display(v: Any, fmt: str | None) -> Any:
    """A key or value shown as ``fmt`` (ipv4, ipv6, hex, int), field by field."""
    if fmt is None:
        return v
    if isinstance(v, tuple):
        return tuple(_display(x, fmt) for x in v)
    if isinstance(v, (bytes, bytearray)):
        b = bytes(v)
        if fmt == "ipv4" and len(b) == 4:
            return socket.inet_ntoa(b)
        if fmt == "ipv6" and len(b) == 16:
            return socket.inet_ntop(socket.AF_INET6, b)
        if fmt == "hex":
            return b.hex()
        if fmt == "int":
            return int.from_bytes(b, "big")
        raise OpsError(f"cannot show the {len(b)}-byte string {b!r} as {fmt}")
    if isinstance(v, int):
        if fmt == "ipv4" and 0 <= v < 1 << 32:
            return socket.inet_ntoa(v.to_bytes(4, "big"))
        if fmt == "ipv6" and 0 <= v < 1 << 128:
            return socket.inet_ntop(socket.AF_INET6, v.to_bytes(16, "big"))
        if fmt == "hex":
            return hex(v)
        if fmt == "int":
            return v
        raise OpsError(f"cannot show {v!r} as {fmt}")
    return v


def _outer_slot(which: str):
    """``OUTER[KEY]`` -> ("OUTER", "KEY"); anything else -> (which, None)."""
    if isinstance(which, str) and which.endswith("]") and "[" in which:
        outer, _, key = which[:-1].partition("[")
        return outer, key
    return which, None


def _outer_key(outer, text: str):
    """The KEY of ``OUTER[KEY]`` in the outer map's key format (int, or str for bytes keys)."""
    fmt = outer.key_format
    if fmt.lstrip("@=<>!") in ("I", "Q", "H", "B", "L", "i", "q", "h", "b", "l"):
        try:
            return int(text, 0)
        except ValueError:
            raise OpsError(f"key {text!r} of {outer.name or outer.id}[...] must be an integer "
                           f"(key format {fmt!r})") from None
    return text


def map_dump(name: str, which: str | int, key_format: str | None = None,
             value_format: str | None = None) -> dict:
    """The entries of one map (by name, or by id given as an int or digits), or of the inner
    map currently in slot KEY of an outer map, ``"OUTER[KEY]"`` -- resolved and read inside
    one read-side section, so the slot cannot change map between two steps.

    ``{"map": <map record>, "count": N, "entries": [...]}``; an entry is
    ``{"key", "value"}`` (per-worker maps add ``"per_worker"``: one value per
    slot), or ``{"key", "inner_map_id"}`` for outer maps.  ``key_format`` /
    ``value_format``: show keys / values as ipv4, ipv6, hex or int."""
    for f in (key_format, value_format):
        if f is not None and f not in DISPLAY_FORMATS:
            raise OpsError(f"unknown display format {f!r}; choose one of {', '.join(DISPLAY_FORMATS)}")
    outer_name, slot = _outer_slot(which)
    with attached(name) as rt:
        if slot is None:
            m = _resolve_map(rt, which)
            return _dump(rt, name, which, m, key_format, value_format)
        outer = _resolve_map(rt, outer_name)
        if outer.kind not in ("array_of_maps", "hash_of_maps"):
            raise OpsError(f"{outer_name!r} is a {outer.kind} map, not an outer map: "
                           f"`map dump {name} {outer_name}` dumps it")
        key = _outer_key(outer, slot)
        with user_errors(f"{which!r} of runtime {name!r}"), rt.reader() as r, r.section():
            try:
                inner = outer[key]
            except KeyError:
                raise OpsError(f"{which!r} of runtime {name!r} holds no map") from None
            return _dump(rt, name, which, inner, key_format, value_format)


def _dump(rt, name, which, m, key_format, value_format) -> dict:
    with user_errors(f"map {which!r} of runtime {name!r}"):
        info = next((i for i in rt.maps() if i["id"] == m.id), None)
        if info is None:
            raise OpsError(f"map {which!r} of runtime {name!r} was freed")
        entries: list[dict] = []
        if m.kind in ("array_of_maps", "hash_of_maps"):
            for k in m.keys():
                try:
                    inner = m._lookup_id(k)
                except KeyError:
                    continue
                if inner:
                    entries.append({"key": _jsonable(_display(k, key_format)), "inner_map_id": int(inner)})
        else:
            per_worker = m.kind.startswith("per_worker")
            for k, v in m.items():
                e = {"key": _jsonable(_display(k, key_format)), "value": _jsonable(_display(v, value_format))}
                if per_worker:
                    try:
                        e["per_worker"] = [_jsonable(_display(x, value_format)) for x in m.per_worker(k)]
                    except KeyError:
                        continue
                entries.append(e)
        record = _map_record(rt, info, _outer_refs(rt, rt.maps()))
    return {"runtime": name, "map": record, "count": len(entries), "entries": entries}


# ---------------------------------------------------------------------------
# stat

def _mapped_freed(pid: int, name: str, in_service: set[int]) -> dict | None:
    """What process ``pid`` still maps of this runtime's freed maps, from /proc/PID/maps (the
    kernel's truth, not what the runtime believes): ``{ids, bytes}``; None if unreadable."""
    prefix = f"{seg.SHM_DIR}/{seg.PREFIX}{name}.map."
    ids: set[int] = set()
    total = 0
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or not parts[5].startswith(prefix):
                    continue
                path = parts[5].rstrip("\n").removesuffix(" (deleted)")
                map_id = path[len(prefix):]
                if map_id.isdigit() and int(map_id) not in in_service:
                    ids.add(int(map_id))
                    lo, hi = parts[0].split("-")
                    total += int(hi, 16) - int(lo, 16)
    except OSError:
        return None
    return {"ids": sorted(ids), "bytes": total}


class Sampler:
    """Snapshots of one runtime; rates (events/s, cpu %) come from the previous sample."""

    def __init__(self, rt):
        self.rt = rt
        self._prev: dict[tuple[int, int], tuple[float, dict]] = {}
        self._procs: dict[int, Any] = {}
        self._prev_gp: tuple[float, int] | None = None

    def _proc(self, pid: int):
        try:
            import psutil
        except ImportError:      # pragma: no cover - psutil is a dependency
            return None
        p = self._procs.get(pid)
        if p is None:
            try:
                p = self._procs[pid] = psutil.Process(pid)
            except (psutil.Error, OSError):
                return None
        return p

    def _cpu(self, pid: int) -> tuple[int | None, list[int] | None, float | None]:
        """(cpu it last ran on, affinity, cpu seconds so far)."""
        p = self._proc(pid)
        if p is None:
            return None, None, None
        cpu = aff = secs = None
        with contextlib.suppress(Exception):
            cpu = p.cpu_num()
        with contextlib.suppress(Exception):
            aff = sorted(p.cpu_affinity())
        if cpu is None:
            with contextlib.suppress(Exception):
                aff = aff or sorted(os.sched_getaffinity(pid))
        with contextlib.suppress(Exception):
            t = p.cpu_times()
            secs = t.user + t.system
        return cpu, aff, secs

    def workers(self) -> list[dict]:
        now = time.monotonic()
        now_ns = time.monotonic_ns()
        seen: dict[tuple[int, int], tuple[float, dict]] = {}
        out = []
        in_service = {m["id"] for m in self.rt.maps() if m["state"] != "freed"}
        for r in self.rt.readers_info():
            cpu, aff, secs = self._cpu(r["pid"]) if r["alive"] else (None, None, None)
            key = (r["slot"], r["pid"])
            rec = {"events": r["events"], "batches": r["batches"], "cpu_s": secs}
            prev = self._prev.get(key)
            ev_s = b_s = cpu_pct = None
            if prev is not None and now > prev[0]:
                dt = now - prev[0]
                ev_s = max(0, r["events"] - prev[1]["events"]) / dt
                b_s = max(0, r["batches"] - prev[1]["batches"]) / dt
                if secs is not None and prev[1]["cpu_s"] is not None:
                    cpu_pct = 100.0 * max(0.0, secs - prev[1]["cpu_s"]) / dt
            seen[key] = (now, rec)
            since = (now_ns - r["last_advance_ns"]) / 1e9 if r["last_advance_ns"] else None
            state = "dead" if not r["alive"] else ("online" if r["online"] else "offline")
            out.append({
                "slot": r["slot"], "pid": r["pid"], "worker_id": r["worker_id"], "state": state,
                "stalled": bool(r["alive"] and r["online"] and r["epoch_lag"] > 0
                                and since is not None and since > STALL_S),
                "cpu": cpu, "affinity": aff, "cpu_percent": _round(cpu_pct, 1),
                "epoch": r["epoch"], "epoch_lag": r["epoch_lag"],
                "events": r["events"], "batches": r["batches"],
                "quiescent_states": r["quiescent_states"],
                "events_per_s": _round(ev_s, 1), "batches_per_s": _round(b_s, 1),
                "since_advance_s": _round(since, 3), "restarts": r["restarts"],
                "freed_seen": r["freed_seen"],
                "mapped_freed": _mapped_freed(r["pid"], self.rt.name, in_service) if r["alive"] else None,
            })
        self._prev = seen
        return out

    def grace_periods(self, st: dict, maps: list[dict]) -> dict:
        now = time.monotonic()
        rate = None
        if self._prev_gp is not None and now > self._prev_gp[0]:
            rate = max(0, st["grace_periods"] - self._prev_gp[1]) / (now - self._prev_gp[0])
        self._prev_gp = (now, st["grace_periods"])
        retired = [m for m in maps if m["state"] == "retired"]
        return {
            "count": st["grace_periods"], "per_s": _round(rate, 1),
            "p50_us": _round(st["gp_p50_us"], 2), "p99_us": _round(st["gp_p99_us"], 2),
            "wait_ns_total": st.get("gp_wait_ns_total"),
            "slots_reclaimed": st.get("slots_reclaimed"),
            "pending_retired": len(retired),
            "pending_retired_bytes": sum(m["bytes"] or 0 for m in retired),
            "pending_retired_ids": [m["id"] for m in retired],
        }

    def sample(self, maps: bool = True) -> dict:
        rt = self.rt
        with user_errors(f"runtime {rt.name!r}"):
            st = rt.stats()
            alive = bool(rt._control.controller_alive())
            workers = self.workers()
            map_list = _maps(rt) if maps else []
            files = _scan().get(rt.name, [])
            return {
                "schema": SCHEMA,
                "runtime": rt.name,
                "time": round(time.time(), 3),
                "controller": {"pid": st["controller_pid"] or None, "alive": alive},
                "epoch": {"global": st["global_epoch"], "completed": st["completed_epoch"]},
                "max_workers": rt.max_workers,
                "sections": rt.sections,
                "workers": workers,
                "maps": map_list,
                "grace_periods": self.grace_periods(st, map_list),
                "memory": {"segments": len(files), "bytes": sum(_size(f) or 0 for f in files)},
            }


def _round(x: float | None, nd: int) -> float | None:
    return None if x is None else round(float(x), nd)


def stat(name: str, sample_s: float = SAMPLE_S) -> dict:
    """Everything about runtime ``name`` (fields: README, "Operating a runtime").

    With ``sample_s > 0`` the reader counters are read twice that far apart,
    so ``events_per_s``/``cpu_percent`` are filled in; with 0 they are None."""
    with attached(name) as rt:
        s = Sampler(rt)
        if sample_s > 0:
            s.workers()
            s.grace_periods(rt.stats(), [])
            time.sleep(sample_s)
        return s.sample()


# ---------------------------------------------------------------------------
# cleanup

def _removable(entry: dict) -> tuple[bool, str]:
    state = entry["state"]
    if state == "live":
        return False, f"controller alive (pid {entry['controller_pid']})"
    if state == "inaccessible":
        return False, f"permission denied ({entry['error']})"
    if state == "corrupt" and entry["controller_alive"] is not False:
        return False, "control segment is corrupt and still locked by a live process"
    if state == "dead" and entry.get("readers"):
        return False, (f"controller dead, but {entry['readers']} live reader(s) still attached "
                       f"(pids {', '.join(map(str, entry.get('reader_pids') or []))}): they serve "
                       "its tables")
    return True, {"dead": "controller dead", "orphaned": "no control segment",
                  "corrupt": "control segment corrupt, no process holds it"}.get(state, state)


def _mark_destroyed(name: str) -> None:
    """Before unlinking: mark the runtime destroyed (and its maps freed) for every process
    still attached.  Best effort: a corrupt or vanished segment has nobody to tell."""
    from ..runtime import Runtime
    try:
        rt = Runtime.attach(name)
    except (ShmrcuError, ValueError, OSError):
        return
    try:
        rt._mark_destroyed()
    finally:
        rt.close()


def _unlink_runtime(name: str) -> tuple[list[dict], list[str]]:
    removed, errors = [], []
    files = _scan().get(name, [])
    for f in files:                       # maps, then dir, control segment last
        size = _size(f)
        try:
            if seg.unlink("/" + f):
                removed.append({"segment": "/" + f, "bytes": size or 0})
        except Exception as e:      # noqa: BLE001 -- posix_ipc.PermissionsError and friends
            errors.append(f"{seg.SHM_DIR}/{f}: {_one_line(e)}")
    return removed, errors


def cleanup(name: str | None = None, force: bool = False, prefix: str | None = None) -> dict:
    """Remove the segments of runtimes whose controller is dead.

    ``name=None``: every such runtime in /dev/shm whose name starts with
    ``prefix`` (default: all); live ones are skipped.
    With a name: that runtime; a live one raises OpsError unless ``force``.
    Returns ``{"removed": [{runtime, reason, segments: [{segment, bytes}], bytes}],
    "skipped": [{runtime, reason}], "errors": [str]}``."""
    if force and name is None:
        raise OpsError("cleanup --force needs a runtime NAME (it would remove live runtimes)")
    if prefix is not None and name is not None:
        raise OpsError("cleanup takes a NAME or --prefix, not both")
    if name is not None:
        with user_errors():
            seg.validate_name(name)
        entries = [e for e in list_runtimes() if e["name"] == name]
        if not entries:
            raise OpsError(f"runtime {name!r} not found: nothing named {seg.SHM_DIR}/{seg.PREFIX}{name}.*")
    else:
        entries = [e for e in list_runtimes() if not prefix or e["name"].startswith(prefix)]
    result: dict[str, list] = {"removed": [], "skipped": [], "errors": []}
    for e in entries:
        ok, reason = _removable(e)
        if not ok and not force:
            if name is not None:
                hint = "; pass --force to remove it anyway" if e["state"] != "inaccessible" else ""
                raise OpsError(f"refusing to clean up runtime {name!r}: {reason}{hint}",
                               13 if e["state"] == "inaccessible" else 1)
            result["skipped"].append({"runtime": e["name"], "reason": reason})
            continue
        if not ok:
            reason = f"forced ({reason})"
        _mark_destroyed(e["name"])           # attached processes raise, never serve it
        segs, errs = _unlink_runtime(e["name"])
        result["removed"].append({"runtime": e["name"], "reason": reason, "segments": segs,
                                  "bytes": sum(s["bytes"] for s in segs)})
        result["errors"].extend(errs)
    return result
