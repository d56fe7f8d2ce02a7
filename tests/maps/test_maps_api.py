"""Map creation, opening, listing, the dict API, BPF flags and every error's errno."""
from __future__ import annotations

import errno
import os

import pytest

import shmrcu
from shmrcu import maps
from shmrcu.core import segment as seg
from shmrcu.errors import (CorruptSegment, IndexOutOfRange, InvalidMapSpec, KeyExists, KeyNotFound,
                           MapClosed, MapExists, MapFull, MapNotFound, RuntimeNotFound, ShmrcuError,
                           UnsupportedOperation)


def test_hash_dict_api(runtime):
    m = runtime.create_map("hash", key="I", value="Q", max_entries=16, name="h")
    assert isinstance(m, maps.HashMap) and m.kind == "hash" and m.name == "h"
    m[1] = 10
    m[2] = 20
    assert m[1] == 10 and m.get(2) == 20 and m.get(3) is None and m.get(3, "x") == "x"
    assert 1 in m and 3 not in m
    with pytest.raises(OverflowError):              # can never be a key: as m[-1] says
        -1 in m
    with pytest.raises(TypeError):
        "a" in m
    assert len(m) == 2 and sorted(m.keys()) == [1, 2] and sorted(m.items()) == [(1, 10), (2, 20)]
    assert sorted(m.values()) == [10, 20] and sorted(m) == [1, 2]
    m[1] = 11
    assert m[1] == 11 and len(m) == 2
    del m[1]
    assert 1 not in m and len(m) == 1
    with pytest.raises(KeyError) as ei:
        m[1]
    assert ei.value.errno == errno.ENOENT and isinstance(ei.value, KeyNotFound)
    with pytest.raises(KeyError):
        del m[1]
    m.clear()
    assert len(m) == 0 and m.keys() == []


def test_update_flags(runtime):
    m = runtime.create_map("hash", key="Q", value="q", max_entries=8)
    m.update(5, -3, maps.NOEXIST)
    assert m[5] == -3
    with pytest.raises(KeyExists) as ei:
        m.update(5, 1, maps.NOEXIST)
    assert ei.value.errno == errno.EEXIST and m[5] == -3
    m.update(5, 7, maps.EXIST)
    assert m[5] == 7
    with pytest.raises(KeyError) as ei:
        m.update(6, 1, maps.EXIST)
    assert ei.value.errno == errno.ENOENT and 6 not in m
    m.update(6, 1, maps.ANY)
    assert m[6] == 1
    with pytest.raises(UnsupportedOperation) as ei:
        m.update(6, 1, 3)
    assert ei.value.errno == errno.EINVAL
    assert (maps.ANY, maps.NOEXIST, maps.EXIST) == (0, 1, 2)


def test_hash_full_and_reuse_after_grace_period(runtime):
    m = runtime.create_map("hash", key="I", value="I", max_entries=4)
    for k in range(4):
        m[k] = k
    with pytest.raises(MapFull) as ei:
        m[99] = 1
    assert ei.value.errno == errno.E2BIG
    m[3] = 33                                  # updating a present key is fine when full
    # delete/insert churn far beyond the capacity: tombstones are recycled
    # after grace periods, so max_entries live keys always fit
    for i in range(200):
        del m[i % 4 if i < 4 else 1000 + i - 1]
        m[1000 + i] = i
        assert len(m) == 4
    st = m.stats()
    assert st["live"] == 4 and st["capacity"] >= 8


def test_array_semantics(runtime):
    a = runtime.create_map("array", value="QQ", max_entries=10, name="arr")
    assert isinstance(a, maps.ArrayMap) and a.key_format == "I"
    assert len(a) == 10 and a[3] == (0, 0) and 3 in a and 10 not in a
    a[3] = (1, 2)
    assert a[3] == (1, 2)
    assert a.add(3, (5, 6)) == (6, 8)
    with pytest.raises(IndexOutOfRange) as ei:
        a[10]
    assert ei.value.errno == errno.E2BIG and isinstance(ei.value, IndexError)
    with pytest.raises(IndexError):
        a[10] = (1, 1)
    with pytest.raises(KeyExists):
        a.update(1, (1, 1), maps.NOEXIST)      # every array index exists (BPF)
    a.update(1, (4, 4), maps.EXIST)
    with pytest.raises(UnsupportedOperation) as ei:
        del a[1]
    assert ei.value.errno == errno.EINVAL
    a.clear()
    assert a.items() == [(i, (0, 0)) for i in range(10)]


