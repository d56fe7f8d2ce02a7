"""Maps of a runtime: the directory, creating, opening, listing, and the controller's hooks.

Each map is one POSIX shm segment, ``/shmrcu.<runtime>.map.<id>`` (layout in
``_maplayout.h``).  The runtime's directory segment, ``/shmrcu.<runtime>.dir``, records
every map's id, name and spec so any attached process can open a map by name.  A
process maps each segment once: handles are cached per runtime object by id
(``rt._map_cache``), and freed ones are unmapped after a local grace period.  The
handle classes are in ``handles.py``; they register themselves in ``CLASSES`` (this
module never imports them).
"""
from __future__ import annotations

import errno as _errno
import os
import threading
import time

from . import _formats
from . import _mapdir
from . import _mapheader
from . import _maps
from ..core import segment as seg
from ._maps import MapCore
from ..errors import (CorruptSegment, InvalidMapSpec, MapClosed, MapExists, MapNotFound,
                      ReaderClosed, RuntimeNotFound)

KINDS = {
    "array": _maps.KIND_ARRAY,
    "hash": _maps.KIND_HASH,
    "per_worker_array": _maps.KIND_PER_WORKER_ARRAY,
    "per_worker_hash": _maps.KIND_PER_WORKER_HASH,
    "array_of_maps": _maps.KIND_ARRAY_OF_MAPS,
    "hash_of_maps": _maps.KIND_HASH_OF_MAPS,
    "lpm_trie": _maps.KIND_LPM_TRIE,
}
KIND_NAMES = {code: name for name, code in KINDS.items()}
STATES = {"live": _maps.STATE_LIVE, "retired": _maps.STATE_RETIRED, "freed": _maps.STATE_FREED}
STATE_NAMES = {code: name for name, code in STATES.items()}
_ARRAYS = (_maps.KIND_ARRAY, _maps.KIND_PER_WORKER_ARRAY, _maps.KIND_ARRAY_OF_MAPS)
_OUTERS = (_maps.KIND_ARRAY_OF_MAPS, _maps.KIND_HASH_OF_MAPS)
_PER_WORKER = (_maps.KIND_PER_WORKER_ARRAY, _maps.KIND_PER_WORKER_HASH)
MAX_KEY_SIZE = 512
MAX_VALUE_SIZE = 1 << 20
MAX_ENTRIES = 1 << 31

# kind code -> handle class; filled by handles.py when it is imported
CLASSES: dict[int, type] = {}


# ---------------------------------------------------------------------------
# the directory of a runtime (one mapping per runtime object)

class _DirHandle:
    """A runtime's mapped directory plus the locks around it; lives in rt._map_cache."""

    def __init__(self, segment: seg.Segment):
        self.segment = segment
        self.directory = _mapdir.Directory(segment.mapping, segment.fd)
        self.thread_lock = threading.RLock()   # re-entrant: retire checks references under it
        self.depth = 0

    def __enter__(self) -> _mapdir.Directory:
        self.thread_lock.acquire()
        if self.depth == 0:
            try:
                self.directory.lock()
            except BaseException:
                self.thread_lock.release()
                raise
        self.depth += 1
        return self.directory

    def __exit__(self, *exc) -> None:
        self.depth -= 1
        try:
            if self.depth == 0:
                self.directory.unlock()
        finally:
            self.thread_lock.release()

    def _close_mapping(self) -> None:
        self.segment.close()


_DIR_KEY = "directory"            # rt._map_cache key (map ids are ints)


def _runtime_gone(rt) -> bool:
    return not os.path.exists(os.path.join(seg.SHM_DIR, seg.shm_name(rt.name, "ctl").lstrip("/")))


def _check_runtime(rt) -> None:
    if getattr(rt, "closed", False):
        raise ReaderClosed(f"runtime {rt.name!r} is closed")
    if _runtime_gone(rt):
        raise RuntimeNotFound(f"runtime {rt.name!r} no longer exists (destroyed)")


