"""array_of_maps / hash_of_maps: templates, swaps, one level of nesting."""
from __future__ import annotations

import errno

import pytest

import shmrcu
from shmrcu import maps
from shmrcu.errors import InvalidMapSpec, KeyExists, TemplateMismatch


def test_array_of_maps_store_swap_delete(runtime):
    a1 = runtime.create_map("array", value="Q", max_entries=8, name="a1")
    a2 = runtime.create_map("array", value="Q", max_entries=8, name="a2")
    outer = runtime.create_map("array_of_maps", max_entries=4, inner=a1, name="routes")
    assert isinstance(outer, maps.ArrayOfMaps)
    assert outer.inner_template == {"kind": "array", "key": "I", "value": "Q", "max_entries": 8,
                                    "worker_readonly": False, "whole_values": False}
    assert len(outer) == 0 and 0 not in outer
    with pytest.raises(KeyError):
        outer[0]
    assert outer.get(0) is None
    outer[0] = a1
    assert outer[0] is a1 and outer[0].name == "a1" and 0 in outer and len(outer) == 1
    assert outer.swap(0, a2) is a1 and outer[0] is a2 and outer.swap(1, a1, sync=False) is None
    del outer[1]
    with pytest.raises(KeyExists):
        outer.update(0, a1, maps.NOEXIST)
    with pytest.raises(KeyError):
        outer.update(1, a1, maps.EXIST)
    outer.update(1, a1, maps.NOEXIST)
    assert outer.inner_ids() == [a2.id, a1.id] and outer.keys() == [0, 1]
    assert [m.id for m in outer.values()] == [a2.id, a1.id]
    assert outer.pop_id(1) == a1.id and 1 not in outer
    del outer[0]
    assert len(outer) == 0
    with pytest.raises(KeyError):
        del outer[0]
    with pytest.raises(IndexError):
        outer[4] = a1


def test_hash_of_maps(runtime):
    t = runtime.create_map("hash", key="I", value="QQ", max_entries=16, name="t")
    big = runtime.create_map("hash", key="I", value="QQ", max_entries=1024)
    outer = runtime.create_map("hash_of_maps", key="16s", max_entries=8, inner=t)
    outer["tenant-a"] = t
    outer["tenant-b"] = big                  # hash templates ignore max_entries (BPF)
    assert outer["tenant-a"] is t and outer["tenant-b"] is big
    assert sorted(outer.keys()) == [b"tenant-a" + bytes(8), b"tenant-b" + bytes(8)]
    assert outer.swap("tenant-a", big) is t
    del outer["tenant-a"]
    assert len(outer) == 1 and "tenant-a" not in outer


@pytest.mark.parametrize("other_spec,why", [
    (dict(kind="hash", key="I", value="Q", max_entries=8), "kind"),
    (dict(kind="array", value="I", max_entries=8), "value"),
    (dict(kind="array", value="Q", max_entries=9), "max_entries"),
    (dict(kind="array", value="Q", max_entries=8, worker_readonly=True), "worker_readonly"),
    (dict(kind="per_worker_array", value="Q", max_entries=8), "kind"),
])
def test_template_mismatch(runtime, other_spec, why):
    tmpl = runtime.create_map("array", value="Q", max_entries=8)
    outer = runtime.create_map("array_of_maps", max_entries=2, inner=tmpl)
    spec = dict(other_spec)
    other = runtime.create_map(spec.pop("kind"), **spec)
    with pytest.raises(TemplateMismatch, match=why) as ei:
        outer[0] = other
    assert ei.value.errno == errno.EINVAL and isinstance(ei.value, ValueError)
    assert 0 not in outer
    with pytest.raises(TemplateMismatch):
        outer[0] = "not a map"


def test_one_level_of_nesting(runtime):
    tmpl = runtime.create_map("array", value="Q", max_entries=8)
    outer = runtime.create_map("array_of_maps", max_entries=2, inner=tmpl)
    with pytest.raises(InvalidMapSpec, match="one level") as ei:
        runtime.create_map("hash_of_maps", key="I", max_entries=2, inner=outer)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(InvalidMapSpec, match="leave value unset"):
        runtime.create_map("array_of_maps", value="I", max_entries=2, inner=tmpl)


