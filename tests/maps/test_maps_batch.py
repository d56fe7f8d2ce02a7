"""lookup_batch / update_batch / delete_batch on buffers (numpy and plain bytes)."""
from __future__ import annotations

import errno
import struct

import numpy as np
import pytest

import shmrcu
from shmrcu import maps
from shmrcu.errors import KeyExists, KeyNotFound, MapFull, ReadOnlyMap


def test_numpy_round_trip(runtime):
    m = runtime.create_map("hash", key="Q", value="Q", max_entries=10000)
    keys = np.random.default_rng(5).choice(1 << 60, 10000, replace=False).astype(np.uint64)
    assert m.update_batch(keys, keys * 3) == 10000
    assert len(m) == 10000
    out = m.lookup_batch(keys)
    assert out.dtype == np.uint64 and (out == keys * 3).all()
    buf = np.zeros(10000, dtype=np.uint64)
    assert m.lookup_batch(keys[::-1].copy(), buf) is buf and (buf == keys[::-1] * 3).all()
    assert m.delete_batch(keys[:5000]) == 5000
    assert len(m) == 5000 and int(keys[0]) not in m and m[int(keys[-1])] == int(keys[-1]) * 3


def test_lookup_batch_stops_at_first_missing_key(runtime):
    m = runtime.create_map("hash", key="I", value="I", max_entries=64)
    m.update_batch(np.arange(10, dtype=np.uint32), np.arange(10, dtype=np.uint32) + 100)
    out = np.zeros(5, dtype=np.uint32)
    with pytest.raises(KeyError) as ei:
        m.lookup_batch(np.array([1, 2, 3, 77, 4], dtype=np.uint32), out)
    assert isinstance(ei.value, KeyNotFound) and ei.value.errno == errno.ENOENT
    assert ei.value.count == 3 and list(out[:3]) == [101, 102, 103]
    assert ei.value.args[0] == 77


def test_update_and_delete_batch_report_count(runtime):
    m = runtime.create_map("hash", key="I", value="Q", max_entries=4)
    keys = np.arange(6, dtype=np.uint32)
    with pytest.raises(MapFull) as ei:
        m.update_batch(keys, np.ones(6, dtype=np.uint64))
    assert ei.value.count == 4 and len(m) == 4
    with pytest.raises(KeyExists) as ei:
        m.update_batch(np.array([1, 9], dtype=np.uint32), np.ones(2, dtype=np.uint64), maps.NOEXIST)
    assert ei.value.count == 0 and 9 not in m
    with pytest.raises(KeyError) as ei:
        m.delete_batch(np.array([0, 1, 5, 2], dtype=np.uint32))
    assert ei.value.count == 2 and sorted(m.keys()) == [2, 3]


def test_bytes_buffers_and_multi_field_values(runtime):
    m = runtime.create_map("hash", key="8s", value="IQ", max_entries=16)
    ks = b"".join(struct.pack("8s", f"k{i}".encode()) for i in range(4))
    vs = b"".join(struct.pack("IQ", i, i * 10) for i in range(4))
    assert m.update_batch(ks, vs) == 4
    out = m.lookup_batch(ks)
    assert isinstance(out, bytearray) and bytes(out) == vs
    assert m["k2"] == (2, 20)
    with pytest.raises(ValueError, match="whole number"):
        m.lookup_batch(b"abc")
    with pytest.raises(ValueError, match="values buffer"):
        m.update_batch(ks, vs[:-1])
    with pytest.raises(ValueError, match="out holds"):
        m.lookup_batch(ks, bytearray(3))


def test_array_batches(runtime):
    a = runtime.create_map("array", value="Q", max_entries=100)
    idx = np.arange(100, dtype=np.uint32)
    a.update_batch(idx, idx.astype(np.uint64) ** 2)
    assert (a.lookup_batch(idx) == idx.astype(np.uint64) ** 2).all()
    with pytest.raises(IndexError) as ei:
        a.lookup_batch(np.array([5, 100], dtype=np.uint32))
    assert ei.value.count == 1


def test_per_worker_lookup_batch_sums(runtime):
    m = runtime.create_map("per_worker_array", value="Q", max_entries=4)
    with runtime.reader():
        m.add(1, 5)
        m.add(2, 7)
    assert list(m.lookup_batch(np.arange(4, dtype=np.uint32))) == [0, 5, 7, 0]


def test_batch_on_readonly_mapping(runtime):
    import shmrcu
    ro = runtime.create_map("array", value="Q", max_entries=4, worker_readonly=True, name="ro")
    with shmrcu.Runtime.attach(runtime.name) as other:
        m = other.map("ro")
        assert list(m.lookup_batch(np.arange(4, dtype=np.uint32))) == [0, 0, 0, 0]
        with pytest.raises(ReadOnlyMap):
            m.update_batch(np.arange(4, dtype=np.uint32), np.ones(4, dtype=np.uint64))
        with pytest.raises(ReadOnlyMap):
            m.delete_batch(np.arange(4, dtype=np.uint32))
    assert ro[0] == 0


def test_lookup_batch_threads_agree_and_count(runtime):
    m = runtime.create_map("hash", key="Q", value="Q", max_entries=50000)
    keys = np.arange(50000, dtype=np.uint64)
    m.update_batch(keys, keys + 7)
    look = np.random.default_rng(3).integers(0, 50000, 100000).astype(np.uint64)
    for threads in (1, 2, 3, 16):
        assert (m.lookup_batch(look, threads=threads) == look + 7).all()
    bad = look.copy()
    bad[70000] = 1 << 50
    bad[90000] = 1 << 51
    with pytest.raises(KeyError) as ei:
        m.lookup_batch(bad, threads=4)
    assert ei.value.count == 70000 and ei.value.args[0] == 1 << 50
    with pytest.raises(ValueError):
        m.lookup_batch(look, threads=0)


def test_lookup_batch_with_default_and_found_mask_does_not_stop(runtime):
    """Blocklist checks: a missing key gets the default and found[i] == 0, and the batch
    goes on; an array index out of range still stops it, naming the key."""
    np = pytest.importorskip("numpy")
    m = runtime.create_map("hash", key="I", value="QQ", max_entries=64)
    m[3] = (30, 31)
    m[5] = (50, 51)
    keys = np.array([1, 3, 4, 5], dtype=np.uint32)
    found = np.zeros(4, dtype=bool)
    out = m.lookup_batch(keys, default=(7, 7), found=found)
    assert list(found) == [False, True, False, True]
    assert bytes(out) == np.array([7, 7, 30, 31, 7, 7, 50, 51], dtype=np.uint64).tobytes()
    ints = runtime.create_map("hash", key="I", value="Q", max_entries=8)
    ints[2] = 20
    assert list(ints.lookup_batch(keys, default=0)) == [0, 0, 0, 0]
    assert list(ints.lookup_batch(np.array([2, 9], dtype=np.uint32), default=-1 & 0xffffffffffffffff,
                                  found=np.zeros(2, bool))) == [20, 2**64 - 1]
    with pytest.raises(ValueError, match="one per key"):
        m.lookup_batch(keys, found=np.zeros(2, bool))
    arr = runtime.create_map("array", value="Q", max_entries=4)
    with pytest.raises(shmrcu.IndexOutOfRange) as ei:
        arr.lookup_batch(np.array([1, 9, 2], dtype=np.uint32), default=0)
    assert ei.value.count == 1