def _directory(rt, create: bool = False) -> _DirHandle:
    d = rt._map_cache.get(_DIR_KEY)
    if d is not None:
        return d
    _check_runtime(rt)
    name = seg.shm_name(rt.name, "dir")
    segment = None
    if create:
        try:
            segment = seg.Segment.create(name, _mapdir.segment_size(), rt.mode)
            _mapdir.Directory(segment.mapping, segment.fd).initialize()
        except FileExistsError:
            segment = None
    deadline = time.monotonic() + 1.0
    while segment is None:
        try:
            segment = seg.Segment.open(name)
        except FileNotFoundError:
            _check_runtime(rt)
            raise MapNotFound(f"runtime {rt.name!r} has no maps yet") from None
        if segment.mapping is None:
            # 0 bytes: its creator is between shm_open and ftruncate (the first create_map
            # of a runtime); the magic, written last, is waited for in validate()
            segment.close()
            segment = None
            if time.monotonic() >= deadline:
                raise CorruptSegment(f"map directory {name} is empty")
            time.sleep(0.001)
    d = _DirHandle(segment)
    try:
        d.directory.validate(f"map directory {name}")
    except BaseException:
        segment.close()
        raise
    with rt._handles_lock:
        kept = rt._map_cache.setdefault(_DIR_KEY, d)
    if kept is not d:                 # another thread mapped it first: use that one
        segment.close()
    return kept


def outer_insert_lock(rt):
    """What an outer insert holds from its "inner is live" check to its store.

    ``retire`` (controller only) holds the controller's retire lock *and* the
    directory lock: the controller's own inserts need only the former (no
    syscall on the swap path), inserts from other processes take the latter."""
    controller = getattr(rt, "_controller", None)
    return controller.retire_lock if controller is not None else _directory(rt)


def directory_locked(rt) -> _DirHandle:
    """``with directory_locked(rt):`` -- the runtime-wide lock of map bookkeeping
    (across threads and processes; re-entrant within a thread)."""
    return _directory(rt)


# ---------------------------------------------------------------------------
# create / open / list

def _spec_error(msg: str, err: int = _errno.EINVAL) -> InvalidMapSpec:
    return InvalidMapSpec(msg, errno=err)


_TEMPLATE_KEYS = {"kind", "key", "value", "max_entries", "worker_readonly", "whole_values"}


def stored_key_size(code: int, size: int) -> int:
    """Bytes of a key as stored: lpm_trie keys carry their prefix length first."""
    return size + 1 if code == _maps.KIND_LPM_TRIE else size


def _template_from_spec(rt, kind: str, spec: dict) -> dict:
    """An outer map's template from a spec -- the arguments create_map would take for an
    inner map -- checked exactly as creating such a map would check them."""
    unknown = set(spec) - _TEMPLATE_KEYS
    if unknown:
        raise _spec_error(f"inner= spec of {kind}: unknown field(s) {sorted(unknown)}; a template "
                          f"names {', '.join(sorted(_TEMPLATE_KEYS))}")
    if "kind" not in spec or "max_entries" not in spec:
        raise _spec_error(f"inner= spec of {kind} needs at least kind and max_entries")
    ik = spec["kind"]
    if KINDS.get(ik) in _OUTERS:
        raise _spec_error(f"inner= spec of {kind} is itself a {ik}: one level of nesting only")
    v = _validate(rt, ik, spec.get("key"), spec.get("value"), spec["max_entries"], None, None,
                  bool(spec.get("worker_readonly", False)), spec.get("whole_values"))
    return {"kind": v["kind"], "flags": v["flags"], "key_size": v["key_size"],
            "value_size": v["value_size"], "max_entries": v["max_entries"],
            "key_format": v["key_format"], "value_format": v["value_format"]}


