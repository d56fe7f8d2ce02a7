"""Issue 9, items 2-9 and its "suspicious" list: threads, waits, tokens, membarrier, retire.

Every scenario that hung or crashed before the fix runs in a child process with a
deadline (a hang fails fast, a SIGSEGV is a return code), or in a thread whose
result is awaited with a timeout.  Child processes import the same shmrcu as this
process (its package root goes first on their PYTHONPATH).

Suspicious-list tests say CONFIRMED (they fail until that item is fixed), or NOT
REPRODUCED (a guard that passes today and must keep passing).
"""
from __future__ import annotations

import collections
import errno
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import traceback
import time

import pytest

import shmrcu
from shmrcu.errors import GracePeriodTimeout

import _procs
import _wait_procs
from _threads import ReaderThread

TESTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(shmrcu.__file__)))


# ---------------------------------------------------------------------------
# helpers: child processes that import the same shmrcu as this one

def _child_env() -> dict:
    env = dict(os.environ)
    parts = [PKG_ROOT, TESTS_DIR] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    return env


Result = collections.namedtuple("Result", "rc out err seconds timed_out")


def run_child(code: str, *args: str, timeout: float = 30.0) -> Result:
    """Run ``code`` in a fresh interpreter (faulthandler on) with a hard deadline."""
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_child_env(), cwd=TESTS_DIR)
    try:
        out, err = p.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        timed_out = True
    return Result(p.returncode, out, err, time.monotonic() - t0, timed_out)


def result_line(res: Result, tag: str = "RESULT") -> dict:
    for line in res.out.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    raise AssertionError(f"no {tag} line from the child (rc {res.rc}, timed out: {res.timed_out})\n"
                         f"stdout:\n{res.out[-3000:]}\nstderr:\n{res.err[-3000:]}")


class Interactive:
    """A child that talks line by line (stdin/stdout) and is always reaped."""

    def __init__(self, code: str, *args: str):
        self.p = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code),
                                   *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=_child_env(), cwd=TESTS_DIR)
        self.buf = b""
        self.lines: list[str] = []

    def expect(self, timeout: float) -> str | None:
        """The next stdout line, or None if none came within ``timeout``."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.p.stdout], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.p.stdout.fileno(), 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        self.lines.append(line.decode())
        return self.lines[-1]

    def send(self, line: str) -> None:
        self.p.stdin.write((line + "\n").encode())
        self.p.stdin.flush()

    def close(self, timeout: float = 15.0) -> tuple[int, str]:
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        err = self.p.stderr.read().decode(errors="replace")
        return self.p.returncode, err


def _hold_section(procs, name):
    """A spawned reader process inside a section until ``release`` is set."""
    ready, release, info = procs.ctx.Event(), procs.ctx.Event(), procs.ctx.Queue()
    p = procs.start(_procs.hold_section, name, ready, release, info)
    assert ready.wait(60), "reader process did not enter its section"
    pid, slot = info.get(timeout=10)
    return p, release, info, slot


def _leave(release, info):
    release.set()
    assert info.get(timeout=30) == "left"


# ---------------------------------------------------------------------------
# item 2: a process unmaps a freed map only after a local grace period

UNMAP_UNDER_SECTION = """
    import json, sys, threading, time
    import numpy as np
    import shmrcu
    from shmrcu.errors import GracePeriodTimeout
    name, mode = sys.argv[1], sys.argv[2]
    rt = shmrcu.Runtime.create(name, max_workers=4)
    try:
        m = rt.create_map("hash", key="Q", value="Q", max_entries=1 << 14, name="t")
        ks = np.arange(1 << 14, dtype=np.uint64)
        m.update_batch(ks, ks * 3 + 1)
        probe = np.tile(np.random.default_rng(1).permutation(ks), 100)
        with rt.reader() as r0, r0.section():
            t0 = time.monotonic()
            m.lookup_batch(probe)
            per_tile = (time.monotonic() - t0) / 100
        tiles = int(min(4000, max(1000, 2.0 / max(per_tile, 1e-9))))   # about 2 s, no GIL
        keys = np.tile(probe[: 1 << 14], tiles)
        holder = rt.reader()
        holder.online()                              # holds the retire's grace period open
        rt.retire(m)
        started, res = threading.Event(), {}
        def worker():
            r = rt.reader()
            try:
                with r.section():                    # entered after retire: not waited for
                    started.set()
                    t0 = time.monotonic()
                    out = m.lookup_batch(keys)       # RETIRED passes the check, then nogil
                    res["lookup_s"] = time.monotonic() - t0
                    res["correct"] = bool(np.array_equal(out, keys * 3 + 1))
            except BaseException as e:
                res["error"] = repr(e)
                started.set()
            finally:
                r.close()
        t = threading.Thread(target=worker)
        t.start()
        started.wait()
        time.sleep(0.05)
        holder.offline()                             # the grace period elapses: m is freed
        if mode == "barrier":
            t0 = time.monotonic()
            try:
                rt.barrier(timeout=0.3)
                res["barrier"] = "returned"
            except GracePeriodTimeout:
                res["barrier"] = "GracePeriodTimeout"
            res["barrier_s"] = time.monotonic() - t0
            res["section_running_after_barrier"] = t.is_alive()
        else:
            t_end = time.monotonic() + 0.3
            while time.monotonic() < t_end:          # the controller's own housekeeping too
                rt.housekeeping()
                time.sleep(0.005)
            res["section_running_after_housekeeping"] = t.is_alive()
        t.join()
        rt.barrier(timeout=20)                       # section over: now it is unmapped
        print("RESULT " + json.dumps(res), flush=True)
    finally:
        rt.destroy()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["housekeeping", "barrier"])
