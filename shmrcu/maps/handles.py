"""The map handle classes: ``Map`` and one class per kind; outer maps (``ArrayOfMaps``,
``HashOfMaps``) with the template check, the section guard and one-call reloads.

The dict-like core is ``MapCore`` (``_maps.pyx``) plus ``MapBatch`` (``_batch.pyx``);
creating, opening and caching handles is ``registry.py``.
"""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any

from ..core import _epoch
from . import _formats
from . import _maps
from ._batch import MapBatch
from ._lpm import LpmCore
from ._maps import ANY
from .registry import (CLASSES, KIND_NAMES, KINDS, STATE_NAMES, _ARRAYS, _open_id,
                       outer_insert_lock)
from ..errors import OutsideSection, TemplateMismatch, UnsupportedOperation


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

    def replace(self, key, rows, *, max_entries: int | None = None, name: str | None = None,
                sync: bool = True) -> dict:
        """Reload one table in one call (controller only): build a new inner map matching
        the template from ``rows``, swap it in at ``key`` (one grace period, or the
        enclosing ``rt.batch()``'s), retire the map it replaces, and say what happened.

        ``rows``: a mapping, an iterable of ``(key, value)`` pairs, a numpy structured
        array or a pandas DataFrame (first column the key, the others the value fields),
        or a ``(keys, values)`` pair of packed buffers (``update_batch``).  The new map's
        ``version`` is the old one's + 1 (1 for an empty slot).  ``max_entries``: for
        hash inner maps (default: the template's).  If filling fails, nothing is swapped
        and the half-built map is retired; the replaced map is retired even if the wait for
        the grace period is interrupted.  ``sync=False``: no grace-period wait here (as in
        ``swap``).  Returns ``{key, map_id, old_map_id, version, entries, bytes, seconds}``."""
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
        size = new.mapping.size             # (another thread's replace may retire it later)
        try:
            entries = _fill(new, rows)
            self._check_template(new)
            if sync:
                self._check_can_wait()
        except BaseException:
            rt.retire(new)                             # never published: freed after a grace period
            raise
        # One replace at a time per outer map (threads of the controller): the version is
        # read, set and exchanged together, so two reloads never get one number.
        try:
            with self._replace_lock():
                try:
                    old_id = self._lookup_id(key)
                except KeyError:
                    old_id = 0
                version = (_open_id(rt, old_id).version if old_id else 0) + 1
                new.version = version
                with outer_insert_lock(rt):            # as swap(): excludes a concurrent retire
                    old_id = self._swap_id(key, new.id, ANY)
        except BaseException:
            rt.retire(new)                             # not exchanged: nobody can reach it
            raise
        try:
            self._after_update(sync)                   # the grace period (or the batch's)
        finally:
            if old_id:                                 # out of service whatever happens now
                rt.retire(_open_id(rt, old_id))
        return {"key": key, "map_id": new.id, "old_map_id": old_id or None, "version": version,
                "entries": entries, "bytes": size, "seconds": time.perf_counter() - t0}

    def _replace_lock(self):
        lock = self.__dict__.get("_replace_lock_obj")
        if lock is None:
            lock = self.__dict__.setdefault("_replace_lock_obj", threading.Lock())
        return lock

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
        packed = _pack_columns(m, rows)
        if packed is not None:                         # columns -> packed buffers, no per-row Python
            return m.update_batch(*packed)
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


def _np_dtype(np, fmt):
    """The numpy dtype laid out exactly like ``struct`` format ``fmt`` (fields f0, f1, ...)."""
    order = {"<": "<", ">": ">", "!": ">"}.get(fmt.text[0], "=")
    formats = [f"S{f.size}" if f.code == "s" else order + np.dtype(f.code).char for f in fmt.fields]
    return np.dtype({"names": [f"f{i}" for i in range(len(formats))], "formats": formats,
                     "offsets": [f.offset for f in fmt.fields], "itemsize": fmt.size})


