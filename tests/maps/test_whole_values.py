"""Whole values: a reader never sees half of an update (issue 11).

A writer process rewrites values whose fields are all equal as fast as it can; reader
processes read them every way there is (Python per call, ``get``, ``lookup_batch``, the
C API, ``items()``, ``shmrcu map dump``'s data) and count values whose fields differ.  With the protection switched
off in the writer (``_kernels._set_torn_writes``) the same test finds torn values.  A
writer SIGKILLed mid-update (dead and reaped, or still a zombie) leaves the old value
readable and the key updatable; a live writer that sits on its claim makes other writers
give up with EBUSY after about a second, never hang.
"""
from __future__ import annotations

import errno
import os
import signal
import time

import pytest

from shmrcu.errors import ShmrcuError, UnsupportedOperation, InvalidMapSpec
from shmrcu.maps import _kernels

import _whole_procs
from shmrcu.testing import _hooks

N_KEYS = 4

# (kind, value format, create kwargs, repeat_byte, reader modes with their read counts)
CASES = {
    "hash-QQQQ": ("hash", "QQQQ", {}, False,
                  {"kernel": 5_000_000, "batch": 5_000_000, "python": 100_000, "get": 50_000,
                   "items": 20_000, "dump": 1_000}),
    "hash-32s": ("hash", "32s", {}, True,
                 {"kernel": 5_000_000, "batch": 5_000_000, "python": 100_000, "items": 20_000}),
    "per_worker_hash-QQQQ": ("per_worker_hash", "QQQQ", {}, False,
                             {"kernel": 10_000_000, "python": 50_000, "items": 10_000}),
    "array-QQQQ-whole": ("array", "QQQQ", {"whole_values": True}, False,
                         {"kernel": 5_000_000, "batch": 5_000_000, "python": 100_000}),
}


def _seed(m, repeat_byte):
    for k in range(N_KEYS):
        m[k] = b"\x01" * 32 if repeat_byte else (1, 1, 1, 1)


def _run(runtime, procs, m, n_keys, torn, repeat_byte, modes):
    ctx = procs.ctx
    results = ctx.Queue()
    w_ready, stop, go = ctx.Event(), ctx.Event(), ctx.Event()
    procs.start(_whole_procs.writer, runtime.name, m.name, n_keys, torn, repeat_byte, w_ready, stop, results)
    assert w_ready.wait(60), "writer did not start"
    readies = []
    for mode, reads in modes.items():
        ready = ctx.Event()
        readies.append(ready)
        procs.start(_whole_procs.reader, runtime.name, m.name, n_keys, mode, reads, ready, go, results)
    for r in readies:
        assert r.wait(60), "a reader did not start"
    go.set()
    got = {}
    try:
        for _ in modes:
            mode, done, n_torn = results.get(timeout=300)
            got[mode] = (done, n_torn)
    finally:
        stop.set()
    _, updates = results.get(timeout=60)
    for p in procs.started:
        p.join(30)
        assert p.exitcode == 0, f"child exited with {p.exitcode}"
    return got, updates


@pytest.mark.parametrize("case", list(CASES))
def test_readers_never_see_torn_values(runtime, procs, case):
    kind, fmt, kw, repeat_byte, modes = CASES[case]
    m = runtime.create_map(kind, key="I", value=fmt, max_entries=64, name="w", **kw)
    assert m.whole_values
    _seed(m, repeat_byte)
    got, updates = _run(runtime, procs, m, N_KEYS, False, repeat_byte, modes)
    total = sum(d for d, _ in got.values())
    print(f"\n{case}: {updates} updates, {total} reads: " +
          ", ".join(f"{k} {d} reads / {t} torn" for k, (d, t) in got.items()))
    assert updates > 10_000
    assert total >= 10_000_000
    assert {k: t for k, (_, t) in got.items()} == {k: 0 for k in got}


@pytest.mark.parametrize("case", ["hash-QQQQ", "hash-32s"])
def test_the_torn_value_test_can_fail(runtime, procs, case):
    """Protection off in the writer: the same readers do find torn values."""
    kind, fmt, kw, repeat_byte, _ = CASES[case]
    m = runtime.create_map(kind, key="I", value=fmt, max_entries=64, name="w", **kw)
    _seed(m, repeat_byte)
    # one key: every write races the readers
    got, updates = _run(runtime, procs, m, 1, True, repeat_byte,
                        {"kernel": 20_000_000, "batch": 10_000_000})
    print(f"\nprotection off, {case}: {updates} updates: {got}")
    assert sum(t for _, t in got.values()) > 0


def _wait_claimed(results):
    what, pid = results.get(timeout=60)
    assert what == "claimed"
    return pid


@pytest.mark.parametrize("kind,kw", [("hash", {}), ("array", {"whole_values": True}),
                                     ("per_worker_hash", {})])
