"""Grace periods against real reader processes: torture, dead and stopped readers."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import shmrcu
from shmrcu.core import _epoch
from shmrcu.testing import _torture
from shmrcu.core import segment as seg

import _procs
from _threads import ReaderThread

READS = 2_000_000        # per reader process: 4M checked reads per run


def run_torture(rt: shmrcu.Runtime, procs, reads: int, broken: bool, max_seconds: float = 60):
    """Controller side of the torture; returns {style: (reads, violations)}."""
    area = seg.Segment.create(seg.shm_name(rt.name, "torture"), _torture.AREA_SIZE, 0o600)
    try:
        _torture.init_area(area.mapping)
        results = procs.ctx.Queue()
        readers = [procs.start(_procs.torture_reader, rt.name, qsbr, reads, results)
                   for qsbr in (True, False)]
        _epoch._set_broken_synchronize(broken)
        out = {}
        try:
            seq, deadline = 1, time.monotonic() + max_seconds
            while len(out) < 2 and time.monotonic() < deadline:
                seq += 1
                _torture.update_once(area.mapping, seq, lambda: rt.synchronize(timeout=10))
                while not results.empty():
                    style, n, bad = results.get()
                    out[style] = (n, bad)
        finally:
            _epoch._set_broken_synchronize(False)
            _torture.set_stop(area.mapping)
        for p in readers:
            p.join(30)
        while len(out) < 2 and not results.empty():
            style, n, bad = results.get()
            out[style] = (n, bad)
        assert set(out) == {"qsbr", "sections"}, f"readers did not report: {out}"
        return out, seq
    finally:
        area.close()
        area.unlink()


def test_torture_no_violations(runtime, procs):
    out, updates = run_torture(runtime, procs, READS, broken=False)
    total = sum(n for n, _ in out.values())
    assert total >= 2 * READS
    assert updates > 100, "the updater must actually have replaced elements during the reads"
    assert {style: bad for style, (_, bad) in out.items()} == {"qsbr": 0, "sections": 0}


def test_torture_catches_a_broken_synchronize(runtime, procs):
    """The same torture with a synchronize that skips the wait must see violations."""
    out, _ = run_torture(runtime, procs, READS, broken=True)
    assert sum(bad for _, bad in out.values()) > 0, f"torture missed a broken synchronize: {out}"


def test_sigkilled_reader_in_section_does_not_block(runtime, procs):
    ready, release, info = procs.ctx.Event(), procs.ctx.Event(), procs.ctx.Queue()
    p = procs.start(_procs.hold_section, runtime.name, ready, release, info)
    assert ready.wait(30)
    pid, slot = info.get(timeout=10)
    with pytest.raises(shmrcu.GracePeriodTimeout):
        runtime.synchronize(timeout=0.05)          # it really is holding the grace period
    os.kill(pid, signal.SIGKILL)
    p.join(10)
    t0 = time.monotonic()
    runtime.synchronize(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert runtime.stats()["slots_reclaimed"] == 1
    assert all(r["slot"] != slot for r in runtime.readers_info())


def test_sigstopped_reader_named_in_timeout(runtime, procs):
    ready, release, info = procs.ctx.Event(), procs.ctx.Event(), procs.ctx.Queue()
    p = procs.start(_procs.hold_section, runtime.name, ready, release, info)
    assert ready.wait(30)
    pid, slot = info.get(timeout=10)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(shmrcu.GracePeriodTimeout) as exc:
            runtime.synchronize(timeout=0.2)
        assert 0.2 <= time.monotonic() - t0 < 2
        err = exc.value
        assert isinstance(err, TimeoutError)
        assert [(s.slot, s.pid) for s in err.stalled] == [(slot, pid)]
        assert err.stalled[0].epoch_lag >= 1 and err.stalled[0].seconds >= 0.2
        assert str(pid) in str(err)
    finally:
        os.kill(pid, signal.SIGCONT)
    release.set()
    assert info.get(timeout=10) == "left"
    runtime.synchronize(timeout=5)
    release.set()
    p.join(10)


def test_waiting_on_a_stalled_reader_does_not_burn_a_core(runtime):
    with ReaderThread(runtime, mode="section"):
        cpu0, t0 = time.process_time(), time.monotonic()
        with pytest.raises(shmrcu.GracePeriodTimeout):
            runtime.synchronize(timeout=1.0)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    assert wall >= 1.0
    assert cpu < 0.3 * wall, f"synchronize used {cpu:.2f}s CPU in {wall:.2f}s"


def test_offline_and_idle_readers_are_not_waited_for(runtime):
    with runtime.reader() as idle, runtime.reader() as q:
        q.online()
        q.offline()
        runtime.synchronize(timeout=0.5)


def test_grace_period_tokens(runtime):
    with ReaderThread(runtime) as r:
        tok = runtime.start_grace_period()
        assert not runtime.poll_grace_period(tok)       # r has not passed a quiescent state
        with pytest.raises(shmrcu.GracePeriodTimeout):
            runtime.wait_grace_period(tok, timeout=0.05)
        r.quiescent()
        assert runtime.poll_grace_period(tok)
        runtime.wait_grace_period(tok, timeout=0.05)
        with pytest.raises(ValueError, match="never started"):
            runtime.wait_grace_period(tok + 1000)
        r.offline()


def test_concurrent_synchronize_callers_share_grace_periods(runtime):
    """Threads blocked on one stalled reader all finish with the grace period it ends."""
    r = runtime.reader()
    r.online()
    before = runtime.stats()["grace_periods"]
    errors = []

    def caller():
        try:
            runtime.synchronize(timeout=10)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    assert all(t.is_alive() for t in threads)
    r.quiescent()
    for t in threads:
        t.join(10)
    assert not errors and not any(t.is_alive() for t in threads)
    # one reader quiescent state satisfied several callers: fewer completions than callers
    assert 1 <= runtime.stats()["grace_periods"] - before <= 4
    assert runtime.stats()["completed_epoch"] >= runtime.stats()["global_epoch"] - 0
    r.close()


def test_synchronize_from_a_reader_process_sees_other_processes(runtime, procs):
    ready, release, info = procs.ctx.Event(), procs.ctx.Event(), procs.ctx.Queue()
    procs.start(_procs.hold_section, runtime.name, ready, release, info)
    assert ready.wait(30)
    pid, _ = info.get(timeout=10)
    other = shmrcu.Runtime.attach(runtime.name)
    try:
        with pytest.raises(shmrcu.GracePeriodTimeout) as exc:
            other.synchronize(timeout=0.1)
        assert exc.value.stalled[0].pid == pid
    finally:
        other.close()
        release.set()
    assert info.get(timeout=10) == "left"
    runtime.synchronize(timeout=5)
    release.set()


@pytest.mark.parametrize("sections", ["fence", "membarrier"])
def test_membarrier_mode_torture(rt_name, procs, sections):
    with shmrcu.Runtime.create(rt_name, sections=sections) as rt:
        out, _ = run_torture(rt, procs, 300_000, broken=False)
        assert {s: bad for s, (_, bad) in out.items()} == {"qsbr": 0, "sections": 0}
