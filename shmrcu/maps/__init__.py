"""Maps in shared memory: creating, opening, listing, and the handle classes.

Each map is one POSIX shm segment, ``/shmrcu.<runtime>.map.<id>`` (layout in
``_maplayout.h``; kernels in ``_maps.pyx``).  The runtime's directory segment,
``/shmrcu.<runtime>.dir``, records every map's id, name and spec so any
attached process can open a map by name.  A process maps each segment once:
handles are cached per runtime object by id (``rt._map_cache``), and
``drop_freed`` unmaps the ones the controller has freed.

    flows = rt.create_map("hash", key="I", value="QQ", max_entries=1 << 16, name="flows")
    flows[7] = (1, 1500)
    flows.add(7, (1, 60))                        # atomic per-field add
    outer = rt.create_map("array_of_maps", max_entries=4, inner=flows)
    outer[0] = flows                             # template checked: kind, formats, flags
"""
from __future__ import annotations

import errno as _errno
import os
import threading
import time
import weakref
from typing import Any

from ..core import _epoch
from . import _formats
from . import _mapdir
from . import _mapheader
from . import _maps
from ..core import segment as seg
from ._batch import MapBatch
from ._maps import ANY, EXIST, NOEXIST
from ..errors import (CorruptSegment, InvalidMapSpec, MapClosed, MapExists, MapNotFound, OutsideSection,
                     ReaderClosed,
                     RuntimeNotFound, TemplateMismatch)

__all__ = [
    "ANY", "NOEXIST", "EXIST", "KINDS",
    "Map", "ArrayMap", "HashMap", "PerWorkerArrayMap", "PerWorkerHashMap", "ArrayOfMaps", "HashOfMaps",
    "create_map", "open_map", "list_maps", "drop_freed", "set_map_state", "destroy_map",
]