def _validate(rt, kind, key, value, max_entries, name, inner, worker_readonly, whole_values) -> dict:
    if kind not in KINDS:
        raise _spec_error(f"unknown map kind {kind!r}; choose one of {', '.join(KINDS)}")
    code = KINDS[kind]
    if isinstance(max_entries, bool) or not isinstance(max_entries, int):
        raise _spec_error(f"max_entries must be an int, got {max_entries!r}")
    if not 1 <= max_entries <= MAX_ENTRIES:
        raise _spec_error(f"max_entries must be in 1..{MAX_ENTRIES}, got {max_entries}",
                          _errno.E2BIG if max_entries > 0 else _errno.EINVAL)
    if name is not None:
        try:
            seg.validate_name(name, "map name")
        except ValueError as e:
            raise _spec_error(str(e)) from None
    inner_info = None
    if code in _OUTERS:
        if inner is None:
            raise _spec_error(f"{kind} needs inner=<a map, or a spec dict> as the template of its "
                              "inner maps")
        if isinstance(inner, dict):
            inner_info = _template_from_spec(rt, kind, inner)
            if value not in (None, "Q"):
                raise _spec_error(f"{kind} values are inner maps: leave value unset")
            value = "Q"
            inner = None
        elif not isinstance(inner, MapCore):
            raise _spec_error(f"inner must be a map or a spec dict, got {type(inner).__name__}")
    if code in _OUTERS and inner is not None:
        if inner.closed:
            raise MapClosed(f"template map {inner.id} is closed")
        if KINDS[inner.kind] in _OUTERS:
            raise _spec_error(f"inner map {inner.id} is itself a {inner.kind}: one level of nesting only")
        if value not in (None, "Q"):
            raise _spec_error(f"{kind} values are inner maps: leave value unset")
        value = "Q"
        inner_info = {"kind": KINDS[inner.kind], "flags": inner.flags,
                      "key_size": stored_key_size(KINDS[inner.kind],
                                                  _formats.parse(inner.key_format, "key").size),
                      "value_size": _formats.parse(inner.value_format, "value").size,
                      "max_entries": inner.max_entries, "key_format": inner.key_format,
                      "value_format": inner.value_format}
    elif inner is not None:
        raise _spec_error(f"inner= is only for array_of_maps and hash_of_maps, not {kind}")
    if code in _ARRAYS:
        if key not in (None, "I"):
            raise _spec_error(f"{kind} maps are indexed by a u32: key must be 'I' or left out, got {key!r}")
        key = "I"
    elif key is None:
        raise _spec_error(f"{kind} maps need a key format, e.g. key='I'")
    if value is None:
        raise _spec_error(f"{kind} maps need a value format, e.g. value='Q'")
    kf = _formats.parse(key, "key")
    vf = _formats.parse(value, "value")
    if code == _maps.KIND_LPM_TRIE and not (kf.nfields == 1 and kf.fields[0].code == "s"
                                            and 1 <= kf.size <= 16):
        raise _spec_error(f"lpm_trie keys are addresses: key='4s' (IPv4), '16s' (IPv6) or 'Ns' "
                          f"with N <= 16, got {key!r}")
    if kf.size > MAX_KEY_SIZE:
        raise _spec_error(f"key format {key!r} is {kf.size} bytes; at most {MAX_KEY_SIZE}", _errno.E2BIG)
    if vf.size > MAX_VALUE_SIZE:
        raise _spec_error(f"value format {value!r} is {vf.size} bytes; at most {MAX_VALUE_SIZE}", _errno.E2BIG)
    if code in _PER_WORKER and not (vf.all_int and vf.native_order):
        raise _spec_error(f"{kind} values are summed across workers: value format {value!r} "
                          f"must have integer fields only, in native byte order")
    flags = _maps.F_WORKER_READONLY if worker_readonly else 0
    if code in _OUTERS:
        if whole_values:
            raise _spec_error(f"{kind} values are inner map ids, one word each: always whole; "
                              f"leave whole_values unset")
    elif code in _ARRAYS:
        if whole_values:
            flags |= _maps.F_WHOLE_VALUES
    else:
        if whole_values is False:
            raise _spec_error(f"{kind} maps always give whole values (an update never shows "
                              f"half-written); whole_values=False is not available")
        flags |= _maps.F_WHOLE_VALUES
    n_copies = rt.max_workers if code in _PER_WORKER else 1
    key_size = stored_key_size(code, kf.size)
    size = _mapheader.segment_size(code, key_size, vf.size, max_entries, n_copies, flags)
    if size == 0:
        raise _spec_error(f"impossible map geometry for {kind} {key!r} -> {value!r} x {max_entries}")
    _check_memory(kind, size)
    return {"kind": code, "flags": flags,
            "key_size": key_size, "value_size": vf.size, "max_entries": max_entries,
            "n_copies": n_copies, "name": name, "key_format": key, "value_format": value,
            "inner": inner_info, "size": size}


