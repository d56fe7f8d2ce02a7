"""fork(): a child never acts on what it inherited; an inherited Runtime re-attaches.

The prefork pattern (a master attaches, then forks its workers) must keep every guarantee:
a forked child never touches the parent's reader slots, OFD lock descriptors or controller
lease, whatever it does or however it exits; an inherited ``Runtime`` used in the child
re-attaches on first use (never as the controller); an inherited ``Reader`` raises
``InheritedAcrossFork``; shared-memory mappings are not inherited, so a child never pins
memory and ``barrier()`` tells the truth.

Every forked child ends in ``os._exit`` (never in pytest's own teardown) and is reaped with a
deadline; children report through their exit code and a pipe.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import traceback

import pytest

import shmrcu
from shmrcu.core import segment as seg

import _fork_procs

pytestmark = pytest.mark.timeout(60)

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")


# --- helpers -----------------------------------------------------------------
def _reap(pid: int, timeout: float = 10.0) -> int:
    """Wait for child ``pid`` (SIGKILL after ``timeout``); its exit code, -N for signal N."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"forked child {pid} hung: killed after {timeout}s")
        time.sleep(0.002)


class Child:
    """A forked child running ``fn``: exit code 0 if it returned, 1 and its traceback
    (through a pipe) if it raised.  It always ends in os._exit."""

    def __init__(self, fn):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(rfd)
                fn()
                code = 0
            except BaseException:
                try:
                    os.write(wfd, traceback.format_exc()[-8000:].encode())
                except BaseException:
                    pass
            finally:
                os._exit(code)
        os.close(wfd)
        self.pid, self._rfd = pid, rfd
        self.code: int | None = None
        self.report = ""

    def join(self, timeout: float = 10.0) -> int:
        if self.code is None:
            try:
                self.code = _reap(self.pid, timeout)
            finally:
                chunks = []
                while True:
                    b = os.read(self._rfd, 65536)
                    if not b:
                        break
                    chunks.append(b)
                os.close(self._rfd)
                self.report = b"".join(chunks).decode(errors="replace")
        return self.code

    def check(self, timeout: float = 10.0, expect: int = 0) -> None:
        code = self.join(timeout)
        assert code == expect, f"forked child failed (exit {code}):\n{self.report}"


def _expect_raises(exc_type, fn, *, match: tuple[str, ...] = ()) -> str | None:
    """None if ``fn()`` raises ``exc_type`` whose message matches every regex of ``match``,
    else a description of what happened."""
    try:
        fn()
    except exc_type as e:
        missing = [m for m in match if not re.search(m, str(e))]
        if missing:
            return f"{type(e).__name__} without {missing} in its message: {e}"
        return None
    except BaseException as e:
        return f"raised {type(e).__name__}: {e} (wanted {exc_type.__name__})"
    return f"returned normally (wanted {exc_type.__name__})"


def _sync_in_thread(rt: shmrcu.Runtime, timeout: float):
    """``rt.synchronize(timeout)`` from a fresh thread (one with no reader or section of its
    own); returns the exception it raised, or None."""
    out: list = []

    def run():
        try:
            rt.synchronize(timeout=timeout)
            out.append(None)
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout + 15)
    assert out, "synchronize() did not return or raise"
    return out[0]


def _slot(rt: shmrcu.Runtime, index: int) -> dict | None:
    return next((i for i in rt.readers_info() if i["slot"] == index), None)


def _assert_slot_is_ours(rt: shmrcu.Runtime, index: int, pid: int) -> None:
    info = _slot(rt, index)
    assert info is not None, (f"slot {index} of pid {pid} was freed by a forked child; "
                              f"readers now: {rt.readers_info()}")
    assert info["pid"] == pid and info["alive"], info


def _assert_section_holds_grace_periods(rt: shmrcu.Runtime, reader) -> None:
    """Inside ``reader``'s section a grace period must not elapse; after it, it must."""
    with reader.section():
        res = _sync_in_thread(rt, 0.3)
        assert isinstance(res, shmrcu.GracePeriodTimeout), \
            f"synchronize() gave {res!r} while pid {os.getpid()} is inside a read-side section"
    rt.synchronize(timeout=5)


def _mapped_in(pid: int, segment: str) -> list[str]:
    """Lines of /proc/<pid>/maps that map shm segment ``segment`` (POSIX name)."""
    pat = re.compile(re.escape("/dev/shm/" + segment.lstrip("/")) + r"(\s|$)")
    with open(f"/proc/{pid}/maps") as f:
        return [line.rstrip() for line in f if pat.search(line)]