def test_retired_inner_map_is_refused(runtime):
    tmpl = runtime.create_map("array", value="Q", max_entries=8)
    old = runtime.create_map("array", value="Q", max_entries=8)
    outer = runtime.create_map("array_of_maps", max_entries=2, inner=tmpl)
    maps.set_map_state(runtime, old, "retired")
    with pytest.raises(TemplateMismatch, match="retired"):
        outer[0] = old


def test_reader_resolves_inner_maps_lazily(runtime):
    inner = runtime.create_map("hash", key="I", value="Q", max_entries=8, name="inner")
    inner[3] = 33
    outer = runtime.create_map("array_of_maps", max_entries=2, inner=inner, name="outer")
    outer[1] = inner
    with shmrcu.Runtime.attach(runtime.name) as other, other.reader() as r:
        o = other.map("outer")
        assert maps.mapped_ids(other) == [o.id]
        with r.section():
            m = o[1]
            assert m[3] == 33 and m.name == "inner"
        assert maps.mapped_ids(other) == sorted([o.id, inner.id])
        with r.section():
            assert o[1] is m                              # cached by id


def test_swap_calls_update_policy(runtime):
    tmpl = runtime.create_map("array", value="Q", max_entries=2)
    outer = runtime.create_map("array_of_maps", max_entries=2, inner=tmpl)
    calls = []
    runtime._after_outer_update = calls.append
    try:
        outer[0] = tmpl
        outer.swap(0, tmpl, sync=False)
        del outer[0]
        with pytest.raises(KeyError):
            del outer[0]                                  # a failed update never waits
    finally:
        del runtime._after_outer_update
    assert calls == [True, False, True]


def test_replace_reloads_a_table_in_one_call(runtime):
    """outer.replace: a new inner map matching the template, filled, swapped in (one grace
    period), the old one retired; the table's number is the inner map's version."""
    np = pytest.importorskip("numpy")
    tmpl = runtime.create_map("hash", key="I", value="QQ", max_entries=16)
    outer = runtime.create_map("array_of_maps", max_entries=2, inner=tmpl, name="cfg")
    info = outer.replace(0, {1: (10, 11), 2: (20, 21)})
    assert info["version"] == 1 and info["entries"] == 2 and info["old_map_id"] is None
    first = outer[0]
    assert first.id == info["map_id"] and first.version == 1 and dict(first.items()) == {1: (10, 11), 2: (20, 21)}
    rows = np.array([(3, 30, 31), (4, 40, 41)], dtype=[("k", "u4"), ("a", "u8"), ("b", "u8")])
    info2 = outer.replace(0, rows, max_entries=32)
    assert info2["version"] == 2 and info2["old_map_id"] == first.id and info2["entries"] == 2
    assert outer[0].version == 2 and dict(outer[0].items()) == {3: (30, 31), 4: (40, 41)}
    assert outer[0].max_entries == 32 and first.state in ("retired", "freed")
    signed = np.array([(6, -1, 1)], dtype=[("k", "i8"), ("a", "i8"), ("b", "i8")])
    with pytest.raises((TypeError, OverflowError)):            # no silent wrap of -1 into a u64
        outer.replace(0, signed)
    assert outer[0].version == 2
    info3 = outer.replace(0, [(5, (50, 51))])                  # plain pairs
    assert info3["version"] == 3 and outer[0][5] == (50, 51)
    before = outer[0].id
    with pytest.raises(TypeError):
        outer.replace(0, [("not an int", (1, 1))])             # nothing swapped on failure
    assert outer[0].id == before and outer[0].version == 3
    runtime.barrier(timeout=10)
    assert sorted(m["id"] for m in runtime.maps() if m["state"] == "live") == sorted([tmpl.id, outer.id, before])