def _pack_columns(m: Map, rows):
    """A structured array whose first column is the (one-field) key and the next ones the value
    fields, packed into (keys, values) buffers for update_batch; None when it does not fit."""
    import numpy as np
    kf = _formats.parse(m.key_format, "key")
    vf = _formats.parse(m.value_format, "value")
    names = rows.dtype.names
    if kf.nfields != 1 or len(names) != 1 + vf.nfields or rows.ndim != 1:
        return None
    try:
        kd, vd = _np_dtype(np, kf), _np_dtype(np, vf)
        targets = [(names[0], kd["f0"])] + [(n, vd[f"f{i}"]) for i, n in enumerate(names[1:])]
        # only casts that lose nothing: anything else takes the per-row path, which
        # range-checks every value (no silent wrap-around of a -1 into a u64)
        if not all(np.can_cast(rows.dtype[n], t, "safe") for n, t in targets):
            return None
        keys = np.zeros(len(rows), dtype=kd)
        vals = np.zeros(len(rows), dtype=vd)
        keys["f0"] = rows[names[0]]
        for i, name in enumerate(names[1:]):
            vals[f"f{i}"] = rows[name]
    except (TypeError, ValueError):
        return None
    return keys.view(np.uint8), vals.view(np.uint8)


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


class LpmTrieMap(LpmCore, Map):
    """Longest-prefix match (BPF_MAP_TYPE_LPM_TRIE): keys are prefixes, lookups are full
    addresses and find the longest prefix that contains them.

    Prefixes: ``"10.0.0.0/8"``, ``ipaddress.ip_network(...)``, or ``(prefix_len, address)``
    with the address as bytes (the kernel's ``struct bpf_lpm_trie_key``); host bits must be
    0.  Addresses: ``"10.1.2.3"``, ``ipaddress`` addresses, bytes of the key's size, or an
    int (big-endian).  ``m[addr]`` / ``m.get(addr)`` / ``addr in m`` / ``m.longest_prefix(addr)``
    look up; ``m[prefix] = v`` / ``del m[prefix]`` change prefixes; ``m.lookup_batch(addrs)``
    looks up a buffer of packed addresses without the GIL (never stops at a miss: pass
    ``default=`` and/or ``found=``)."""
    kind = "lpm_trie"

    @property
    def address_size(self) -> int:
        return self.info["key_size"] - 1       # the stored key is [prefix length][address]

    def _addr(self, a) -> bytes:
        n = self.address_size
        if type(a) is bytes and len(a) == n:       # the common, packed case first
            return a
        if isinstance(a, str):
            fam = socket.AF_INET if n == 4 else socket.AF_INET6 if n == 16 else None
            if fam is None:
                raise TypeError(f"{a!r}: text addresses are for 4- or 16-byte maps; give {n} bytes")
            try:
                return socket.inet_pton(fam, a)
            except OSError:
                raise TypeError(f"{a!r} is not an IPv{4 if n == 4 else 6} address") from None
        if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            a = a.packed
        elif isinstance(a, int) and not isinstance(a, bool):
            if not 0 <= a < 1 << (8 * n):
                raise TypeError(f"address {a} does not fit {n} bytes")
            return a.to_bytes(n, "big")
        if isinstance(a, (bytes, bytearray, memoryview)) and len(a) == n:
            return bytes(a)
        raise TypeError(f"address {a!r} is not a {n}-byte address of map {self.name or self.id}")

    def _prefix(self, p) -> tuple[bytes, int]:
        n = self.address_size
        if isinstance(p, tuple) and len(p) == 2:
            plen, addr = p
            addr = self._addr(addr)
        else:
            if isinstance(p, str) and "/" not in p:
                raise TypeError(f"{p!r} is an address; a prefix needs its length: '{p}/{8 * n}'")
            try:
                net = p if isinstance(p, (ipaddress.IPv4Network, ipaddress.IPv6Network)) \
                    else ipaddress.ip_network(p, strict=True)
            except ValueError as e:
                raise ValueError(f"prefix {p!r}: {e}") from None
            except TypeError:
                raise TypeError(f"prefix {p!r}: give 'a.b.c.d/len', an ip_network or "
                                "(len, address)") from None
            addr, plen = net.network_address.packed, net.prefixlen
            if len(addr) != n:
                raise TypeError(f"prefix {p!r} is IPv{net.version}; map {self.name or self.id} "
                                f"holds {n}-byte addresses")
        if isinstance(plen, bool) or not isinstance(plen, int) or not 0 <= plen <= 8 * n:
            raise ValueError(f"prefix length {plen!r} out of range 0..{8 * n}")
        value = int.from_bytes(addr, "big")
        if value & ((1 << (8 * n - plen)) - 1):
            raise ValueError(f"prefix {addr.hex()}/{plen} has host bits set")
        return addr, plen

    def _text(self, addr: bytes, plen: int) -> str:
        n = self.address_size
        if n in (4, 16):
            return f"{socket.inet_ntop(socket.AF_INET if n == 4 else socket.AF_INET6, addr)}/{plen}"
        return f"{addr.hex()}/{plen}"

    def __setitem__(self, prefix, value) -> None:
        self.update(prefix, value)

    def update(self, prefix, value, flags: int = ANY) -> None:
        addr, plen = self._prefix(prefix)
        self._lpm_set(addr, plen, value, flags)

    def __delitem__(self, prefix) -> None:
        addr, plen = self._prefix(prefix)
        self._lpm_del(addr, plen)

    def __getitem__(self, address):
        hit = self._lpm_find(self._addr(address))
        if hit is None:
            raise KeyError(address)
        return hit[1]

    def get(self, address, default=None):
        hit = self._lpm_find(self._addr(address))
        return default if hit is None else hit[1]

    def __contains__(self, address) -> bool:
        return self._lpm_find(self._addr(address)) is not None

    def longest_prefix(self, address):
        """``(prefix, value)`` of the longest prefix containing ``address``, or None."""
        a = self._addr(address)
        hit = self._lpm_find(a)
        if hit is None:
            return None
        plen, value = hit
        masked = (int.from_bytes(a, "big") >> (8 * len(a) - plen) << (8 * len(a) - plen)) if plen else 0
        return self._text(masked.to_bytes(len(a), "big"), plen), value

    def lookup(self, address, reader):
        with reader.section():
            return self[address]

    def items(self):
        return [(self._text(a, plen), v) for a, plen, v in self._lpm_entries()]

    def keys(self):
        return [k for k, _ in self.items()]

    def values(self):
        return [v for _, v in self.items()]

    def __iter__(self):
        return iter(self.keys())

    def lookup_batch(self, addresses, out=None, *, default=None, found=None):
        """Longest match of every packed address in the buffer ``addresses``, without the
        GIL; values to ``out`` (allocated when None).  A miss never stops the batch: its
        value is ``default`` (else left as in ``out``), ``found[i]`` 0.  Returns ``out``."""
        n = len(memoryview(addresses).cast("B")) // self.address_size
        if out is None:
            out = bytearray(n * self.info["value_size"])
        self._lpm_batch(addresses, out, default, found)
        return out

    def add(self, key, delta=1):
        raise UnsupportedOperation("lpm_trie values are set whole: m[prefix] = value")

    def update_batch(self, keys, values, flags: int = ANY):
        raise UnsupportedOperation("lpm_trie prefixes are set one at a time: m[prefix] = value")

    def delete_batch(self, keys):
        raise UnsupportedOperation("lpm_trie prefixes are deleted one at a time: del m[prefix]")


CLASSES.update({
    _maps.KIND_ARRAY: ArrayMap, _maps.KIND_HASH: HashMap,
    _maps.KIND_PER_WORKER_ARRAY: PerWorkerArrayMap, _maps.KIND_PER_WORKER_HASH: PerWorkerHashMap,
    _maps.KIND_ARRAY_OF_MAPS: ArrayOfMaps, _maps.KIND_HASH_OF_MAPS: HashOfMaps,
    _maps.KIND_LPM_TRIE: LpmTrieMap,
})