def _read_byte(fd: int, timeout: float = 10.0) -> bytes:
    r, _, _ = select.select([fd], [], [], timeout)
    assert r, "forked child did not report in time"
    return os.read(fd, 1)


def _kill_orphan(pid: int) -> None:
    """SIGKILL ``pid`` and reap it if it became our child (we are a subreaper meanwhile)."""
    try:
        os.kill(pid, signal.SIGKILL)
        _reap(pid)
    except (ProcessLookupError, ChildProcessError):
        pass


def _set_subreaper(on: bool) -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned grandchildren become ours, so we can reap them."""
    ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0)


# --- 1a: a section entered in the parent and left in the child ------------------------
def test_child_leaving_inherited_section_keeps_parent_in_section(runtime):
    r = runtime.reader()
    pid = -1
    left_cleanly = False
    try:
        with r.section():
            pid = os.fork()
            if pid:
                code = _reap(pid)
                assert code == 0, f"the child's exit from the inherited section failed (exit {code})"
                assert r.depth == 1
                res = _sync_in_thread(runtime, 0.3)
                assert isinstance(res, shmrcu.GracePeriodTimeout), (
                    f"synchronize() gave {res!r} while the parent is still inside its section "
                    "(the child's exit from the inherited section ended the parent's)")
        left_cleanly = True          # the child gets here by leaving the parent's with-block
    finally:
        if pid == 0:
            os._exit(0 if left_cleanly else 3)
    runtime.synchronize(timeout=5)
    _assert_slot_is_ours(runtime, r.slot_index, os.getpid())
    r.close()


# --- 1b: however the child exits, the parent's slot and lease stay the parent's ---------
def _lease_problem(rt: shmrcu.Runtime, procs) -> str | None:
    """Another (spawned) process's attach(controller=True) must get ControllerBusy naming us."""
    if not rt.is_controller:
        return "the creator is no longer the controller"
    results = procs.ctx.Queue()
    p = procs.start(_fork_procs.try_take_control, rt.name, results)
    outcome = results.get(timeout=30)
    p.join(10)
    if outcome != ("busy", os.getpid()):
        return (f"another process's attach(controller=True) gave {outcome} while the creator "
                f"(pid {os.getpid()}) lives: a forked child released its controller lease")
    return None


def _parent_problems(rt: shmrcu.Runtime, r, procs) -> list[str]:
    """What a forked child's exit must not have changed: our slot, our section, our lease."""
    problems = []
    if r.closed or rt.closed:
        problems.append(f"reader closed {r.closed}, runtime closed {rt.closed}")
    info = _slot(rt, r.slot_index)
    if info is None or info["pid"] != os.getpid() or not info["alive"]:
        problems.append(f"slot {r.slot_index} of pid {os.getpid()} was freed or taken: {info}; "
                        f"readers now: {rt.readers_info()}")
    try:
        _assert_section_holds_grace_periods(rt, r)
    except AssertionError as e:
        problems.append(str(e).splitlines()[0])
    lease = _lease_problem(rt, procs)
    if lease:
        problems.append(lease)
    return problems


def test_child_leaving_inherited_with_blocks_keeps_parent_slot_and_lease(rt_name, procs):
    """`with Runtime.create(..) as rt, rt.reader() as r:` entered in the parent, left in the child."""
    pid = -1
    left_cleanly = False
    try:
        with shmrcu.Runtime.create(rt_name, max_workers=8) as rt, rt.reader() as r:
            pid = os.fork()
            if pid:
                code = _reap(pid)
                assert code == 0, f"the child's exit from the inherited with-blocks failed (exit {code})"
                problems = _parent_problems(rt, r, procs)
                assert not problems, "\n".join(problems)
                assert os.path.exists(seg.SHM_DIR + seg.shm_name(rt_name, "ctl"))
        left_cleanly = True          # the child gets here too: it left both with-blocks
    finally:
        if pid == 0:
            os._exit(0 if left_cleanly else 3)
    assert not seg.runtime_segments(rt_name)        # the parent's exit destroyed it


def _exit_close(runtime, holder):
    holder[0].close()
    runtime.close()


def _exit_dealloc(runtime, holder):
    holder.clear()                # the child's last reference to the inherited Reader
    gc.collect()


def _exit_os_exit(runtime, holder):
    os._exit(0)