def test_formats_bytes_keys_and_tuples(runtime):
    m = runtime.create_map("hash", key="16s", value="IQd", max_entries=32)
    m["alpha"] = (1, 2, 0.5)                        # str: UTF-8, NUL-padded to 16
    assert m["alpha"] == (1, 2, 0.5)
    assert m[b"alpha" + bytes(11)] == (1, 2, 0.5)   # bytes: exactly 16
    with pytest.raises(TypeError):
        m[b"alpha"] = (1, 2, 0.5)                   # short bytes are never padded silently
    with pytest.raises(TypeError):
        m[123] = (1, 2, 0.5)
    with pytest.raises(UnsupportedOperation):
        m.add("alpha", (1, 1, 0))                   # I is not a u64 field
    assert m.add("alpha", (0, 5, 0)) == (1, 7, 0.5)
    t = runtime.create_map("hash", key="II", value="Q", max_entries=32)
    t[(1, 2)] = 3
    assert t[(1, 2)] == 3 and (2, 1) not in t and t.keys() == [(1, 2)]


def test_add_inserts_missing_keys(runtime):
    m = runtime.create_map("hash", key="I", value="Q", max_entries=8)
    assert m.add(1) == 1 and m.add(1, 41) == 42 and m[1] == 42
    q = runtime.create_map("hash", key="I", value="q", max_entries=8)
    assert q.add(1, -5) == -5


def test_int_range_checks(runtime):
    m = runtime.create_map("hash", key="H", value="b", max_entries=8)
    m[65535] = -128
    assert m[65535] == -128
    with pytest.raises(OverflowError):
        m[65536] = 1
    with pytest.raises(OverflowError):
        m[1] = 128
    with pytest.raises((OverflowError, TypeError)):
        m[-1] = 1


def test_open_by_name_and_id_and_list(runtime):
    h = runtime.create_map("hash", key="I", value="Q", max_entries=8, name="flows")
    a = runtime.create_map("array", value="I", max_entries=4, worker_readonly=True)
    assert runtime.map("flows") is h and runtime.map(h.id) is h and runtime.map(a.id) is a
    assert h.id < a.id
    listing = runtime.maps()
    assert listing == [
        {"id": h.id, "name": "flows", "kind": "hash", "key": "I", "value": "Q", "max_entries": 8,
         "flags": ("whole_values",), "state": "live"},
        {"id": a.id, "name": None, "kind": "array", "key": "I", "value": "I", "max_entries": 4,
         "flags": ("worker_readonly",), "state": "live"},
    ]
    with pytest.raises(KeyError, match="nope") as ei:
        runtime.map("nope")
    assert isinstance(ei.value, MapNotFound) and ei.value.errno == errno.ENOENT
    with pytest.raises(KeyError):
        runtime.map(9999)
    with pytest.raises(MapExists) as ei:
        runtime.create_map("hash", key="I", value="Q", max_entries=8, name="flows")
    assert ei.value.errno == errno.EEXIST
    names = os.listdir(seg.SHM_DIR)
    assert f"shmrcu.{runtime.name}.map.{h.id}" in names and f"shmrcu.{runtime.name}.dir" in names


def test_attached_process_sees_same_map(runtime):
    h = runtime.create_map("hash", key="I", value="Q", max_entries=8, name="shared")
    h[7] = 70
    with shmrcu.Runtime.attach(runtime.name) as other:
        m = other.map("shared")
        assert m is not h and m[7] == 70
        m[8] = 80
    assert h[8] == 80


@pytest.mark.parametrize("kind,kw,err", [
    ("tree", dict(key="I", value="Q", max_entries=4), "unknown map kind"),
    ("hash", dict(key="I", value="Z", max_entries=4), "not a struct format"),
    ("hash", dict(key="I", value="", max_entries=4), "1-47"),
    ("hash", dict(key="I", value="0s", max_entries=4), "size 0"),
    ("per_worker_hash", dict(key="I", value=">Q", max_entries=4), "native byte order"),
    ("hash", dict(value="Q", max_entries=4), "need a key format"),
    ("hash", dict(key="I", max_entries=4), "need a value format"),
    ("hash", dict(key="I", value="Q", max_entries=0), "max_entries"),
    ("hash", dict(key="I", value="Q", max_entries=True), "max_entries"),
    ("hash", dict(key="I", value="Q", max_entries=1 << 40), "max_entries"),
    ("hash", dict(key="1000s", value="Q", max_entries=4), "at most"),
    ("array", dict(key="Q", value="Q", max_entries=4), "u32"),
    ("per_worker_hash", dict(key="I", value="Qd", max_entries=4), "integer fields"),
    ("hash", dict(key="I", value="Q", max_entries=4, name="bad name"), "map name"),
    ("array_of_maps", dict(max_entries=4), "inner="),
    ("hash", dict(key="I", value="Q", max_entries=4, inner=object()), "only for"),
])
def test_invalid_specs(runtime, kind, kw, err):
    with pytest.raises(InvalidMapSpec, match=err) as ei:
        runtime.create_map(kind, **kw)
    assert isinstance(ei.value, ValueError) and ei.value.errno in (errno.EINVAL, errno.E2BIG)
    assert runtime.maps() == []