def test_replace_needs_the_controller(runtime, rt_name):
    tmpl = runtime.create_map("hash", key="I", value="Q", max_entries=4)
    runtime.create_map("array_of_maps", max_entries=1, inner=tmpl, name="cfg")
    other = shmrcu.Runtime.attach(rt_name)
    try:
        with pytest.raises(shmrcu.NotController):
            other.map("cfg").replace(0, {1: 1})
    finally:
        other.close()


def test_outer_template_from_a_spec(runtime):
    """An outer map's template given as a spec instead of a throwaway map; the check compares
    kind, formats, flags, and max_entries for array kinds only."""
    outer = runtime.create_map("hash_of_maps", key="I", max_entries=4, name="tenants",
                               inner={"kind": "hash", "key": "I", "value": "QQ", "max_entries": 8})
    assert outer.inner_template == {"kind": "hash", "key": "I", "value": "QQ", "max_entries": 8,
                                    "worker_readonly": False, "whole_values": True}
    big = runtime.create_map("hash", key="I", value="QQ", max_entries=64)
    outer[1] = big                                        # hash inner maps: any size
    assert outer.replace(2, {5: (1, 2)})["entries"] == 1
    with pytest.raises(TemplateMismatch, match="value"):
        outer[3] = runtime.create_map("hash", key="I", value="Q", max_entries=8)
    arr_outer = runtime.create_map("array_of_maps", max_entries=2,
                                   inner={"kind": "array", "value": "Q", "max_entries": 4})
    with pytest.raises(TemplateMismatch, match="max_entries"):
        arr_outer[0] = runtime.create_map("array", value="Q", max_entries=5)
    for bad, err in [({"kind": "hash", "key": "I", "value": "Q"}, "at least kind and max_entries"),
                     ({"kind": "hash", "key": "I", "value": "Q", "max_entries": 4, "size": 1}, "unknown field"),
                     ({"kind": "array_of_maps", "max_entries": 4}, "one level of nesting"),
                     ({"kind": "hash", "key": "I", "value": "Z", "max_entries": 4}, "not a struct format")]:
        with pytest.raises(InvalidMapSpec, match=err):
            runtime.create_map("array_of_maps", max_entries=2, inner=bad)


def test_concurrent_replaces_never_share_a_version(runtime):
    import threading
    tmpl = {"kind": "hash", "key": "I", "value": "Q", "max_entries": 4}
    outer = runtime.create_map("array_of_maps", max_entries=1, inner=tmpl)
    versions, errors = [], []

    def reload():
        try:
            for _ in range(60):
                versions.append(outer.replace(0, {1: 1})["version"])
        except Exception as e:      # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=reload) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors and sorted(versions) == list(range(1, 121))
    runtime.barrier(timeout=30)


def test_replace_interrupted_in_its_grace_period_still_retires_the_old_map(runtime, monkeypatch):
    tmpl = {"kind": "hash", "key": "I", "value": "Q", "max_entries": 4}
    outer = runtime.create_map("array_of_maps", max_entries=1, inner=tmpl)
    outer.replace(0, {1: 1})
    first = outer[0]

    def interrupted(sync):
        raise KeyboardInterrupt
    monkeypatch.setattr(outer, "_after_update", interrupted)
    with pytest.raises(KeyboardInterrupt):                # the real error, not a MapInUse
        outer.replace(0, {1: 2})
    assert outer[0][1] == 2 and first.state in ("retired", "freed")


def test_replace_from_a_pandas_dataframe(runtime):
    pd = pytest.importorskip("pandas", reason="pandas is in the 'test' extra")
    outer = runtime.create_map("array_of_maps", max_entries=1,
                               inner={"kind": "hash", "key": "I", "value": "QQ", "max_entries": 8})
    df = pd.DataFrame({"ip": [1, 2, 3], "limit": [10, 20, 30], "flags": [1, 0, 1]})
    info = outer.replace(0, df)
    assert info["entries"] == 3 and dict(outer[0].items()) == {1: (10, 1), 2: (20, 0), 3: (30, 1)}