def test_freed_map_is_not_unmapped_under_a_running_section_of_another_thread(rt_name, mode):
    """Item 2 (repro unmap1.py): a thread in a section runs a long nogil lookup_batch on a
    map that is retired and freed meanwhile; the controller's free thread, its own
    housekeeping and barrier() must not unmap it under the batch (SIGSEGV before)."""
    res = run_child(UNMAP_UNDER_SECTION, rt_name, mode, timeout=45)
    assert not res.timed_out, f"hung:\n{res.err[-3000:]}"
    assert res.rc == 0, f"child died with rc {res.rc} (-11 is SIGSEGV: unmapped under the " \
                        f"section)\n{res.err[-4000:]}"
    r = result_line(res)
    assert "error" not in r, r
    assert r["correct"] is True, r
    if mode == "barrier":
        # while the section runs, barrier waits (here: times out); it never says
        # "unmapped everywhere" while a section of this process may still use the map
        if r["barrier"] == "returned":
            assert not r["section_running_after_barrier"], r
        else:
            assert r["barrier"] == "GracePeriodTimeout", r
    print(f"lookup_batch {r['lookup_s']:.2f}s; {r}")


# ---------------------------------------------------------------------------
# item 3: rt.batch() is per thread

@pytest.mark.timeout(60)
def test_batch_in_one_thread_does_not_swallow_another_threads_grace_period(runtime, procs):
    """Item 3 (repro batch_thr.py): while thread A sits in ``with rt.batch():``, thread
    B's ``outer.swap(0, m)`` (sync=True) still waits for a real grace period."""
    a = runtime.create_map("hash", key="I", value="Q", max_entries=8, name="a")
    b = runtime.create_map("hash", key="I", value="Q", max_entries=8, name="b")
    outer = runtime.create_map("array_of_maps", max_entries=1, inner=a, name="cfg")
    outer[0] = a
    _, release, info, _slot = _hold_section(procs, runtime.name)

    in_batch, leave_batch = threading.Event(), threading.Event()

    def thread_a():
        with runtime.batch():
            in_batch.set()
            leave_batch.wait(30)

    ta = threading.Thread(target=thread_a, daemon=True)
    ta.start()
    assert in_batch.wait(10)
    swapped, box = threading.Event(), {}

    def thread_b():
        try:
            box["old"] = outer.swap(0, b)
        except BaseException as e:
            box["error"] = e
        finally:
            swapped.set()

    tb = threading.Thread(target=thread_b, daemon=True)
    t0 = time.monotonic()
    tb.start()
    try:
        returned_early = swapped.wait(0.3)
        early_s = time.monotonic() - t0
        _leave(release, info)
        assert swapped.wait(20), "swap did not return after the reader left its section"
    finally:
        leave_batch.set()
        release.set()
        ta.join(10)
        tb.join(10)
    assert not returned_early, (f"thread B's synchronous swap returned after {early_s * 1e3:.2f} ms "
                                "while a reader process was inside a section: thread A's batch "
                                "deferred B's grace period")
    assert "error" not in box, box
    assert box["old"].id == a.id


# ---------------------------------------------------------------------------
# item 4: no self-deadlock; waits answer Ctrl-C