KINDS = {
    "array": _maps.KIND_ARRAY,
    "hash": _maps.KIND_HASH,
    "per_worker_array": _maps.KIND_PER_WORKER_ARRAY,
    "per_worker_hash": _maps.KIND_PER_WORKER_HASH,
    "array_of_maps": _maps.KIND_ARRAY_OF_MAPS,
    "hash_of_maps": _maps.KIND_HASH_OF_MAPS,
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


# ---------------------------------------------------------------------------
# handle classes

class Map(MapBatch):
    """A map of a runtime, dict-like.  Get one from ``rt.create_map`` or ``rt.map``."""

    kind = "map"

    @property
    def name(self) -> str | None:
        return self.info["name"]

    @property
    def state(self) -> str:
        """``"live"``, ``"retired"`` (swapped out, still readable) or ``"freed"``."""
        return STATE_NAMES.get(self.state_code, "freed")

    @property
    def flags(self) -> int:
        return self.info["flags"]

    @property
    def worker_readonly(self) -> bool:
        return bool(self.info["flags"] & _maps.F_WORKER_READONLY)

    @property
    def whole_values(self) -> bool:
        """Readers see every value whole, never half an update (hash maps: always;
        arrays: when created with ``whole_values=True``)."""
        return bool(self.info["flags"] & _maps.F_WHOLE_VALUES)

    @property
    def spec(self) -> dict:
        """The arguments that would create a map like this one (template comparisons)."""
        return {"kind": self.kind, "key": self.key_format, "value": self.value_format,
                "max_entries": self.max_entries, "worker_readonly": self.worker_readonly,
                "whole_values": self.whole_values}

    def __repr__(self) -> str:
        if self.closed:
            return f"<shmrcu.{type(self).__name__} id={self.id} closed>"
        name = f" {self.name!r}" if self.name else ""
        return (f"<shmrcu.{type(self).__name__}{name} id={self.id} key={self.key_format!r} "
                f"value={self.value_format!r} max_entries={self.max_entries} {self.state}>")


class ArrayMap(Map):
    """u32 index -> value; every index exists (zero at first), nothing can be deleted."""
    kind = "array"


class HashMap(Map):
    """Fixed-size key -> value, preallocated; lock-free inserts from any process."""
    kind = "hash"


class PerWorkerArrayMap(Map):
    """An array with one value copy per worker slot; reads return the sum."""
    kind = "per_worker_array"


class PerWorkerHashMap(Map):
    """A hash with one value copy per worker slot; reads return the sum."""
    kind = "per_worker_hash"


class _OuterMap(Map):
    """Values are inner maps (stored as ids); every inner map must match the template."""

    @property
    def inner_template(self) -> dict:
        t = self.info["inner"]
        return {"kind": KIND_NAMES[t["kind"]], "key": t["key_format"], "value": t["value_format"],
                "max_entries": t["max_entries"],
                "worker_readonly": bool(t["flags"] & _maps.F_WORKER_READONLY),
                "whole_values": bool(t["flags"] & _maps.F_WHOLE_VALUES)}

    def _guard(self):
        """None for the controller (the only updater: the kernel's
        rcu_dereference_protected); else True, or in debug mode the reader whose section
        protects an inner map reached now.  OutsideSection when the calling thread holds
        no section and no online reader."""
        rt = self.runtime
        if rt._controller is not None:
            return None
        if _epoch.thread_online():                 # one thread-local load
            return _epoch.thread_reader() if rt.debug else True
        raise OutsideSection(
            f"{self.kind} {self.name or self.id!r}: reaching an inner map needs a read-side "
            "section of this thread -- `with reader.section(): inner = outer[k]` (or a QSBR "
            "reader that is online) -- else the controller may replace and free it while you "
            "use it. Readers are per thread: rt.reader() in each thread that reads")

    def _inner(self, map_id: int, reader) -> Map:
        m = _open_id(self.runtime, map_id)
        if reader is not None and reader is not True:
            return SectionBound(m, reader)
        return m

    def __getitem__(self, key) -> Map:
        rt = self.runtime
        if rt._controller is None and (rt.debug or not _epoch.thread_online()):
            return self._inner(self._lookup_id(key), self._guard())     # raises, or debug mode
        return _open_id(rt, self._lookup_id(key))

    def get(self, key, default=None):
        r = self._guard()
        try:
            return self._inner(self._lookup_id(key), r)
        except KeyError:
            return default

    def __setitem__(self, key, inner: Map) -> None:
        self.swap(key, inner)

    def update(self, key, inner: Map, flags: int = ANY, *, sync: bool = True) -> None:
        """Store ``inner`` at ``key`` with BPF ``flags``."""
        self.swap(key, inner, flags, sync=sync)

    def swap(self, key, inner: Map, flags: int = ANY, *, sync: bool = True) -> Map | None:
        """Store ``inner`` at ``key`` with one atomic exchange; returns the old inner map
        (None if the slot was empty).  ``_swap_id`` is the same exchange on raw ids.

        TemplateMismatch (EINVAL) unless ``inner`` matches the template.  After a
        successful update the runtime's policy runs (``sync=True``: wait for a grace
        period, or defer it to the enclosing ``rt.batch()``); a failed one never waits."""
        if isinstance(inner, SectionBound):
            inner = inner._shmrcu_map
        self._check_template(inner)
        if sync:
            self._check_can_wait()
        with outer_insert_lock(self.runtime):       # excludes a concurrent retire(inner)
            if inner.state_code != _maps.STATE_LIVE:
                raise TemplateMismatch(f"inner map {inner.id} is {inner.state}, not live")
            old = self._swap_id(key, inner.id, flags)
        self._after_update(sync)
        return _open_id(self.runtime, old) if old else None

    def __delitem__(self, key) -> None:
        self.pop_id(key)

    def pop_id(self, key, *, sync: bool = True) -> int:
        """Remove ``key``; returns the inner id it held (then the update policy runs)."""
        if sync:
            self._check_can_wait()
        old = self._swap_id(key, 0)
        self._after_update(sync)
        return old

    def _check_can_wait(self) -> None:
        """A synchronous update from inside this thread's own section would wait for
        itself: refuse it before anything is stored (SelfDeadlock), not after."""
        if _epoch.thread_online():
            self.runtime._control.prepare_wait()

    def _after_update(self, sync: bool) -> None:
        hook = getattr(self.runtime, "_after_outer_update", None)
        if hook is not None:
            hook(sync)

    def replace(self, key, rows, *, max_entries: int | None = None, name: str | None = None) -> dict:
        """Reload one table in one call (controller only): build a new inner map matching
        the template from ``rows``, swap it in at ``key`` (one grace period, or the
        enclosing ``rt.batch()``'s), retire the map it replaces, and say what happened.

        ``rows``: a mapping, an iterable of ``(key, value)`` pairs, a numpy structured
        array or a pandas DataFrame (first column the key, the others the value fields),
        or a ``(keys, values)`` pair of packed buffers (``update_batch``).  The new map's
        ``version`` is the old one's + 1 (1 for an empty slot).  ``max_entries``: for
        hash inner maps (default: the template's).  If filling fails, nothing is swapped
        and the half-built map is retired.  Returns ``{key, map_id, old_map_id, version,
        entries, bytes, seconds}``."""
        t0 = time.perf_counter()
        rt = self.runtime
        rt.controller                                  # NotController unless we hold the lease
        t = self.inner_template
        kind = t["kind"]
        spec = {"value": t["value"], "worker_readonly": t["worker_readonly"],
                "max_entries": t["max_entries"] if KINDS[kind] in _ARRAYS or max_entries is None
                else max_entries}
        if KINDS[kind] not in _ARRAYS:
            spec["key"] = t["key"]
        elif t["whole_values"]:
            spec["whole_values"] = True
        new = rt.create_map(kind, name=name, **spec)
        try:
            entries = _fill(new, rows)
            try:
                old_id = self._lookup_id(key)
            except KeyError:
                old_id = 0
            old_version = _open_id(rt, old_id).version if old_id else 0
            new.version = old_version + 1
            old = self.swap(key, new)
        except BaseException:
            rt.retire(new)                             # never published: freed after a grace period
            raise
        if old is not None:
            rt.retire(old)
        return {"key": key, "map_id": new.id, "old_map_id": old.id if old is not None else None,
                "version": old_version + 1, "entries": entries,
                "bytes": new.mapping.size,
                "seconds": time.perf_counter() - t0}

    def inner_ids(self) -> list[int]:
        return self._ids()

    def values(self) -> list[Map]:
        r = self._guard()
        return [self._inner(i, r) for i in self._ids()]

    def items(self) -> list[tuple[Any, Map]]:
        r = self._guard()
        out = []
        for k in self.keys():
            try:
                out.append((k, self._inner(self._lookup_id(k), r)))
            except KeyError:          # deleted since keys() looked
                pass
        return out

    def _check_template(self, inner: object) -> None:
        if isinstance(inner, SectionBound):
            inner = inner._shmrcu_map
        if not isinstance(inner, Map):
            raise TemplateMismatch(f"values of {self.kind} maps are maps, got {type(inner).__name__}")
        if inner.closed or inner.state != "live":
            raise TemplateMismatch(f"inner map {inner.id} is {inner.state}, not live")
        if inner.runtime is not self.runtime and getattr(inner.runtime, "name", None) != self.runtime.name:
            raise TemplateMismatch(f"inner map {inner.id} belongs to another runtime")
        want = self.inner_template
        have = inner.spec
        keys = ("kind", "key", "value", "worker_readonly", "whole_values") + \
            (("max_entries",) if KINDS[want["kind"]] in _ARRAYS else ())
        diff = [f"{k}: {have[k]!r} != {want[k]!r}" for k in keys if have[k] != want[k]]
        if diff:
            raise TemplateMismatch(f"inner map {inner.id} does not match the template of "
                                   f"{self.kind} {self.id}: " + "; ".join(diff))


def _fill(m: Map, rows) -> int:
    """Write ``rows`` (see ``_OuterMap.replace``) into the fresh map ``m``; the count."""
    if isinstance(rows, tuple) and len(rows) == 2 and all(
            isinstance(b, (bytes, bytearray, memoryview)) or hasattr(b, "__array_interface__")
            for b in rows):
        return m.update_batch(rows[0], rows[1])
    nvalue = len(_formats.parse(m.value_format, "value").fields)

    def pairs_of(records):
        for rec in records:
            rec = tuple(rec)
            yield rec[0], (rec[1] if nvalue == 1 else tuple(rec[1:]))

    if hasattr(rows, "itertuples"):                    # pandas DataFrame
        it = pairs_of(rows.itertuples(index=False, name=None))
    elif getattr(getattr(rows, "dtype", None), "names", None):   # numpy structured array
        it = pairs_of(rows.tolist())
    elif hasattr(rows, "items"):
        it = rows.items()
    else:
        it = rows
    n = 0
    for k, v in it:
        m[k] = v
        n += 1
    return n


class SectionBound:
    """Debug mode (``SHMRCU_DEBUG=1`` or ``rt.debug = True``): an inner map reached
    through an outer map, usable only inside the section (or QSBR batch) that reached
    it.  Any use after that section ended -- or after a quiescent state -- raises
    OutsideSection instead of reading a map that may have been freed meanwhile."""

    __slots__ = ("_shmrcu_map", "_shmrcu_reader", "_shmrcu_section")

    def __init__(self, m: Map, reader):
        object.__setattr__(self, "_shmrcu_map", m)
        object.__setattr__(self, "_shmrcu_reader", reader)
        object.__setattr__(self, "_shmrcu_section", reader.sections)

    def _shmrcu_check(self) -> Map:
        r = self._shmrcu_reader
        if r.closed or not r.is_online or r.sections != self._shmrcu_section:
            m = self._shmrcu_map
            raise OutsideSection(
                f"inner map {m.name or m.id!r} was reached through an outer map inside a read-side "
                "section that has ended (or a QSBR reader that has since been quiescent): resolve "
                "it again inside the section that uses it (SHMRCU_DEBUG check)")
        return self._shmrcu_map

    def __getattr__(self, name):
        value = getattr(self._shmrcu_check(), name)
        if callable(value):
            def checked(*args, **kwargs):
                return getattr(self._shmrcu_check(), name)(*args, **kwargs)
            return checked
        return value

    def __getitem__(self, key):
        return self._shmrcu_check()[key]

    def __setitem__(self, key, value):
        self._shmrcu_check()[key] = value

    def __delitem__(self, key):
        del self._shmrcu_check()[key]

    def __contains__(self, key):
        return key in self._shmrcu_check()

    def __len__(self):
        return len(self._shmrcu_check())

    def __iter__(self):
        return iter(self._shmrcu_check())

    def __repr__(self):
        return f"<section-bound {self._shmrcu_map!r}>"


class ArrayOfMaps(_OuterMap):
    kind = "array_of_maps"


class HashOfMaps(_OuterMap):
    kind = "hash_of_maps"


CLASSES = {
    _maps.KIND_ARRAY: ArrayMap, _maps.KIND_HASH: HashMap,
    _maps.KIND_PER_WORKER_ARRAY: PerWorkerArrayMap, _maps.KIND_PER_WORKER_HASH: PerWorkerHashMap,
    _maps.KIND_ARRAY_OF_MAPS: ArrayOfMaps, _maps.KIND_HASH_OF_MAPS: HashOfMaps,
}


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
    if segment is None:
        try:
            segment = seg.Segment.open(name)
        except FileNotFoundError:
            _check_runtime(rt)
            raise MapNotFound(f"runtime {rt.name!r} has no maps yet") from None
        if segment.mapping is None:
            segment.close()
            raise CorruptSegment(f"map directory {name} is empty")
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
            raise _spec_error(f"{kind} needs inner=<a map> as the template of its inner maps")
        if not isinstance(inner, Map):
            raise _spec_error(f"inner must be a map, got {type(inner).__name__}")
        if inner.closed:
            raise MapClosed(f"template map {inner.id} is closed")
        if KINDS[inner.kind] in _OUTERS:
            raise _spec_error(f"inner map {inner.id} is itself a {inner.kind}: one level of nesting only")
        if value not in (None, "Q"):
            raise _spec_error(f"{kind} values are inner maps: leave value unset")
        value = "Q"
        inner_info = {"kind": KINDS[inner.kind], "flags": inner.flags,
                      "key_size": _formats.parse(inner.key_format, "key").size,
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
    size = _mapheader.segment_size(code, kf.size, vf.size, max_entries, n_copies, flags)
    if size == 0:
        raise _spec_error(f"impossible map geometry for {kind} {key!r} -> {value!r} x {max_entries}")
    _check_memory(kind, size)
    return {"kind": code, "flags": flags,
            "key_size": kf.size, "value_size": vf.size, "max_entries": max_entries,
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
               name: str | None = None, inner: Map | None = None, worker_readonly: bool = False,
               whole_values: bool | None = None) -> Map:
    """Create a map in its own segment and record it in the runtime's directory.

    ``kind``: array, hash, per_worker_array, per_worker_hash, array_of_maps,
    hash_of_maps.  ``key``/``value``: struct formats (arrays: u32 index;
    outer maps: ``inner=`` template instead of ``value``).  InvalidMapSpec for
    bad arguments, MapExists for a taken name."""
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


def _bind(rt, mapping, map_id: int, info: dict, into: Map | None = None) -> Map:
    where = f"map {map_id} of runtime {rt.name!r}"
    try:
        kf = _formats.parse(info["key_format"], "key")
        vf = _formats.parse(info["value_format"], "value")
    except InvalidMapSpec as e:
        mapping.close()
        raise CorruptSegment(f"{where} has unusable formats: {e}") from None
    if kf.size != info["key_size"] or vf.size != info["value_size"]:
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


def open_map(rt, name_or_id: str | int) -> Map:
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


def _open_id(rt, map_id: int, entry: dict | None = None, into: Map | None = None) -> Map:
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


def rebind_inherited(rt, handle: Map) -> None:
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

def set_map_state(rt, map_or_id: Map | int, state: str) -> None:
    """Move a map to ``"live"``, ``"retired"`` or ``"freed"`` (header and directory)."""
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
    m = map_or_id if isinstance(map_or_id, Map) else _open_id(rt, map_or_id)
    m._set_state(STATES[state])
    with _directory(rt) as directory:
        directory.set_state(m.id, STATES[state])


def destroy_map(rt, map_or_id: Map | int) -> bool:
    """Free a map at once: state freed, directory entry removed, segment unlinked.

    Processes that still map it keep valid memory until they ``drop_freed``.
    The controller calls this only after a grace period.  False if already gone."""
    map_id = map_or_id.id if isinstance(map_or_id, Map) else int(map_or_id)
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


def freed_handles(rt) -> list[Map]:
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