def _check_memory(kind: str, size: int) -> None:
    """Refuse a map that could never fit.  What is merely *in use* right now is
    not checked here: creation then fails with ENOSPC, which
    ``create_map(wait_for_memory=True)`` answers by freeing retired maps."""
    st = os.statvfs(seg.SHM_DIR)
    shm_total = st.f_blocks * st.f_frsize
    phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit = min(shm_total, phys)
    if size > limit:
        raise _spec_error(f"{kind} map needs {size} bytes of shared memory but at most {limit} "
                          f"could ever be available ({seg.SHM_DIR} size: {shm_total}, RAM: {phys}); "
                          f"lower max_entries (or max_workers for per-worker maps)", _errno.E2BIG)


def create_map(rt, kind: str, *, key: str | None = None, value: str | None = None, max_entries: int,
               name: str | None = None, inner: MapCore | dict | None = None,
               worker_readonly: bool = False, whole_values: bool | None = None) -> MapCore:
    """Create a map in its own segment and record it in the runtime's directory.

    ``kind``: array, hash, per_worker_array, per_worker_hash, array_of_maps,
    hash_of_maps.  ``key``/``value``: struct formats (arrays: u32 index;
    outer maps: ``inner=`` template instead of ``value`` -- a map, or a spec dict
    ``{"kind", "key", "value", "max_entries"[, "worker_readonly", "whole_values"]}``).
    InvalidMapSpec for bad arguments, MapExists for a taken name."""
    if whole_values is not None and not isinstance(whole_values, bool):
        raise _spec_error(f"whole_values must be a bool, got {whole_values!r}")
    spec = _validate(rt, kind, key, value, max_entries, name, inner, bool(worker_readonly), whole_values)
    d = _directory(rt, create=True)
    with d as directory:
        if name is not None:
            try:
                directory.lookup_name(name)
            except KeyError:
                pass
            else:
                raise MapExists(f"runtime {rt.name!r} already has a map named {name!r}")
        map_id = rt._control.allocate_map_id()
        spec["id"] = map_id
        segment = seg.Segment.create(seg.shm_name(rt.name, f"map.{map_id}"), spec["size"], rt.mode)
        try:
            _mapheader.init_header(segment.mapping, spec)
            directory.add(map_id, name, spec["kind"], spec["flags"], max_entries, spec["key_format"],
                          spec["value_format"], _maps.STATE_LIVE)
        except BaseException:
            segment.close()
            segment.unlink()
            raise
    mapping = _detach(segment)
    info = _mapheader.read_header(mapping, map_id, f"map {map_id}")
    return _bind(rt, mapping, map_id, info)


def _detach(segment: seg.Segment):
    """Keep the mapping, close the descriptor (one fd per map would run out)."""
    mapping = segment.mapping
    segment.mapping = None
    segment.close()
    return mapping