SELF_DEADLOCK = """
    import json, sys, time
    import shmrcu
    name, op = sys.argv[1], sys.argv[2]
    rt = shmrcu.Runtime.create(name, max_workers=4)
    res = {}
    try:
        a = rt.create_map("hash", key="I", value="Q", max_entries=8, name="a")
        b = rt.create_map("hash", key="I", value="Q", max_entries=8, name="b")
        c = rt.create_map("hash", key="I", value="Q", max_entries=8, name="c")
        d = rt.create_map("hash", key="I", value="Q", max_entries=8, name="d")
        outer = rt.create_map("array_of_maps", max_entries=2, inner=a, name="cfg")
        outer[0] = a
        outer[1] = c
        # every wait below would have to wait for this thread's own section
        ops = {
            "setitem": lambda: outer.__setitem__(0, b),
            "swap": lambda: outer.swap(0, b),
            "synchronize": lambda: rt.synchronize(),
            "wait_grace_period": lambda: rt.wait_grace_period(rt.start_grace_period()),
            "barrier": lambda: (rt.retire(d), rt.barrier()),     # d's grace period: ours
            "wait_unreferenced": lambda: rt.wait_unreferenced(b, 1),   # b is in no slot
        }
        r = rt.reader()
        with r.section():
            print("IN_SECTION", flush=True)
            t0 = time.monotonic()
            try:
                ops[op]()
                res["outcome"] = "returned"
            except shmrcu.SelfDeadlock as e:
                res["outcome"] = "SelfDeadlock"
                res["errno"] = e.errno
                res["message"] = str(e)
            except BaseException as e:
                res["outcome"] = repr(e)
            res["seconds"] = time.monotonic() - t0
            # an update that does not wait stays allowed inside a section
            res["nosync_old"] = outer.swap(1, a, sync=False).id
            res["still_in_section"] = r.is_online
        t0 = time.monotonic()
        rt.synchronize(timeout=10)                   # nothing of ours stalls the runtime
        res["sync_after_s"] = time.monotonic() - t0
        r.close()
        print("RESULT " + json.dumps(res), flush=True)
    finally:
        rt.destroy()
"""

