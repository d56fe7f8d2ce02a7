"""Acceptance for the prefork model (issue 9, item 1; DESIGN.md "Process models").

A real prefork server: gunicorn ``--preload`` with 3 sync workers.  The master imports
``tests/helpers/_prefork_app.py``, which attaches the runtime and opens the outer map; then it
forks the workers, which serve lookups outer -> inner through their inherited handles,
each worker with its own reader slot.  Meanwhile this process is the controller and
swaps a fresh inner map in every few ms, for a few seconds, while client threads
hammer the server; one worker is SIGKILLed mid-run and gunicorn forks a replacement
from the (long attached) master.

The hidden-state checker.  Inner map version v holds (v, v) under every key.  Only
*after* the swap that took v out of service returned (a grace period) does the
controller (1) record v in the ``freed`` array under v's map id, (2) overwrite every
value of v with poison (0xDEAD << 48 | v, v) and (3) retire v, so the runtime frees
and unlinks it and every worker must unmap it.  A request reads the inner map twice
with a sleep in between, inside one section, then reads the map's state and its
``freed`` mark, still inside.  RCU promises that none of (1)-(3) is visible there:
no response may contain poison, a freed mark or a non-live state; both reads agree
and name the version of the map id the controller created; versions never go
backwards per worker; and a request sent after a swap returned sees at least that
version.  Afterwards ``barrier()`` must return with the workers idle, no gunicorn
process may still map a freed map (read from /proc/PID/maps, not from what the
runtime believes), every live worker has its own slot, the killed worker's slot and,
after shutdown, every gunicorn slot are gone, and the controller lease never moved.

``test_checker_catches_a_broken_grace_period`` runs the same server with the
controller's ``synchronize()`` switched off and requires the checker to catch it.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("gunicorn", reason="the prefork acceptance test runs a real gunicorn server: "
                                       "pip install 'shmrcu[prefork]' (the 'test' extra includes it)")

import psutil  # noqa: E402

import shmrcu  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent / "helpers"   # _prefork_app.py
WORKERS = 3
CLIENTS = 4
KEYS = 16
SWAP_INTERVAL_S = 0.003
RUN_S = 4.0
KILL_AT_S = 1.5
POISON = 0xDEAD << 48
POISON_MASK = 0xFFFF << 48


# -- the controller (a thread of this process, which holds the lease) -------------------
class Swapper(threading.Thread):
    """Swaps a new inner map into routes[0] every SWAP_INTERVAL_S; marks, poisons and
    retires the old one only after the swap (and its grace period) returned."""

    def __init__(self, rt, table, freed, first):
        super().__init__(name="prefork-controller", daemon=True)
        self.rt, self.table, self.freed = rt, table, freed
        self.version_of = {first.id: 1}       # map id -> version, for every map ever created
        self.current = first
        self.published = 1                    # the newest version whose swap has returned
        self.swap_s: list[float] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def make(self, version: int):
        m = self.rt.create_map("hash", key="I", value="QQ", max_entries=KEYS)
        for k in range(KEYS):
            m[k] = (version, version)
        self.version_of[m.id] = version
        return m

    def run(self) -> None:
        try:
            version = self.published
            while not self.stop.is_set():
                version += 1
                new = self.make(version)
                t0 = time.monotonic()
                old = self.table.swap(0, new)          # returns after a grace period
                self.swap_s.append(time.monotonic() - t0)
                self.current, self.published = new, version
                old_version = self.version_of[old.id]
                self.freed[old.id] = old_version       # hidden state: out of service from now on
                for k in range(KEYS):
                    old[k] = (POISON | old_version, old_version)
                self.rt.retire(old)                    # freed + unlinked after a grace period
                self.stop.wait(SWAP_INTERVAL_S)
        except BaseException as e:  # reported by the test
            self.error = e


# -- clients (threads of this process) -----------------------------------------------------
class Clients:
    def __init__(self, port: int, swapper: Swapper):
        self.port, self.swapper = port, swapper
        self.stop = threading.Event()
        self.responses: list[tuple[int, dict]] = []   # (version published before sending, body)
        self.transport_errors: list[tuple[float, str]] = []
        self.http_errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(seed,), daemon=True)
                        for seed in range(CLIENTS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _run(self, seed: int) -> None:
        rnd = random.Random(seed)
        while not self.stop.is_set():
            floor = self.swapper.published
            query = f"k1={rnd.randrange(KEYS)}&k2={rnd.randrange(KEYS)}&work_us={rnd.randrange(100, 2000)}"
            sent = time.monotonic()
            try:
                status, body = get(self.port, "/lookup?" + query)
            except (OSError, http.client.HTTPException) as e:
                self.transport_errors.append((sent, repr(e)))
                time.sleep(0.01)
                continue
            if status != 200:
                self.http_errors.append(f"HTTP {status}: {body.decode(errors='replace')}")
                continue
            self.responses.append((floor, json.loads(body)))


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- the checker -------------------------------------------------------------------------
def check_responses(responses: list[tuple[int, dict]], version_of: dict[int, int]) -> list[str]:
    bad: list[str] = []
    by_pid: dict[int, list[dict]] = {}
    for floor, r in responses:
        by_pid.setdefault(r["pid"], []).append(r)
        where = f"pid {r['pid']} request #{r['seq']} map {r['map_id']}"
        first, second = r["first"], r["second"]
        if any(x[0] & POISON_MASK == POISON for x in (first, second)):
            bad.append(f"{where}: read a poisoned value {first} / {second} (the map was already "
                       "taken out of service: its swap returned while this section held it)")
            continue
        if r["freed_mark"]:
            bad.append(f"{where}: saw the controller's freed mark (version {r['freed_mark']}) inside "
                       "the section that found the map")
        if r["state"] != "live":
            bad.append(f"{where}: the map it holds is {r['state']!r} inside the section")
        want = version_of.get(r["map_id"])
        if want is None:
            bad.append(f"{where}: map id the controller never created")
        elif not first == second == [want, want]:
            bad.append(f"{where}: reads {first} then {second}, want ({want}, {want}) twice")
        if want is not None and want < floor:
            bad.append(f"{where}: version {want} although version {floor}'s swap had returned "
                       "before the request was sent")
    for pid, rs in by_pid.items():
        rs.sort(key=lambda r: r["seq"])
        slots = {r["slot"] for r in rs}
        if len(slots) != 1:
            bad.append(f"pid {pid} answered from several reader slots {sorted(slots)}")
        versions = [version_of.get(r["map_id"], 0) for r in rs]
        back = [(a, b) for a, b in zip(versions, versions[1:]) if b < a]
        if back:
            bad.append(f"pid {pid}: versions went backwards {back[:5]}")
    return bad


def mapped_map_ids(pid: int, rt_name: str) -> set[int]:
    pattern = re.compile(r"/shmrcu\." + re.escape(rt_name) + r"\.map\.(\d+)")
    try:
        with open(f"/proc/{pid}/maps") as f:
            return {int(m.group(1)) for line in f if (m := pattern.search(line))}
    except FileNotFoundError:
        return set()


# -- the server --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return ""


def workers_of(master: psutil.Process) -> list[int]:
    try:
        return sorted(c.pid for c in master.children())
    except psutil.NoSuchProcess:
        return []


class Gunicorn:
    """``gunicorn --preload -w WORKERS`` serving tests/helpers/_prefork_app.py, always stopped."""

    def __init__(self, rt, tmp_path: Path):
        self.rt = rt
        self.port = free_port()
        self.log = tmp_path / "gunicorn.log"
        self.cmd = [sys.executable, "-m", "gunicorn", "--preload", "-c", "python:_prefork_app",
                    "-w", str(WORKERS), "-k", "sync", "-b", f"127.0.0.1:{self.port}",
                    "--chdir", str(TESTS_DIR), "_prefork_app:app"]
        # the config module (-c python:_prefork_app) is imported before --chdir applies
        path = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p)
        self.env = dict(os.environ, SHMRCU_PREFORK_RUNTIME=rt.name, PYTHONPATH=path)
        self.pids: set[int] = set()          # the master and every worker seen

    def __enter__(self) -> "Gunicorn":
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.pids.add(self.proc.pid)
        try:
            self.master = psutil.Process(self.proc.pid)
            self.workers = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def current_workers(self) -> list[int]:
        pids = workers_of(self.master)
        self.pids.update(pids)
        return pids

    def _wait_ready(self, timeout: float = 30.0) -> list[int]:
        """The port answers, WORKERS workers run and each registered a reader (post_fork)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.proc.returncode} during start-up:\n"
                            f"{log_tail(self.log)}")
            pids = self.current_workers()
            if len(pids) == WORKERS and set(pids) <= {r["pid"] for r in self.rt.readers_info()}:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return pids
                except OSError:
                    pass
            time.sleep(0.05)
        pytest.fail(f"gunicorn not ready after {timeout}s (workers {workers_of(self.master)}, "
                    f"readers {self.rt.readers_info()}):\n{log_tail(self.log)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)   # its own session: gunicorn and its workers
                self.proc.wait(10)


def wait_gone(pids, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        if alive:
            time.sleep(0.05)
    return alive


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def make_tables(rt):
    first = rt.create_map("hash", key="I", value="QQ", max_entries=KEYS)
    for k in range(KEYS):
        first[k] = (1, 1)
    table = rt.create_map("array_of_maps", max_entries=1, inner=first, name="routes")
    table[0] = first
    freed = rt.create_map("array", value="Q", max_entries=1 << 16, name="freed")
    return Swapper(rt, table, freed, first)


CONTROLLER_PROBE = """
import sys, shmrcu
try:
    rt = shmrcu.Runtime.attach(sys.argv[1], controller=True)
except shmrcu.ControllerBusy as e:
    print("busy", e.pid)
else:
    print("took", rt.stats()["controller_pid"])
    rt.close()
"""


@pytest.mark.timeout(120)
def test_gunicorn_preload_workers_never_see_a_freed_map(runtime, tmp_path):
    rt = runtime
    t_start = time.monotonic()
    swapper = make_tables(rt)
    swapper.start()                     # swapping already while the master imports and forks
    clients = None
    problems: list[str] = []
    try:
        with Gunicorn(rt, tmp_path) as server:
            master_pid, workers = server.proc.pid, server.workers
            t_ready = time.monotonic()

            # -- hammer while the controller swaps; SIGKILL one worker mid-run -----------------
            clients = Clients(server.port, swapper)
            clients.start()
            time.sleep(KILL_AT_S)
            victim = workers[0]
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            replacement = None
            while time.monotonic() < killed_at + 20:
                new = [p for p in server.current_workers() if p not in workers]
                if new and time.monotonic() - t_ready >= RUN_S and \
                        new[0] in {r["pid"] for _, r in list(clients.responses)}:
                    replacement = new[0]
                    break
                time.sleep(0.05)
            clients.join()
            swapper.stop.set()
            swapper.join(30)
            if swapper.error is not None:
                problems.append(f"controller failed: {swapper.error!r}")
            if replacement is None:
                problems.append(f"no replacement worker served a request within 20 s of the SIGKILL "
                                f"of {victim} (workers now {server.current_workers()})")
            live_workers = server.current_workers()

            # -- what the requests saw ------------------------------------------------------
            responses = list(clients.responses)
            problems += check_responses(responses, swapper.version_of)
            problems += clients.http_errors[:5]
            stray = [e for t, e in clients.transport_errors if not -0.5 <= t - killed_at <= 2.0]
            if stray or len(clients.transport_errors) > CLIENTS:
                problems.append(f"requests failed away from the SIGKILL (or too many): "
                                f"{clients.transport_errors[:5]}")
            served = {r["pid"] for _, r in responses}
            if not set(live_workers) <= served:
                problems.append(f"workers {sorted(set(live_workers) - served)} never served a request")
            if len(responses) < 200 or len(swapper.swap_s) < 200:
                problems.append(f"too little happened: {len(responses)} responses, "
                                f"{len(swapper.swap_s)} swaps")

            # -- barrier with the workers idle: every freed map unmapped everywhere --------------
            live_ids = {m["id"] for m in rt.maps() if m["state"] == "live"}
            try:
                rt.barrier(timeout=5)
            except shmrcu.GracePeriodTimeout as e:
                problems.append(f"barrier(timeout=5) with idle workers raised: {e}; stalled "
                                f"{[(s.slot, s.pid) for s in e.stalled]}")
            created = set(swapper.version_of)
            for pid in [master_pid] + live_workers:
                stale = sorted((mapped_map_ids(pid, rt.name) & created) - live_ids)
                if stale:
                    who = "master" if pid == master_pid else "worker"
                    problems.append(f"gunicorn {who} {pid} still maps {len(stale)} freed inner map(s) "
                                    f"after the barrier, e.g. ids {stale[:5]} (/proc/{pid}/maps)")

            # -- every worker has its own slot ----------------------------------------------
            slots_of: dict[int, list[int]] = {}
            for r in rt.readers_info():
                slots_of.setdefault(r["pid"], []).append(r["slot"])
            reported = {r["pid"]: r["slot"] for _, r in responses}
            for pid in live_workers:
                if slots_of.get(pid) != [reported.get(pid)]:
                    problems.append(f"worker {pid} answered from slot {reported.get(pid)} but "
                                    f"readers_info() lists {slots_of.get(pid)} for it")
            live_slots = [reported.get(p) for p in live_workers]
            if len(set(live_slots)) != len(live_slots):
                problems.append(f"live workers share reader slots: {dict(zip(live_workers, live_slots))}")
            if master_pid in slots_of:
                problems.append(f"the gunicorn master {master_pid} holds reader slots {slots_of[master_pid]}")
            if victim in slots_of:
                problems.append(f"the SIGKILLed worker {victim} still holds slots {slots_of[victim]}")
    finally:
        if clients is not None:
            clients.join()
        swapper.stop.set()
        swapper.join(30)

    # -- after shutdown: no gunicorn slots left, the lease never moved ----------------------------
    if server.proc.returncode != 0:
        problems.append(f"gunicorn exited with {server.proc.returncode} on SIGTERM")
    still = wait_gone(server.pids - {master_pid})
    if still:
        problems.append(f"gunicorn workers {still} outlived their master")
    try:
        rt.barrier(timeout=5)             # also reclaims the slots of dead readers
    except shmrcu.GracePeriodTimeout as e:
        problems.append(f"barrier after gunicorn stopped raised: {e}")
    left = [r for r in rt.readers_info() if r["pid"] in server.pids]
    if left:
        problems.append(f"reader slots of gunicorn processes left after shutdown: "
                        f"{[(r['slot'], r['pid'], r['alive']) for r in left]}")
    if not rt.is_controller or rt.stats()["controller_pid"] != os.getpid():
        problems.append(f"the controller lease moved: is_controller={rt.is_controller}, "
                        f"controller_pid={rt.stats()['controller_pid']} (test pid {os.getpid()})")
    probe = subprocess.run([sys.executable, "-c", CONTROLLER_PROBE, rt.name],
                           capture_output=True, text=True, timeout=60)
    if probe.stdout.split() != ["busy", str(os.getpid())]:
        problems.append(f"Runtime.attach(controller=True) from a new process: {probe.stdout!r} "
                        f"{probe.stderr[-2000:]!r} (want ControllerBusy naming pid {os.getpid()})")
    if "Traceback" in log_tail(server.log, 1 << 20):
        problems.append("tracebacks in the gunicorn log")

    summary = (f"{len(clients.responses)} responses from {len({r['pid'] for _, r in clients.responses})} "
               f"worker pids, {len(swapper.swap_s)} swaps (max {max(swapper.swap_s) * 1e3:.1f} ms), "
               f"{len(clients.transport_errors)} transport errors, {time.monotonic() - t_start:.1f} s")
    assert not problems, "\n".join([summary, *problems[:20], "--- gunicorn log (tail) ---",
                                    log_tail(server.log)])


@pytest.mark.timeout(120)
def test_checker_catches_a_broken_grace_period(runtime, tmp_path):
    """The checker is live: with the controller's synchronize() broken (returns without
    waiting, the torture test's switch) the same server must be caught seeing poison or
    the freed mark inside its sections."""
    from shmrcu.core import _epoch
    swapper = make_tables(runtime)
    with Gunicorn(runtime, tmp_path) as server:
        clients = Clients(server.port, swapper)
        _epoch._set_broken_synchronize(True)
        try:
            swapper.start()
            clients.start()
            time.sleep(1.5)
        finally:
            clients.join()
            swapper.stop.set()
            swapper.join(30)
            _epoch._set_broken_synchronize(False)
    assert swapper.error is None, swapper.error
    found = check_responses(list(clients.responses), swapper.version_of)
    caught = [p for p in found if "poisoned" in p or "freed mark" in p]
    assert caught, (f"{len(clients.responses)} responses, {len(swapper.swap_s)} swaps with a broken "
                    f"grace period and the checker found nothing: {found[:5]}")