def _bind(rt, mapping, map_id: int, info: dict, into: MapCore | None = None) -> MapCore:
    where = f"map {map_id} of runtime {rt.name!r}"
    try:
        kf = _formats.parse(info["key_format"], "key")
        vf = _formats.parse(info["value_format"], "value")
    except InvalidMapSpec as e:
        mapping.close()
        raise CorruptSegment(f"{where} has unusable formats: {e}") from None
    if stored_key_size(info["kind"], kf.size) != info["key_size"] or vf.size != info["value_size"]:
        mapping.close()
        raise CorruptSegment(f"{where}: formats {info['key_format']!r}/{info['value_format']!r} do not "
                             f"match the recorded sizes {info['key_size']}/{info['value_size']}")
    handle = CLASSES[info["kind"]]() if into is None else into
    handle._attach(rt, rt._control, mapping, map_id, kf, vf, info)
    rt._add_handle(handle)
    if handle.state_code == _maps.STATE_FREED:
        # freed between our directory lookup and the registration above: a housekeeping
        # pass in between may already have acknowledged the free without seeing us
        handle._close_mapping()
        raise MapClosed(f"map {map_id} of runtime {rt.name!r} was freed")
    with rt._handles_lock:
        if not rt._map_cache.get(map_id) or rt._map_cache[map_id].closed:
            rt._map_cache[map_id] = handle
    return handle


def open_map(rt, name_or_id: str | int) -> MapCore:
    """The handle of map ``name_or_id`` (cached: one per map per runtime object).

    MapNotFound (a KeyError) names what was asked for; RuntimeNotFound if the
    runtime was destroyed; CorruptSegment for a bad header."""
    if isinstance(name_or_id, str):
        d = _directory(rt)
        with d as directory:
            entry = directory.lookup_name(name_or_id)
        return _open_id(rt, entry["id"], entry)
    if isinstance(name_or_id, bool) or not isinstance(name_or_id, int):
        raise TypeError(f"maps are opened by name (str) or id (int), not {type(name_or_id).__name__}")
    return _open_id(rt, name_or_id)


def _open_id(rt, map_id: int, entry: dict | None = None, into: MapCore | None = None) -> MapCore:
    """The cached handle of ``map_id``, or a new mapping bound to a new handle (or to
    ``into``: a handle a forked child inherited, re-mapped in place)."""
    handle = rt._map_cache.get(map_id)
    if into is None and handle is not None and not handle.closed:
        return handle
    if entry is None:
        d = _directory(rt)
        with d as directory:
            entry = directory.lookup_id(map_id)
        if entry is None:
            _check_runtime(rt)
            raise MapNotFound(f"no map with id {map_id} in runtime {rt.name!r}")
    if entry["state"] == _maps.STATE_FREED:
        raise MapClosed(f"map {map_id} of runtime {rt.name!r} was freed")
    readonly = bool(entry["flags"] & _maps.F_WORKER_READONLY) and not rt.is_controller
    name = seg.shm_name(rt.name, f"map.{map_id}")
    try:
        segment = seg.Segment.open(name, writable=not readonly)
    except FileNotFoundError:
        _check_runtime(rt)
        raise MapNotFound(f"map {map_id} of runtime {rt.name!r} has no segment {name} (freed?)") from None
    if segment.mapping is None:
        segment.close()
        raise CorruptSegment(f"map segment {name} is empty")
    mapping = _detach(segment)
    try:
        info = _mapheader.read_header(mapping, map_id, f"map segment {name}")
    except BaseException:
        mapping.close()
        raise
    return _bind(rt, mapping, map_id, info, into)


def rebind_inherited(rt, handle: MapCore) -> None:
    """A handle a forked child inherited: map its segment again, in this process."""
    _open_id(rt, handle.id, into=handle)