WAITS = ["setitem", "swap", "synchronize", "wait_grace_period", "barrier", "wait_unreferenced"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("op", WAITS)
def test_grace_period_wait_inside_own_section_raises_self_deadlock_at_once(rt_name, op):
    """Item 4 (repro selfdl.py): a grace-period wait from inside the calling thread's own
    section raises SelfDeadlock (EDEADLK) at once (it hung forever, Ctrl-C ignored);
    ``sync=False`` stays allowed; the runtime is not stalled afterwards."""
    res = run_child(SELF_DEADLOCK, rt_name, op, timeout=20)
    assert not res.timed_out, (f"{op} inside a section did not return within 20 s (self-deadlock); "
                               f"stdout: {res.out!r}")
    assert res.rc == 0, f"rc {res.rc}\n{res.err[-3000:]}"
    r = result_line(res)
    assert r["outcome"] == "SelfDeadlock", r
    assert r["errno"] == errno.EDEADLK, r
    assert r["seconds"] < 0.5, r
    assert r["nosync_old"] > 0 and r["still_in_section"], r
    assert r["sync_after_s"] < 5, r


@pytest.mark.timeout(60)
def test_sync_false_update_inside_a_section_is_allowed(runtime):
    a = runtime.create_map("hash", key="I", value="Q", max_entries=8)
    b = runtime.create_map("hash", key="I", value="Q", max_entries=8)
    outer = runtime.create_map("array_of_maps", max_entries=1, inner=a)
    outer[0] = a
    with runtime.reader() as r, r.section():
        assert outer.swap(0, b, sync=False).id == a.id
        outer.update(0, a, sync=False)
        assert outer[0].id == a.id
    runtime.synchronize(timeout=5)


QSBR_ONLINE_WAIT = """
    import json, sys, time
    import shmrcu
    name = sys.argv[1]
    rt = shmrcu.Runtime.create(name, max_workers=4)
    res = {}
    try:
        a = rt.create_map("hash", key="I", value="Q", max_entries=8)
        b = rt.create_map("hash", key="I", value="Q", max_entries=8)
        outer = rt.create_map("array_of_maps", max_entries=1, inner=a)
        outer[0] = a
        r = rt.reader()
        r.online()
        for op, fn in [("synchronize", lambda: rt.synchronize()),
                       ("wait_grace_period", lambda: rt.wait_grace_period(rt.start_grace_period())),
                       ("swap", lambda: outer.swap(0, b)),
                       ("barrier", lambda: rt.barrier()),
                       ("wait_unreferenced", lambda: rt.wait_unreferenced(a, 5))]:
            print("START", op, flush=True)
            t0 = time.monotonic()
            fn()
            res[op] = {"seconds": time.monotonic() - t0, "online_after": r.is_online,
                       "epoch_after": r.epoch}
        r.quiescent()                                # still a working QSBR reader
        r.offline()
        r.close()
        print("RESULT " + json.dumps(res), flush=True)
    finally:
        rt.destroy()
"""


@pytest.mark.timeout(60)
def test_thread_with_online_qsbr_reader_waits_offline_and_comes_back_online(rt_name):
    """Item 4: a thread whose QSBR reader is online reports a quiescent state, waits
    offline and is online again afterwards (it waited for itself forever)."""
    res = run_child(QSBR_ONLINE_WAIT, rt_name, timeout=25)
    started = [ln.split()[1] for ln in res.out.splitlines() if ln.startswith("START ")]
    assert not res.timed_out, f"hung in {started[-1] if started else '?'} (waiting for its own reader)"
    assert res.rc == 0, f"rc {res.rc}\n{res.err[-3000:]}"
    r = result_line(res)
    for op, v in r.items():
        assert v["seconds"] < 5, (op, v)
        assert v["online_after"] is True and v["epoch_after"] != 0, (op, v)


CTRL_C = """
    import json, signal, sys, time
    import shmrcu
    signal.signal(signal.SIGINT, signal.default_int_handler)
    name, op = sys.argv[1], sys.argv[2]
    rt = shmrcu.Runtime.attach(name, controller=(op == "barrier"))
    if op == "barrier":
        rt.retire(rt.map("victim"))              # its grace period waits for the reader
    tok = rt.start_grace_period()
    wait = {"synchronize": lambda t=None: rt.synchronize(t),
            "wait_grace_period": lambda t=None: rt.wait_grace_period(tok, t),
            "barrier": lambda t=None: rt.barrier(t)}[op]
    print("WAITING", flush=True)
    try:
        wait()
        print("RETURNED %r" % time.monotonic(), flush=True)
    except KeyboardInterrupt:
        print("INTERRUPTED %r" % time.monotonic(), flush=True)
    sys.stdin.readline()                          # the reader has left its section
    t0 = time.monotonic()
    try:
        wait(10)
        print("CONSISTENT %r" % (time.monotonic() - t0), flush=True)
    except BaseException as e:
        print("BROKEN %r" % (e,), flush=True)
    rt.close()
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("op", ["synchronize", "wait_grace_period", "barrier"])
def test_blocking_wait_answers_ctrl_c_promptly_and_leaves_runtime_consistent(runtime, procs, op):
    """Item 4: a wait blocked by another process's section raises KeyboardInterrupt
    within ~100 ms of SIGINT (it ignored Ctrl-C); afterwards, with the reader gone, the
    same wait succeeds."""
    runtime.create_map("hash", key="I", value="Q", max_entries=8, name="victim")
    if op == "barrier":
        runtime.release_control()                # the child takes the lease
    _, release, info, _slot = _hold_section(procs, runtime.name)
    child = Interactive(CTRL_C, runtime.name, op)
    try:
        line = child.expect(30)
        assert line == "WAITING", (line, child.close())
        line = child.expect(0.5)
        assert line is None, f"the wait did not wait for the reader's section: {line!r}"
        t_kill = time.monotonic()
        os.kill(child.p.pid, signal.SIGINT)
        line = child.expect(5)
        assert line is not None, f"{op}() ignored SIGINT for 5 s"
        assert line.startswith("INTERRUPTED"), line
        latency = float(line.split()[1]) - t_kill
        print(f"\nCtrl-C latency of {op}(): {latency * 1e3:.1f} ms")
        assert latency < 0.5, f"KeyboardInterrupt came {latency * 1e3:.0f} ms after SIGINT"
        _leave(release, info)
        child.send("go")
        line = child.expect(20)
        assert line is not None and line.startswith("CONSISTENT"), (line, child.lines)
        rc, err = child.close()
        assert rc == 0, err[-3000:]
    finally:
        release.set()
        if child.p.poll() is None:
            child.p.kill()
        child.close()
        if op == "barrier" and not runtime.is_controller:
            runtime.take_control()


# ---------------------------------------------------------------------------
# item 5: tokens are validated

@pytest.mark.timeout(60)
def test_poll_of_a_token_never_started_is_refused_and_breaks_nothing(runtime):
    """Item 5 (repro poll_future.py): poll_grace_period(global + 1000) raised nothing and
    pushed completed_epoch past global_epoch; every later synchronize returned with a
    reader inside a section."""
    g = runtime.stats()["global_epoch"]
    try:
        polled = runtime.poll_grace_period(g + 1000)
    except ValueError:
        polled = "ValueError"
    st = runtime.stats()
    with pytest.raises(ValueError):
        runtime.wait_grace_period(g + 1000, timeout=0.1)
    with ReaderThread(runtime, mode="section"):
        t0 = time.monotonic()
        try:
            runtime.synchronize(timeout=0.2)
            sync = f"returned after {(time.monotonic() - t0) * 1e3:.2f} ms"
        except GracePeriodTimeout:
            sync = "GracePeriodTimeout"
    assert polled == "ValueError", f"poll_grace_period(never-started token) returned {polled!r}"
    assert st["completed_epoch"] <= st["global_epoch"], st
    assert sync == "GracePeriodTimeout", f"synchronize {sync} with a reader inside a section"
    runtime.synchronize(timeout=5)


# ---------------------------------------------------------------------------
# item 8: an updater whose membarrier fails never ends a grace period early

@pytest.mark.timeout(90)
def test_updater_membarrier_failure_never_shortens_a_grace_period(rt_name, procs):
    from shmrcu.core import _epoch
    set_failure = getattr(_epoch, "_set_membarrier_failure", None)
    if set_failure is None:
        pytest.skip("shmrcu._epoch._set_membarrier_failure (the test-only switch of issue 9 "
                    "item 8) is missing in this build")
    rt = shmrcu.Runtime.create(rt_name, max_workers=8, sections="membarrier")
    try:
        if rt.sections != "membarrier":
            pytest.skip("no membarrier(GLOBAL_EXPEDITED) on this kernel: the runtime fell back "
                        "to fences")
        _, release, info, slot = _hold_section(procs, rt_name)
        try:
            set_failure(errno.ENOSYS)                          # expedited fails, GLOBAL works
            t0 = time.monotonic()
            with pytest.raises(GracePeriodTimeout) as exc:
                rt.synchronize(timeout=0.2)
            assert time.monotonic() - t0 >= 0.15
            assert slot in [s.slot for s in exc.value.stalled]
            tok = rt.start_grace_period()
            assert rt.poll_grace_period(tok) is False
            assert rt.stats().get("membarrier_fallbacks", 1) > 0

            set_failure(errno.ENOSYS, errno.EPERM)             # both fail
            with pytest.raises(OSError) as exc:
                rt.synchronize(timeout=0.2)
            assert not isinstance(exc.value, GracePeriodTimeout), exc.value
            assert exc.value.errno == errno.EPERM, exc.value
            try:
                polled = rt.poll_grace_period(rt.start_grace_period())
            except OSError as e:
                assert not isinstance(e, GracePeriodTimeout) and e.errno == errno.EPERM, e
                polled = False
            assert polled is False, "poll_grace_period said True with a reader inside"

            set_failure(errno.ENOSYS)
            _leave(release, info)
            rt.synchronize(timeout=10)                         # the fallback completes it
            assert rt.poll_grace_period(tok) is True
        finally:
            set_failure(0)
            release.set()
        rt.synchronize(timeout=10)
    finally:
        rt.destroy()


# ---------------------------------------------------------------------------
# item 9: retire() excludes a concurrent outer insert of the same map

def _state_of(rt, map_id: int) -> str:
    try:
        return rt.map(map_id).state
    except (shmrcu.MapNotFound, shmrcu.MapClosed):
        return "gone"


def _clear_outer(outer, n: int) -> None:
    for k in range(n):
        try:
            outer.pop_id(k, sync=False)
        except KeyError:
            pass


@pytest.mark.timeout(120)
def test_retire_and_concurrent_outer_insert_never_both_succeed(runtime):
    """Item 9: one thread keeps inserting X into outer slots (sync=False, and takes it out
    again) while another retires X.  Either retire raises MapInUse or the insert raises
    (TemplateMismatch / MapClosed); an insert that succeeds after (or across) a successful
    retire -- an outer slot naming a non-live map -- is the bug."""
    import random
    tmpl = dict(key="I", value="Q", max_entries=4)
    proto = runtime.create_map("hash", **tmpl)
    outer = runtime.create_map("array_of_maps", max_entries=4, inner=proto, name="outer")
    runtime.retire(proto)
    rng = random.Random(9)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    violations, outcomes = [], collections.Counter()
    rounds = 0
    try:
        deadline = time.monotonic() + 25
        while rounds < 400 and time.monotonic() < deadline and len(violations) < 3:
            rounds += 1
            x = runtime.create_map("hash", **tmpl)
            go, retired = threading.Barrier(2), threading.Event()
            res: dict = {"inserts": 0, "refused": None, "bad": None}
            delay = rng.random() * 0.002

            def insert():
                go.wait()
                i = 0
                while True:
                    k = i % 4
                    i += 1
                    try:
                        outer.swap(k, x, sync=False)
                    except (shmrcu.TemplateMismatch, shmrcu.MapClosed) as e:
                        res["refused"] = type(e).__name__
                        if retired.is_set():
                            return
                        continue
                    res["inserts"] += 1
                    state = x.state
                    if state != "live":      # X sits in slot k of outer while not live
                        res["bad"] = (k, state)
                        return
                    outer.pop_id(k, sync=False)
                    if retired.is_set() and i > 10000:
                        return

            def retire():
                go.wait()
                t_end = time.perf_counter() + delay     # vary where the two windows meet
                while time.perf_counter() < t_end:
                    pass
                try:
                    runtime.retire(x)
                    res["retire"] = "ok"
                except shmrcu.MapInUse:
                    res["retire"] = "MapInUse"
                finally:
                    retired.set()

            ts = [threading.Thread(target=insert), threading.Thread(target=retire)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            outcomes[(res.get("retire"), res["refused"])] += 1
            named = outer.inner_ids()
            bad = [(i, _state_of(runtime, i)) for i in named if _state_of(runtime, i) != "live"]
            if res["bad"] or bad:
                violations.append((rounds, dict(res), named, bad))
            _clear_outer(outer, 4)
            if x.state == "live":
                runtime.retire(x)
    finally:
        sys.setswitchinterval(old_interval)
        _clear_outer(outer, 4)
    print(f"\nretire vs insert: {rounds} rounds, (retire, insert refused) {dict(outcomes)}")
    assert not violations, (f"an outer slot named a retired map in {len(violations)} of {rounds} "
                            f"rounds (insert and retire both succeeded), e.g. {violations[:3]}")
    runtime.barrier(timeout=30)


# ---------------------------------------------------------------------------
# item 7: reclaim is exclusive and never writes a slot whose generation changed

@pytest.mark.timeout(120)
def test_concurrent_reclaimers_never_free_a_new_owners_slot(rt_name, procs):
    """Item 7 (guard): threads of one process reclaim dead slots (reclaim_dead, and
    waiters that probe lagging slots) while reader processes are SIGKILLed in their
    sections and new readers claim the freed slots; every live reader in a section
    must still hold every grace period."""
    rt = shmrcu.Runtime.create(rt_name, max_workers=4)
    stop = threading.Event()
    errors: list = []

    def reclaimer():
        while not stop.is_set():
            try:
                rt._control.reclaim_dead()
            except BaseException as e:
                errors.append(e)
                return

    def waiter():
        while not stop.is_set():
            try:
                rt.synchronize(timeout=0.005)
            except GracePeriodTimeout:
                pass
            except BaseException as e:
                errors.append(e)
                return

    threads = [threading.Thread(target=f, daemon=True) for f in (reclaimer, reclaimer, waiter, waiter)]
    survivors = []
    try:
        for t in threads:
            t.start()
        for rnd in range(4):
            victims = [_hold_section(procs, rt_name) for _ in range(2 if rnd < 3 else 1)]
            for p, *_ in victims:
                p.kill()
            for p, *_ in victims:
                p.join(10)
            if len(survivors) < 2:
                survivors.append(_hold_section(procs, rt_name))
            # every survivor is inside its section: its slot must hold a grace period
            for _ in range(5):
                with pytest.raises(GracePeriodTimeout) as exc:
                    rt.synchronize(timeout=0.05)
                stalled = {s.slot for s in exc.value.stalled}
                for _p, _rel, _info, slot in survivors:
                    assert slot in stalled, (slot, stalled, rt.readers_info())
            info = {i["slot"]: i for i in rt.readers_info()}
            for p, _rel, _info, slot in survivors:
                assert slot in info and info[slot]["pid"] == p.pid and info[slot]["epoch"] != 0, \
                    (slot, info)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for _p, rel, inf, _slot in survivors:
            rel.set()
        rt.destroy()
    assert not errors, errors


# ---------------------------------------------------------------------------
# suspicious list

HK_CLOSE = """
    import random, sys, threading, time
    import shmrcu
    name, seconds = sys.argv[1], float(sys.argv[2])
    sys.setswitchinterval(1e-6)
    owner = shmrcu.Runtime.create(name, max_workers=4)
    stop = threading.Event()
    def churn():                     # frees keep every housekeeper busy
        while not stop.is_set():
            owner.retire(owner.create_map("array", key="I", value="Q", max_entries=4))
            time.sleep(0.001)
    th = threading.Thread(target=churn, daemon=True)
    th.start()
    n = 0
    try:
        live = []
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            live.append(shmrcu.Runtime.attach(name))
            if len(live) > 40:
                live.pop(random.randrange(len(live))).close()
                n += 1
            time.sleep(random.random() * 0.0003)
        for x in live:
            x.close()
        stop.set()
        th.join()
        print("CLOSES", n, flush=True)
    finally:
        owner.destroy()
"""


@pytest.mark.timeout(150)
def test_close_while_housekeeper_runs_never_reads_unmapped_memory(rt_name):
    """Suspicious #1 (repro hk_close.py, CONFIRMED): Runtime.close() unmapped the control
    segment while its housekeeper thread was still reading it (SIGSEGV)."""
    for attempt in range(3):                 # the race needs luck: ~1 crash per 5 s before
        res = run_child(HK_CLOSE, rt_name, "5", timeout=40)
        assert not res.timed_out, res.err[-3000:]
        assert res.rc == 0, f"attempt {attempt}: rc {res.rc} (-11: SIGSEGV)\n{res.err[-4000:]}"
        assert "CLOSES" in res.out


@pytest.mark.timeout(60)
def test_background_threads_survive_maps_created_while_they_free(runtime):
    """Found while testing suspicious #1 on the fix: the free thread and the housekeeper
    iterate the runtime's WeakSet of handles while another thread creates maps
    ("RuntimeError: Set changed size during iteration"); the thread dies (the
    housekeeper for good: this process then never unmaps freed maps)."""
    hit: list = []
    old_hook = threading.excepthook

    def hook(args):
        hit.append(f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: "
                   f"{args.exc_value}\n" + "".join(traceback.format_tb(args.exc_traceback)))

    threading.excepthook = hook
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        keep = []
        t_end = time.monotonic() + 4
        while time.monotonic() < t_end and not hit:
            m = runtime.create_map("array", key="I", value="Q", max_entries=4)
            keep.append(runtime.create_map("array", key="I", value="Q", max_entries=4))
            runtime.retire(m)
            time.sleep(0.0005)
        for m in keep:
            runtime.retire(m)
        runtime.barrier(timeout=30)
    finally:
        sys.setswitchinterval(old_interval)
        threading.excepthook = old_hook
    assert not hit, f"a background thread died: {hit[:3]}"
    hk = getattr(runtime, "_housekeeper_thread", None)
    if hk is not None:
        assert hk.is_alive(), "the housekeeper thread is dead"


@pytest.mark.timeout(60)
def test_barrier_counts_a_new_reader_of_a_process_that_still_maps_a_freed_map(runtime, procs):
    """Suspicious #6 (CONFIRMED): a new reader slot recorded the current freed generation
    although its process still mapped a freed map, so barrier() returned while the
    memory was still mapped there."""
    victim = runtime.create_map("hash", key="I", value="Q", max_entries=1 << 12, name="victim")
    cmds, replies = procs.ctx.Queue(), procs.ctx.Queue()
    p = procs.start(_wait_procs.map_then_reader, runtime.name, cmds, replies)
    tag, pid, map_id, _ = replies.get(timeout=60)
    assert tag == "mapped" and map_id == victim.id
    seg_name = f"shmrcu.{runtime.name}.map.{map_id}"

    def mapped_there() -> bool:
        with open(f"/proc/{pid}/maps") as f:
            return seg_name in f.read()

    runtime.retire(victim)
    runtime.barrier(timeout=20)            # freed; that process has no reader yet
    assert mapped_there()                  # its housekeeping is stopped: still mapped
    cmds.put("reader")
    tag, slot = replies.get(timeout=30)
    try:
        runtime.barrier(timeout=0.5)
        barrier = "returned"
    except GracePeriodTimeout as e:
        barrier = "GracePeriodTimeout"
        assert slot in [s.slot for s in e.stalled], e
    still = mapped_there()
    cmds.put("housekeeping")
    assert replies.get(timeout=30) == ("housekept",)
    runtime.barrier(timeout=20)
    assert not mapped_there()
    cmds.put("exit")
    p.join(30)
    assert not (barrier == "returned" and still), \
        "barrier() returned while a reader's process still mapped the freed map"


@pytest.mark.timeout(60)
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="confirmed, not fixed yet: a half-insert records no owner, so a dead "
                          "writer's CLAIMED/PENDING slot cannot be told from a live one (lands with "
                          "the whole-values insert protocol, issue 11)")
def test_dead_writers_half_insert_does_not_block_its_key_forever(runtime, procs):
    """Suspicious #3 (CONFIRMED, open design point): a writer that died between claiming
    a slot and publishing it leaves its key uninsertable: every later insert spins ~1 s
    and raises EBUSY, forever.  Its owner is known to be dead: recover the half-insert."""
    m = runtime.create_map("hash", key="I", value="Q", max_entries=64, name="h")
    p = procs.start(_wait_procs.abandon_insert_and_die, runtime.name, "h", 7)
    p.join(60)
    assert p.exitcode == 0
    runtime.synchronize(timeout=5)
    outcomes = []
    for _ in range(2):
        try:
            m[7] = 1
            outcomes.append("ok")
        except shmrcu.ShmrcuError as e:
            outcomes.append(f"{type(e).__name__} errno={e.errno}: {e}")
    assert outcomes == ["ok", "ok"], outcomes
    assert m[7] == 1 and len(m) == 1


@pytest.mark.timeout(60)
def test_controller_write_outside_a_section_never_lands_in_a_reused_slot(runtime, procs):
    """Suspicious #4, first half (NOT REPRODUCED: guard): the controller writes key 1
    outside any section while another process deletes it, waits a grace period (the
    slot may be reused) and inserts key 2; key 2 must always read back its own value."""
    m = runtime.create_map("hash", key="I", value="Q", max_entries=1, name="h")
    ready, out = procs.ctx.Event(), procs.ctx.Queue()
    procs.start(_wait_procs.delete_sync_reinsert, runtime.name, "h", 2.0, ready, out)
    assert ready.wait(60)
    writes = 0
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        try:
            m[1] = 111
            writes += 1
        except shmrcu.ShmrcuError:           # MapFull while key 2 holds the only entry
            pass
    n, bad, seen = out.get(timeout=30)
    assert bad == 0, f"key 2 read back {seen} in {bad} of {n} rounds ({writes} writes of key 1)"


@pytest.mark.timeout(60)
def test_multi_field_add_racing_a_delete_never_leaves_a_torn_value(runtime, procs):
    """Suspicious #4 (CONFIRMED, second half): add(k, (1, 100)) upserts field by field;
    a delete from another process between the fields leaves (0, 100), a value no
    sequence of whole adds and deletes can produce."""
    m = runtime.create_map("hash", key="I", value="QQ", max_entries=64, name="h")
    ready, out = procs.ctx.Event(), procs.ctx.Queue()
    procs.start(_wait_procs.delete_key_loop, runtime.name, "h", 5, 2.0, ready, out)
    assert ready.wait(60)
    torn, n = [], 0
    t_end = time.monotonic() + 1.5
    while time.monotonic() < t_end:
        m.add(5, (1, 100))
        n += 1
        v = m.get(5)                       # only this thread adds: no add is in flight
        if v is not None and v[1] != 100 * v[0]:
            torn.append(v)
    deletes = out.get(timeout=30)
    assert not torn, f"{len(torn)} of {n} adds (vs {deletes} deletes) left torn values, e.g. {torn[:3]}"


@pytest.mark.timeout(60)
def test_outer_exchange_and_delete_of_one_key_never_report_the_same_old_id(runtime, procs):
    """Suspicious #5 (CONFIRMED): an exchange-update and a delete of the same outer hash
    key both returned the same old inner id (the exchanged-in id leaked in a
    tombstone).  Every id stored must come back exactly once (or still be there)."""
    tmpl = runtime.create_map("hash", key="I", value="Q", max_entries=4)
    runtime.create_map("hash_of_maps", key="I", max_entries=16, inner=tmpl, name="o")
    ready, start, out = procs.ctx.Queue(), procs.ctx.Event(), procs.ctx.Queue()
    for role in ("x", "d"):
        procs.start(_wait_procs.outer_exchange_or_delete, runtime.name, "o", role, 7, 1.5,
                    ready, start, out)
    assert sorted(ready.get(timeout=60) for _ in range(2)) == ["d", "x"]
    start.set()
    stored, got = [], []
    for _ in range(2):
        _role, s, g = out.get(timeout=60)
        stored += s
        got += g
    o = runtime.map("o")
    try:
        got.append(o._lookup_id(7))
    except KeyError:
        pass
    back = collections.Counter(got)
    twice = sorted(i for i, c in back.items() if c > 1)
    lost = sorted(set(stored) - set(back))
    if o._ids():
        o._swap_id(7, 0)
    assert not twice and not lost, (f"{len(stored)} ids stored: {len(twice)} reported twice "
                                    f"(e.g. {twice[:3]}), {len(lost)} never reported (e.g. {lost[:3]})")