def test_writer_killed_mid_update_leaves_old_value_and_key_updatable(runtime, procs, kind, kw):
    m = runtime.create_map(kind, key="I", value="QQQQ", max_entries=8, name="w", **kw)
    m[3] = (7, 7, 7, 7)
    results = procs.ctx.Queue()
    p = procs.start(_whole_procs.abandon_update_and_die, runtime.name, "w", 3, (9, 9, 9, 9), results)
    _wait_claimed(results)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    assert m[3] == (7, 7, 7, 7)                       # the old value, whole
    t0 = time.monotonic()
    m[3] = (8, 8, 8, 8)                               # the dead writer's claim is taken over
    assert time.monotonic() - t0 < 5
    assert m[3] == (8, 8, 8, 8)
    m[3] = (5, 5, 5, 5)
    assert m[3] == (5, 5, 5, 5)


def test_zombie_writer_is_dead_too(runtime):
    """Killed but not yet reaped (a zombie): its claim is taken over all the same."""
    m = runtime.create_map("hash", key="I", value="QQ", max_entries=8, name="w")
    m[1] = (1, 1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                      # child: claim mid-update, then die
        try:
            _hooks.abandon_update(m, 1, (2, 2))
            os.write(w, b"c")
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    try:
        os.close(w)
        assert os.read(r, 1) == b"c"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:            # wait until it is a zombie
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        else:
            pytest.fail("child did not become a zombie")
        assert m[1] == (1, 1)
        m[1] = (3, 3)
        assert m[1] == (3, 3)
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def test_live_writer_sitting_on_its_claim_gives_ebusy_not_a_hang(runtime, procs):
    m = runtime.create_map("hash", key="I", value="QQ", max_entries=8, name="w")
    m[1] = (1, 1)
    results = procs.ctx.Queue()
    p = procs.start(_whole_procs.abandon_update_and_hang, runtime.name, "w", 1, (2, 2), results)
    _wait_claimed(results)
    t0 = time.monotonic()
    with pytest.raises(ShmrcuError) as ei:
        m[1] = (3, 3)
    took = time.monotonic() - t0
    assert ei.value.errno == errno.EBUSY and "1 s" in str(ei.value)
    assert 0.9 < took < 10
    assert m[1] == (1, 1)                             # readers never waited: old value, whole
    m[2] = (4, 4)                                     # other keys are not affected
    p.kill()
    p.join(10)
    m[1] = (5, 5)
    assert m[1] == (5, 5)


def test_claim_in_our_own_writer_id_is_never_taken_over(runtime):
    """A claim in this process's writer id is a thread of ours writing: it is waited for
    (EBUSY after 1 s), never taken over -- writer ids are never reused, so no other
    process, in any pid namespace, can hold one that looks like ours."""
    m = runtime.create_map("hash", key="I", value="QQ", max_entries=8, name="w")
    m[1] = (1, 1)
    _hooks.abandon_update(m, 1, (2, 2))
    assert _hooks.cell_word(m, 1)[1] == runtime._control.writer_id != 0
    with pytest.raises(ShmrcuError) as ei:
        m[1] = (3, 3)
    assert ei.value.errno == errno.EBUSY and m[1] == (1, 1)


def test_updates_through_every_api_stay_whole_and_correct(runtime):
    m = runtime.create_map("hash", key="I", value="QQQ", max_entries=64)
    for k in range(10):
        m[k] = (k, k, k)
    for k in range(10):
        m.update(k, (k + 1,) * 3, shmrcu_exist())
    from array import array
    keys = array("I", range(10))
    vals = array("Q", [x for k in range(10) for x in (k + 2,) * 3])
    assert m.update_batch(keys, vals) == 10
    assert sorted(m.items()) == [(k, (k + 2,) * 3) for k in range(10)]
    out = m.lookup_batch(keys)
    assert bytes(out) == vals.tobytes()
    assert m.add(3, (1, 0, 2)) == (6, 5, 7)           # add: per field, into the current value
    del m[3]
    m[3] = (9, 9, 9)                                  # a recycled slot's cell starts over
    assert m[3] == (9, 9, 9)


def shmrcu_exist():
    from shmrcu.maps import EXIST
    return EXIST


def test_whole_values_option_is_checked(runtime):
    a = runtime.create_map("array", value="QQ", max_entries=4)
    assert not a.whole_values                          # arrays: in place, as BPF, unless asked
    w = runtime.create_map("array", value="QQ", max_entries=4, whole_values=True)
    assert w.whole_values
    w[2] = (3, 4)
    assert w[2] == (3, 4)
    w.clear()
    assert w[2] == (0, 0)
    with pytest.raises(InvalidMapSpec, match="always give whole values"):
        runtime.create_map("hash", key="I", value="QQ", max_entries=4, whole_values=False)
    with pytest.raises(InvalidMapSpec, match="must be a bool"):
        runtime.create_map("array", value="QQ", max_entries=4, whole_values="yes")
    with pytest.raises(InvalidMapSpec, match="inner map ids"):
        runtime.create_map("array_of_maps", max_entries=4, inner=a, whole_values=True)
    with pytest.raises(UnsupportedOperation):
        _hooks.abandon_update(a, 1, (1, 1))


def test_memory_per_entry_at_most_doubled(runtime):
    """Hash entries: [ctl][retire][key][word][value][value] <= 2 x [ctl][retire][key][value]."""
    from shmrcu.maps import _mapheader, _maps
    for key_size, value_size in [(4, 16), (8, 32), (16, 1024), (4, 9)]:
        old = _mapheader.segment_size(_maps.KIND_HASH, key_size, value_size, 1000, 1, 0)
        new = _mapheader.segment_size(_maps.KIND_HASH, key_size, value_size, 1000, 1,
                                      _maps.F_WHOLE_VALUES)
        assert old < new <= 2 * old, (key_size, value_size, old, new)
    # one-word values keep their layout
    assert _mapheader.segment_size(_maps.KIND_HASH, 4, 8, 1000, 1, 0) == \
        _mapheader.segment_size(_maps.KIND_HASH, 4, 8, 1000, 1, _maps.F_WHOLE_VALUES)


def test_claim_of_a_writer_that_is_not_attached_is_taken_over(runtime):
    """Writers tell the living from the dead by the writer mark of the claim's writer id:
    a claim in the name of an id nobody holds (its process died, or detached) is taken
    over at once."""
    m = runtime.create_map("hash", key="I", value="QQ", max_entries=8, name="w")
    m[1] = (1, 1)
    _hooks.forge_claim(m, 1, 99_999)
    assert _hooks.cell_word(m, 1)[1] == 99_999
    t0 = time.monotonic()
    m[1] = (2, 2)
    assert time.monotonic() - t0 < 0.5
    assert m[1] == (2, 2) and _hooks.cell_word(m, 1)[1] == 0


def _writer_marks_on(path):
    """Writer-mark OFD locks (byte >= 2^41) on the file at ``path``, from /proc/locks."""
    st = os.stat(path)
    n = 0
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            dev_ino = parts[5] if parts[1] != "->" else parts[6]
            if "OFDLCK" in line and dev_ino.endswith(f":{st.st_ino}") and int(parts[-2]) >= 1 << 41:
                n += 1
    return n


def test_writer_marks_follow_the_runtime_file_not_its_name(runtime, rt_name):
    """One writer id per process and runtime *file*, shared by its Runtime objects; a
    runtime destroyed and re-created under the same name is another file: attaching the
    new one before closing an old Runtime object must not leave the new one unmarked."""
    import shmrcu
    from shmrcu.core import segment as seg
    other = shmrcu.Runtime.attach(runtime.name)
    assert other._control.writer_id == runtime._control.writer_id != 0
    runtime.destroy()                                  # `other` still open on the old file
    again = shmrcu.Runtime.create(rt_name)
    try:
        new_path = seg.SHM_DIR + seg.shm_name(rt_name, "ctl")
        assert _writer_marks_on(new_path) == 1
        worker = shmrcu.Runtime.attach(rt_name)        # the natural order: attach new, close old
        assert worker._control.writer_id == again._control.writer_id
        with pytest.raises(shmrcu.RuntimeDestroyed):
            other.reader()
        other.close()
        assert _writer_marks_on(new_path) == 1         # still marked: keyed by file
        worker.close()
        assert _writer_marks_on(new_path) == 1         # `again` still holds it
    finally:
        again.destroy()


def test_claim_of_an_attached_live_process_is_never_taken_over(runtime, procs):
    """...while the claim of a live process attached to the runtime is respected (EBUSY)."""
    m = runtime.create_map("hash", key="I", value="QQ", max_entries=8, name="w")
    m[1] = (1, 1)
    results = procs.ctx.Queue()
    procs.start(_whole_procs.abandon_update_and_hang, runtime.name, "w", 1, (2, 2), results)
    wid = _wait_claimed(results)
    assert _hooks.cell_word(m, 1)[1] == wid
    with pytest.raises(ShmrcuError) as ei:
        m[1] = (3, 3)
    assert ei.value.errno == errno.EBUSY
    assert m[1] == (1, 1)


def test_claim_let_go_after_a_takeover_moves_the_version_by_two(runtime, procs):
    """An update that took over a dead writer's claim and then finds its key deleted gives
    the claim back at version + 2: readers that overlapped the dead writer's half-written
    spare buffer must not accept their copy as "one version later, no writer"."""
    m = runtime.create_map("hash", key="I", value="QQQQ", max_entries=8, name="w")
    m[3] = (7, 7, 7, 7)
    results = procs.ctx.Queue()
    p = procs.start(_whole_procs.abandon_update_and_die, runtime.name, "w", 3, (9, 9, 9, 9), results)
    _wait_claimed(results)
    p.join(30)
    (v0, owner0), (v1, owner1), retried = _hooks.stale_update(m, 3, (8, 8, 8, 8))
    assert owner0 != 0 and retried
    assert (v1, owner1) == ((v0 + 2) & 0xffffffff, 0)
    m[3] = (5, 5, 5, 5)                               # the key is insertable again, whole
    assert m[3] == (5, 5, 5, 5)