def test_per_worker_too_large_for_memory(rt_name):
    with shmrcu.Runtime.create(rt_name, max_workers=4096) as rt:
        with pytest.raises(InvalidMapSpec, match="available") as ei:
            rt.create_map("per_worker_hash", key="Q", value="1024Q", max_entries=1 << 20)
        assert ei.value.errno == errno.E2BIG


def test_corrupted_header(runtime):
    m = runtime.create_map("hash", key="I", value="Q", max_entries=8, name="c")
    name = seg.shm_name(runtime.name, f"map.{m.id}")
    raw = seg.Segment.open(name)
    try:
        raw.mapping.write(0, b"\xff" * 8)                      # magic
    finally:
        raw.close()
    with shmrcu.Runtime.attach(runtime.name) as other:
        with pytest.raises(CorruptSegment, match="bad magic") as ei:
            other.map("c")
        assert ei.value.errno == errno.EINVAL


@pytest.mark.parametrize("offset,data,match", [
    (8, b"\x09\x00\x00\x00", "layout version"),
    (16, b"\x00\x10\x00\x00\x00\x00\x00\x00", "says it is"),
    (24, b"\x63\x00\x00\x00\x00\x00\x00\x00", "holds map id"),
    (48, b"\x10\x00\x00\x00", "inconsistent geometry"),                # max_entries
])
def test_corrupted_fields(runtime, offset, data, match):
    m = runtime.create_map("hash", key="I", value="Q", max_entries=8, name="c")
    raw = seg.Segment.open(seg.shm_name(runtime.name, f"map.{m.id}"))
    try:
        raw.mapping.write(offset, data)
    finally:
        raw.close()
    with shmrcu.Runtime.attach(runtime.name) as other:
        with pytest.raises(CorruptSegment, match=match):
            other.map("c")


def test_truncated_segment(runtime):
    m = runtime.create_map("hash", key="I", value="Q", max_entries=8, name="t")
    path = os.path.join(seg.SHM_DIR, seg.shm_name(runtime.name, f"map.{m.id}").lstrip("/"))
    os.truncate(path, 100)
    with shmrcu.Runtime.attach(runtime.name) as other:
        with pytest.raises(CorruptSegment, match="truncated"):
            other.map("t")


def test_destroyed_runtime(rt_name):
    rt = shmrcu.Runtime.create(rt_name)
    try:
        rt.create_map("hash", key="I", value="Q", max_entries=8, name="x")
        other = shmrcu.Runtime.attach(rt_name)
        try:
            early = other.map("x")
            rt.destroy()
            with pytest.raises(RuntimeNotFound):
                shmrcu.Runtime.attach(rt_name)
            other._map_cache.pop(early.id)                  # force a fresh open
            with pytest.raises(RuntimeNotFound, match="no longer exists"):
                maps.open_map(other, "x")
        finally:
            other.close()
        with pytest.raises(ShmrcuError):
            rt.map("x")                                     # the destroyed handle is closed
    finally:
        if not rt.closed:
            rt.destroy()
    assert seg.runtime_segments(rt_name) == []


def test_freed_map_handles_fail_cleanly(runtime):
    m = runtime.create_map("hash", key="I", value="Q", max_entries=8, name="f")
    m[1] = 1
    with shmrcu.Runtime.attach(runtime.name) as other:
        w = other.map("f")
        assert w[1] == 1
        maps.set_map_state(runtime, m, "retired")
        assert w.state == "retired" and w[1] == 1            # retired maps stay usable (RCU)
        assert runtime.maps()[0]["state"] == "retired"
        maps.destroy_map(runtime, m.id)
        assert w.state == "freed"
        with pytest.raises(MapClosed) as ei:
            w[1]
        assert ei.value.errno == errno.EBADF
        assert maps.drop_freed(other) == 1 and w.closed
        with pytest.raises(MapClosed):
            w[1]
        with pytest.raises(KeyError):
            other.map("f")
    assert runtime.maps() == []