def list_maps(rt) -> list[dict]:
    """Every map of the runtime: id, name, kind, key, value, max_entries, flags, state."""
    try:
        d = _directory(rt)
    except MapNotFound:
        return []
    with d as directory:
        entries = directory.entries_list()
    out = []
    for e in entries:
        flags = tuple(n for n, f in (("worker_readonly", _maps.F_WORKER_READONLY),
                                     ("whole_values", _maps.F_WHOLE_VALUES)) if e["flags"] & f)
        out.append({"id": e["id"], "name": e["name"], "kind": KIND_NAMES.get(e["kind"], str(e["kind"])),
                    "key": e["key_format"], "value": e["value_format"], "max_entries": e["max_entries"],
                    "flags": flags, "state": STATE_NAMES.get(e["state"], str(e["state"]))})
    return out


# ---------------------------------------------------------------------------
# hooks for the controller

def set_map_state(rt, map_or_id: MapCore | int, state: str) -> None:
    """Move a map to ``"live"``, ``"retired"`` or ``"freed"`` (header and directory)."""
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
    m = map_or_id if isinstance(map_or_id, MapCore) else _open_id(rt, map_or_id)
    m._set_state(STATES[state])
    with _directory(rt) as directory:
        directory.set_state(m.id, STATES[state])


def destroy_map(rt, map_or_id: MapCore | int) -> bool:
    """Free a map at once: state freed, directory entry removed, segment unlinked.

    Processes that still map it keep valid memory until they ``drop_freed``.
    The controller calls this only after a grace period.  False if already gone."""
    map_id = map_or_id.id if isinstance(map_or_id, MapCore) else int(map_or_id)
    m = rt._map_cache.get(map_id)
    if m is None or m.closed:
        try:
            m = _open_id(rt, map_id)
        except (MapNotFound, MapClosed):
            m = None
    if m is not None and m.writable:
        m._set_state(_maps.STATE_FREED)
    with _directory(rt) as directory:
        directory.remove(map_id)
    return seg.unlink(seg.shm_name(rt.name, f"map.{map_id}"))


def mark_all_freed(rt) -> int:
    """The runtime is being destroyed: mark every map of it freed, so that processes
    still attached stop serving them (their next access raises).  Returns how many."""
    try:
        d = _directory(rt)
    except (MapNotFound, RuntimeNotFound):
        return 0
    with d as directory:
        entries = directory.entries_list()
    n = 0
    for e in entries:
        try:
            segment = seg.Segment.open(seg.shm_name(rt.name, f"map.{e['id']}"), writable=True)
        except (FileNotFoundError, PermissionError):
            continue
        try:
            if segment.mapping is not None:
                _mapheader.mark_freed(segment.mapping)
                n += 1
        finally:
            segment.close()
    return n


def drop_freed(rt) -> int:
    """Unmap this process's cached maps whose state is freed; returns how many.

    Call at a quiescent point (outside read-side sections): handles of those
    maps raise MapClosed afterwards."""
    dropped = 0
    for m in rt._handle_list():
        if not m.closed and m.state_code == _maps.STATE_FREED:
            m._close_mapping()
            dropped += 1
    _prune_cache(rt)
    return dropped


def freed_handles(rt) -> list[MapCore]:
    """Handles of this runtime object whose map the controller has freed (still mapped)."""
    return [m for m in rt._handle_list() if not m.closed and m.state_code == _maps.STATE_FREED]


def close_handles(rt, handles) -> int:
    """Unmap ``handles`` (after the local grace period that makes it safe)."""
    for m in handles:
        m._close_mapping()
    _prune_cache(rt)
    return len(handles)


def _prune_cache(rt) -> None:
    """Forget closed handles (under the lock: other threads add to the cache)."""
    with rt._handles_lock:
        for map_id in [k for k, m in rt._map_cache.items() if isinstance(k, int) and m.closed]:
            del rt._map_cache[map_id]


def mapped_ids(rt) -> list[int]:
    """Ids of the maps this process has mapped right now."""
    with rt._handles_lock:
        return sorted(i for i, m in rt._map_cache.items() if isinstance(i, int) and not m.closed)