def _exit_sigkill(runtime, holder):
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("how", ["close", "dealloc", "os_exit", "sigkill"])
def test_child_exit_keeps_parent_slot_and_lease(runtime, procs, how):
    holder = [runtime.reader()]           # no other strong reference: `dealloc` frees it in the child
    slot = holder[0].slot_index
    exit_how = globals()[f"_exit_{how}"]
    child = Child(lambda: exit_how(runtime, holder))
    child.check(expect=-signal.SIGKILL if how == "sigkill" else 0)
    r = holder[0]
    assert r.slot_index == slot
    problems = _parent_problems(runtime, r, procs)
    assert not problems, "\n".join(problems)
    r.close()


def test_child_interpreter_shutdown_keeps_parent_slot(runtime):
    """A module-level reader deallocated at the child's interpreter shutdown (`sys.exit(0)`)."""
    # the script imports the same shmrcu as we do
    path = os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(shmrcu.__file__)),
                                        os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, os.path.join(HELPERS, "_fork_procs.py"), "shutdown", runtime.name],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=path))
    try:
        r, _, _ = select.select([proc.stdout], [], [], 20)
        assert r, "the script did not report"
        line = proc.stdout.readline()
        assert line, f"the script ended early (exit {proc.wait(5)})"
        info = json.loads(line)
        assert info["child_exit"] == 0
        assert not info["closed"] and info["online"]
        _assert_slot_is_ours(runtime, info["slot"], proc.pid)
        res = _sync_in_thread(runtime, 0.3)
        assert isinstance(res, shmrcu.GracePeriodTimeout), (
            f"synchronize() gave {res!r} while pid {proc.pid}'s reader is online: its forked "
            "child's interpreter shutdown released the parent's slot")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
        runtime.synchronize(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdin.close()
        proc.stdout.close()


# --- 1c: a forked bystander must not keep a dead parent's slot or lease alive ------------
@pytest.mark.parametrize("controller", [False, True], ids=["reader", "controller"])
def test_forked_bystander_does_not_keep_dead_parent_alive(rt_name, procs, controller):
    rt = None if controller else shmrcu.Runtime.create(rt_name, max_workers=8)
    info = procs.ctx.Queue()
    cpid = None
    _set_subreaper(True)            # the bystander, orphaned by P's death, is reaped by us
    try:
        p = procs.start(_fork_procs.reader_forks_bystander, rt_name, controller, info)
        ppid, cpid, slot = info.get(timeout=30)
        p.kill()
        # not p.join(timeout): that waits on a sentinel pipe the bystander inherited
        deadline = time.monotonic() + 10
        while p.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert p.exitcode == -signal.SIGKILL
        os.kill(cpid, 0)                   # the bystander lives on (it sleeps)
        if controller:
            try:
                rt = shmrcu.Runtime.attach(rt_name, controller=True)
            except shmrcu.ControllerBusy as e:
                pytest.fail(f"takeover refused while the controller (pid {ppid}) is dead and only its "
                            f"forked bystander (pid {cpid}) lives: {e}")
            assert rt.is_controller
        t0 = time.monotonic()
        try:
            rt.synchronize(timeout=2)
        except shmrcu.GracePeriodTimeout as e:
            pytest.fail(f"slot {slot} of dead pid {ppid} was not reclaimed while its forked "
                        f"bystander (pid {cpid}) lives: {e}")
        assert time.monotonic() - t0 < 2.5
        assert _slot(rt, slot) is None or _slot(rt, slot)["pid"] != ppid
        os.kill(cpid, 0)
    finally:
        if cpid is not None:
            _kill_orphan(cpid)
        _set_subreaper(False)
        if rt is not None:
            if rt.is_controller:
                rt.destroy()
            else:
                rt.close()


# --- 1d: per-worker maps ---------------------------------------------------------------
def test_per_worker_add_in_child_without_reader_raises(runtime):
    pw = runtime.create_map("per_worker_hash", key="I", value="Q", max_entries=16, name="pw")
    r = runtime.reader()
    pw.add(1, 0)

    def child():
        problems = []
        if runtime.current_reader is not None:
            problems.append(f"current_reader is the inherited {runtime.current_reader!r}")
        err = _expect_raises(shmrcu.ShmrcuError, lambda: pw.add(1, 1))
        if err:
            problems.append(f"pw.add() in a child without a reader {err}")
        assert not problems, "; ".join(problems)

    Child(child).check()
    assert pw.per_worker(1)[r.slot_index] == 0, "a forked child added to the parent's per-worker copy"
    assert pw[1] == 0
    r.close()


def test_per_worker_adds_from_child_are_exact(runtime):
    n = 200_000
    pw = runtime.create_map("per_worker_hash", key="I", value="Q", max_entries=16, name="pw")
    r = runtime.reader()
    pw.add(1, 0)
    ready_r, ready_w = os.pipe()

    def child():
        # a prefork worker's idiom: use this process's reader, or make one
        reader = runtime.current_reader or runtime.reader()
        os.write(ready_w, b"r")
        for _ in range(n):
            pw.add(1, 1)
        reader.close()

    c = Child(child)
    try:
        _read_byte(ready_r)
        for _ in range(n):
            pw.add(1, 1)
    finally:
        os.close(ready_r)
        os.close(ready_w)
        c.check(timeout=20)
    copies = pw.per_worker(1)
    assert copies[r.slot_index] == n, (
        f"the parent's copy holds {copies[r.slot_index]} after its own {n} adds: the child's "
        f"adds landed in it (copies {[x for x in copies if x]})")
    assert pw[1] == 2 * n, f"{pw[1]} != {2 * n}: lost increments"
    assert sorted(x for x in copies if x) == [n, n]
    r.close()


# --- 1e: barrier() with a forked child that never touches shmrcu ------------------------
def test_barrier_not_fooled_by_forked_child(runtime):
    big = runtime.create_map("hash", key="Q", value="Q", max_entries=1 << 20, name="big")   # 64 MiB
    big[1] = 1
    name = seg.shm_name(runtime.name, f"map.{big.id}")
    assert _mapped_in(os.getpid(), name)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def child():               # a bystander: never touches shmrcu
        os.write(ready_w, b"r")
        os.read(go_r, 1)

    c = Child(child)
    try:
        _read_byte(ready_r)
        at_start = _mapped_in(c.pid, name)
        runtime.retire(big)
        del big
        runtime.barrier(timeout=5)
        after = _mapped_in(c.pid, name)
        assert not after, (f"barrier() returned while forked child {c.pid} still maps {name} "
                           f"(64 MiB stays pinned): {after}")
        assert not at_start, f"forked child {c.pid} inherited the mapping of {name}: {at_start}"
    finally:
        os.write(go_w, b"g")
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
        c.check()


# --- 2-4: the child-side API ----------------------------------------------------------------
def test_inherited_reader_raises_in_child(runtime):
    r = runtime.reader()
    parent = os.getpid()

    def section():
        with r.section():
            pass

    def child():
        problems = []
        if runtime.current_reader is not None:
            problems.append(f"current_reader is the inherited {runtime.current_reader!r}")
        for what, fn in [("with r.section()", section), ("r.online()", r.online),
                         ("r.quiescent()", r.quiescent), ("r.offline()", r.offline)]:
            # "created in pid P; make a reader in this process"
            err = _expect_raises(shmrcu.InheritedAcrossFork, fn, match=(rf"\b{parent}\b", r"(?i)reader"))
            if err:
                problems.append(f"{what}: {err}")
        if not issubclass(shmrcu.InheritedAcrossFork, shmrcu.ReaderClosed):
            problems.append("InheritedAcrossFork is not a ReaderClosed")
        r.close()                  # does nothing to the parent's slot
        assert not problems, "\n".join(problems)

    Child(child).check()
    assert not r.closed and r.depth == 0
    info = _slot(runtime, r.slot_index)
    assert info is not None and info["pid"] == parent, f"the child's r.close() freed the parent's slot: {info}"
    assert not info["online"], f"the child left the parent's slot online: {info}"
    _assert_section_holds_grace_periods(runtime, r)
    r.close()


def test_inherited_runtime_reattaches_in_child(runtime):
    table = runtime.create_map("hash", key="I", value="Q", max_entries=64, name="t")
    table[7] = 42
    cfg = runtime.create_map("array_of_maps", max_entries=1, inner=table, name="cfg")
    cfg[0] = table
    r = runtime.reader()

    def child():
        problems = []
        if runtime.is_controller:
            problems.append("is_controller is True in the child")
        if runtime.current_reader is not None:
            problems.append(f"current_reader is the inherited {runtime.current_reader!r}")
        cr = runtime.reader()
        if cr.slot_index == r.slot_index:
            problems.append(f"the child's reader got the parent's slot {r.slot_index}")
        if runtime.current_reader is not cr:
            problems.append("current_reader is not the child's own reader")
        with cr.section():
            v = runtime.map("cfg")[0][7]
        if v != 42:
            problems.append(f"cfg[0][7] read {v!r}")
        info = _slot(runtime, cr.slot_index)
        if info is None or info["pid"] != os.getpid():
            problems.append(f"the child's slot is not the child's: {info}")
        runtime.synchronize(timeout=2)
        names = {m["name"] for m in runtime.maps()}
        if not {"t", "cfg"} <= names:
            problems.append(f"maps() in the child: {names}")
        cr.close()
        runtime.close()
        assert not problems, "\n".join(problems)

    Child(child).check()
    assert not runtime.closed and runtime.is_controller
    _assert_slot_is_ours(runtime, r.slot_index, os.getpid())
    assert [i["pid"] for i in runtime.readers_info()] == [os.getpid()]
    with r.section():
        assert cfg[0][7] == 42
    _assert_section_holds_grace_periods(runtime, r)
    r.close()


def test_controller_calls_in_child_raise_not_controller(runtime):
    m = runtime.create_map("hash", key="I", value="Q", max_entries=64, name="m")
    ctl = seg.SHM_DIR + seg.shm_name(runtime.name, "ctl")
    hint = (r"Runtime\.attach\(.*controller=True\)",)

    def batch():
        with runtime.batch():
            pass

    def child():
        problems = []
        if runtime.is_controller:
            problems.append("is_controller is True in the child")
        for what, fn in [("rt.controller", lambda: runtime.controller), ("rt.batch()", batch),
                         ("rt.retire(m)", lambda: runtime.retire(m)),
                         ("rt.barrier()", lambda: runtime.barrier(timeout=2)),
                         ("rt.destroy()", runtime.destroy)]:
            err = _expect_raises(shmrcu.NotController, fn, match=hint)
            if err:
                problems.append(f"{what}: {err}")
        assert not problems, "\n".join(problems)

    Child(child).check()
    assert os.path.exists(ctl), "a forked child destroyed the parent's runtime"
    assert runtime.is_controller
    assert {i["name"]: i["state"] for i in runtime.maps()} == {"m": "live"}, "a forked child retired a map"
    assert issubclass(shmrcu.NotController, shmrcu.ShmrcuError)
    runtime.retire(m)
    runtime.barrier(timeout=5)


def test_inherited_map_handles_work_in_child(runtime):
    table = runtime.create_map("hash", key="I", value="Q", max_entries=64, name="t")
    arr = runtime.create_map("array", key="I", value="QQ", max_entries=4, name="a")
    table[5] = 99
    arr[1] = (3, 4)

    def child():
        assert table[5] == 99 and 5 in table and len(table) == 1
        assert arr[1] == (3, 4)
        with runtime.reader() as cr:
            assert table.lookup(5, cr) == 99
        table[6] = 66              # written through the inherited handle: the parent sees it
        arr.add(1, (1, 1))

    Child(child).check()
    assert table[6] == 66 and arr[1] == (4, 5)


def test_child_close_does_not_affect_parent(runtime):
    a = runtime.create_map("hash", key="I", value="Q", max_entries=64, name="a")
    b = runtime.create_map("hash", key="I", value="Q", max_entries=64, name="b")
    a[7] = 42
    cfg = runtime.create_map("array_of_maps", max_entries=1, inner=a, name="cfg")
    cfg[0] = a
    r = runtime.reader()

    def child():
        with runtime:                       # re-attaches, then detaches the child only
            with runtime.reader() as cr, cr.section():
                assert runtime.map("cfg")[0][7] == 42
        runtime.close()

    Child(child).check()
    assert not runtime.closed and runtime.is_controller and not r.closed
    _assert_slot_is_ours(runtime, r.slot_index, os.getpid())
    other = None
    try:
        other = shmrcu.Runtime.attach(runtime.name, controller=True)
    except shmrcu.ControllerBusy as e:
        assert e.pid == os.getpid()
    else:
        pytest.fail("a forked child's close() released the parent's controller lease")
    finally:
        if other is not None:
            other.release_control()
            other.close()
    with r.section():
        assert cfg[0][7] == 42
    old = cfg.swap(0, b)
    assert old.id == a.id
    runtime.retire(a)
    runtime.barrier(timeout=5)
    _assert_section_holds_grace_periods(runtime, r)
    r.close()
