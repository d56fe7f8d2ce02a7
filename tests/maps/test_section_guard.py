"""Reaching an inner map requires a read-side section (issue 16).

Outer -> inner resolution outside any section of the calling thread raises
OutsideSection (the controller, the only updater, is exempt); in debug mode an
inner handle used after the section that produced it raises too."""
from __future__ import annotations

import errno
import threading

import pytest

import shmrcu
from shmrcu import maps

import _guard_procs


def tables(rt):
    inner = rt.create_map("hash", key="I", value="Q", max_entries=8, name="inner")
    inner[7] = 77
    outer = rt.create_map("array_of_maps", max_entries=2, inner=inner, name="outer")
    outer[0] = inner
    return inner, outer


WAYS = {
    "getitem": lambda o: o[0],
    "get": lambda o: o.get(0),
    "values": lambda o: o.values(),
    "items": lambda o: o.items(),
}


def test_controller_reads_its_outer_maps_without_a_section(runtime):
    inner, outer = tables(runtime)
    assert outer[0] is inner and outer.get(0) is inner
    assert outer.values() == [inner] and outer.items() == [(0, inner)]


@pytest.mark.parametrize("way", sorted(WAYS))
def test_reader_outside_a_section_gets_a_clear_error(runtime, way):
    tables(runtime)
    with shmrcu.Runtime.attach(runtime.name) as other, other.reader() as r:
        outer = other.map("outer")
        with pytest.raises(shmrcu.OutsideSection, match=r"reader\.section\(\)") as exc:
            WAYS[way](outer)
        assert exc.value.errno == errno.EPERM
        assert outer.inner_ids() == [runtime.map("inner").id]   # ids are not references
        with r.section():
            WAYS[way](outer)
        r.online()                                              # QSBR online counts too
        WAYS[way](outer)
        r.offline()
        with pytest.raises(shmrcu.OutsideSection):
            WAYS[way](outer)


def test_another_threads_section_does_not_cover_this_thread(runtime):
    tables(runtime)
    with shmrcu.Runtime.attach(runtime.name) as other:
        outer = other.map("outer")
        inside, done, seen = threading.Event(), threading.Event(), []

        def hold():
            with other.reader() as r, r.section():
                inside.set()
                done.wait(10)
        t = threading.Thread(target=hold)
        t.start()
        assert inside.wait(10)
        try:
            with pytest.raises(shmrcu.OutsideSection):
                outer[0]
        finally:
            done.set()
            t.join(10)


def test_reader_process_outside_and_inside_sections(runtime, procs):
    tables(runtime)
    out = procs.ctx.Queue()
    p = procs.start(_guard_procs.reach_inner, runtime.name, out)
    result = out.get(timeout=60)
    p.join(30)
    for way in WAYS:
        assert result[f"{way}-outside"] == f"OutsideSection errno={errno.EPERM}"
        assert result[f"{way}-inside"] == "ok"
    assert result["value"] == 77


def test_debug_mode_inner_handle_dies_with_its_section(runtime, monkeypatch):
    tables(runtime)
    monkeypatch.setenv("SHMRCU_DEBUG", "1")
    with shmrcu.Runtime.attach(runtime.name) as other, other.reader() as r:
        assert other.debug
        outer = other.map("outer")
        with r.section():
            m = outer[0]
            assert m[7] == 77 and 7 in m and len(m) == 1 and m.get(7) == 77
            with r.section():                     # nested: still the same section
                assert m[7] == 77
            assert m[7] == 77
        for use in (lambda: m[7], lambda: m.get(7), lambda: len(m), lambda: 7 in m):
            with pytest.raises(shmrcu.OutsideSection, match="has ended"):
                use()
        with r.section():                         # a new section does not revive it
            with pytest.raises(shmrcu.OutsideSection):
                m[7]
        r.online()                                # QSBR: valid until the next quiescent state
        q = outer[0]
        assert q[7] == 77
        r.quiescent()
        with pytest.raises(shmrcu.OutsideSection):
            q[7]
        fresh = outer[0]
        assert fresh[7] == 77
        r.offline()
        # a section-bound handle can still be stored back by the updater
        runtime.map("outer").swap(1, fresh._shmrcu_map, sync=False)


def test_debug_mode_is_off_by_default_and_controller_handles_are_plain(runtime, monkeypatch):
    inner, outer = tables(runtime)
    monkeypatch.delenv("SHMRCU_DEBUG", raising=False)
    with shmrcu.Runtime.attach(runtime.name) as other, other.reader() as r:
        assert not other.debug
        with r.section():
            m = other.map("outer")[0]
        assert isinstance(m, maps.Map) and m[7] == 77      # the rule is documented, not checked
    runtime.debug = True
    assert outer[0] is inner                               # the controller is exempt