def test_handles_close_with_runtime(rt_name):
    rt = shmrcu.Runtime.create(rt_name)
    try:
        m = rt.create_map("array", value="Q", max_entries=4)
    finally:
        rt.destroy()
    assert m.closed
    with pytest.raises(MapClosed):
        m[0]
    assert "closed" in repr(m)


def test_inserts_inside_sections_recycle_tombstones(runtime):
    m = runtime.create_map("hash", key="I", value="Q", max_entries=4)
    with runtime.reader() as r:
        for rnd in range(50):
            with r.section():                 # no synchronize possible in here
                for k in range(4):
                    assert m.add(100 * rnd + k, 1) == 1
            m.clear()                         # tombstones; sections after this do not hold them
    # a section that began before the deletes holds them: no recycling inside it
    m = runtime.create_map("hash", key="I", value="Q", max_entries=4)
    assert m.capacity == 8
    with runtime.reader() as r:
        for k in range(4):
            m[k] = k
        with r.section():
            for k in range(4):
                del m[k]
            for k in range(10, 14):
                m[k] = k                      # the 4 never-used slots
            for k in range(10, 14):
                del m[k]                      # now every slot is a tombstone we may still hold
            with pytest.raises(MapFull, match="grace period") as ei:
                m[20] = 20
            assert ei.value.errno == errno.E2BIG
        m[20] = 20                            # outside: recycled (poll or synchronize)
        assert m[20] == 20 and len(m) == 1


def test_bytes_keys_of_the_wrong_length_are_refused_everywhere(runtime):
    """A 3-byte key for "4s" is not padded, a 5-byte key not truncated: two different keys
    never collide, and a key that can never match raises TypeError in every operation."""
    m = runtime.create_map("hash", key="4s", value="Q", max_entries=8)
    m[b"\x0a\x00\x00\x01"] = 1
    assert m[b"\x0a\x00\x00\x01"] == 1
    for bad in (b"\x0a\x00\x01", b"\x0a\x00\x00\x01\x00", "10.0.0.1", 167772161):
        for op in (lambda k: m[k], lambda k: k in m, lambda k: m.get(k), lambda k: m.__setitem__(k, 2),
                   lambda k: m.__delitem__(k), lambda k: m.update(k, 2)):
            with pytest.raises(TypeError, match="does not match format"):
                op(bad)
    assert len(m) == 1 and m.keys() == [b"\x0a\x00\x00\x01"]


def test_str_keys_for_s_formats_are_utf8_nul_padded(runtime):
    m = runtime.create_map("hash", key="8s", value="Q", max_entries=8)
    m["abc"] = 1                                      # b"abc" + 5 NULs
    assert m["abc"] == 1 and m[b"abc\0\0\0\0\0"] == 1 and "abc" in m
    m["é"] = 2                                        # 2 bytes of UTF-8
    assert m[b"\xc3\xa9" + b"\0" * 6] == 2
    with pytest.raises(TypeError, match="UTF-8"):
        m["ninechars"] = 3
    assert sorted(m.keys()) == [b"abc\0\0\0\0\0", b"\xc3\xa9" + b"\0" * 6]
    v = runtime.create_map("hash", key="I", value="4sQ", max_entries=4)
    v[1] = ("ab", 7)                                  # values follow the same rule
    assert v[1] == (b"ab\0\0", 7)
    with pytest.raises(TypeError, match="exactly"):
        v[2] = (b"abcde", 1)


def test_network_byte_order_keys_and_values(runtime):
    """struct byte-order prefixes are honoured: "!I" keys are what sockets and numpy ">u4"
    arrays hold, and lookup_batch takes them as they are."""
    np = pytest.importorskip("numpy")
    import socket
    m = runtime.create_map("hash", key="!I", value="!HH", max_entries=16)
    m[0x0a000001] = (443, 1)
    raw = socket.inet_aton("10.0.0.1")                # network order
    assert m.key_format == "!I" and m[0x0a000001] == (443, 1)
    keys = np.array([0x0a000001], dtype=">u4")
    assert keys.tobytes() == raw
    out = m.lookup_batch(keys)
    assert bytes(out) == (443).to_bytes(2, "big") + (1).to_bytes(2, "big")
    with pytest.raises(shmrcu.UnsupportedOperation, match="u64"):
        runtime.create_map("hash", key="I", value=">Q", max_entries=4).add(1, 1)
