"""Serving a table to a prefork server through its whole life (issue 15).

gunicorn ``--preload -w 3`` runs ``examples/prefork/serve.py`` -- the README recipe -- while a
long-lived controller process (``Runtime.create_or_take_over``) reloads the table every 20 ms
with ``outer.replace`` (table v holds (v, v) under every key, and v as its version word).
Client threads ask for 4 keys per request.  Meanwhile: the controller is SIGKILLed (the
workers keep serving the last table) and a new one takes over (versions go on); the runtime
is destroyed and re-created by another controller (workers raise RuntimeDestroyed inside,
attach the new runtime, and serve its tables); a worker is SIGKILLed and gunicorn forks a
replacement from the master, whose runtime handle is the destroyed one.

The checker: every answer comes from one whole table -- all values (v, v) with v its
version -- versions never go backwards within one incarnation and one worker, answers
other than 200 (503: no runtime) happen only between the destroy and the re-creation, and
every phase was served (after each event, by every live worker pid eventually).
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("gunicorn", reason="the prefork serving test runs a real gunicorn server: "
                                       "pip install 'shmrcu[prefork]' (the 'test' extra includes it)")

import psutil  # noqa: E402

import shmrcu  # noqa: E402
from shmrcu.core import segment as seg  # noqa: E402

import _serving_procs  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "prefork"
WORKERS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Clients:
    def __init__(self, port: int, n: int = 2):
        self.port = port
        self.stop = threading.Event()
        self.answers: list[tuple[float, int, dict | None]] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int) -> None:
        conn = None
        j = 0
        while not self.stop.is_set():
            j += 1
            keys = [(j * 7 + i + d) % _serving_procs.KEYS for d in range(4)]
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/?" + "&".join(f"k={k}" for k in keys))
                resp = conn.getresponse()
                body = resp.read()
                t = time.monotonic()
                self.answers.append((t, resp.status, json.loads(body) if resp.status == 200 else None))
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(f"{time.monotonic():.3f} {type(e).__name__}: {e}")
                conn = None
                time.sleep(0.01)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(15)


def test_prefork_server_survives_controller_death_destroy_and_worker_restarts(rt_name, procs, tmp_path):
    ctx = procs.ctx
    port = _free_port()
    log = tmp_path / "gunicorn.log"
    env = dict(os.environ, SHMRCU_TABLE_RUNTIME=rt_name,
               PYTHONPATH=os.pathsep.join(p for p in (str(EXAMPLE), os.environ.get("PYTHONPATH")) if p))

    def start_controller():
        started, stop = ctx.Event(), ctx.Event()
        p = procs.start(_serving_procs.controller, rt_name, started, stop)
        assert started.wait(60), "controller did not start"
        return p, stop

    events: dict[str, float] = {}
    c1, _ = start_controller()
    gun = subprocess.Popen([sys.executable, "-m", "gunicorn", "--preload", "-w", str(WORKERS), "-k", "sync",
                            "-b", f"127.0.0.1:{port}", "--chdir", str(EXAMPLE), "serve:app"],
                           env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        master = psutil.Process(gun.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail(f"gunicorn did not start:\n{log.read_text()[-3000:]}")
        with Clients(port) as clients:
            time.sleep(1.0)
            os.kill(c1.pid, signal.SIGKILL)               # the controller dies mid-reload
            c1.join(10)
            events["controller killed"] = time.monotonic()
            time.sleep(0.7)
            events["controller restarted"] = time.monotonic()
            c2, stop2 = start_controller()                # a new one takes over
            time.sleep(1.0)
            stop2.set()
            c2.join(30)
            victim_rt = shmrcu.Runtime.attach(rt_name, controller=True)
            events["destroyed"] = time.monotonic()
            victim_rt.destroy()                           # on purpose
            time.sleep(0.3)
            c3, stop3 = start_controller()                # re-created: a new incarnation
            events["re-created"] = time.monotonic()
            time.sleep(0.7)
            victim = sorted(c.pid for c in master.children())[0]
            os.kill(victim, signal.SIGKILL)               # gunicorn forks a replacement
            events["worker killed"] = time.monotonic()
            time.sleep(1.5)
            live = sorted(c.pid for c in master.children())
        stop3.set()
        c3.join(30)
    finally:
        gun.send_signal(signal.SIGTERM)
        try:
            gun.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(gun.pid, signal.SIGKILL)
            gun.wait(5)
        for n in seg.runtime_segments(rt_name):
            seg.unlink(n)

    problems: list[str] = []
    answers = clients.answers
    # server-side time (CLOCK_MONOTONIC is one clock for all processes) and order
    ok = sorted(((a["t"], a) for t, s, a in answers if s == 200), key=lambda x: (x[1]["pid"], x[1]["seq"]))
    for t, a in ok:
        v = a["version"]
        if any(val != [v, v] for val in a["values"]):
            problems.append(f"answer mixes tables: version {v}, values {a['values']} (pid {a['pid']})")
    bad = [(t, s) for t, s, _ in answers if s != 200]
    window = (events["destroyed"], events["re-created"] + 2.0)
    stray = [(round(t - window[0], 3), s) for t, s in bad if not window[0] <= t <= window[1]]
    if stray:
        problems.append(f"non-200 answers outside the destroy -> re-create window: {stray[:5]}")
    last: dict[tuple[int, int], int] = {}
    for t, a in ok:                                       # per worker, in serving order
        key = (a["pid"], a["incarnation"])
        if a["version"] < last.get(key, 0):
            problems.append(f"worker {a['pid']} went back from version {last[key]} to {a['version']}")
        last[key] = max(last.get(key, 0), a["version"])

    def served(after, before=float("inf")):
        return [a for t, a in ok if after <= t < before]
    frozen = served(events["controller killed"] + 0.3, events["controller restarted"])
    if not frozen or len({a["version"] for a in frozen}) != 1:
        problems.append(f"with the controller dead the last table must be served, unchanged: "
                        f"{sorted({a['version'] for a in frozen})}")
    resumed = served(events["controller restarted"], events["destroyed"])
    if not resumed or max(a["version"] for a in resumed) <= max((a["version"] for a in frozen), default=0):
        problems.append("after the takeover the versions must go on")
    fresh = served(events["re-created"] + 1.5)
    if not fresh:
        problems.append("nothing served after the runtime was re-created")
    newest = max(a["incarnation"] for _, a in ok)
    stale = [a for a in fresh if a["incarnation"] != newest]
    if stale:
        problems.append(f"{len(stale)} answers from the destroyed runtime after the re-creation "
                        f"(e.g. worker {stale[0]['pid']} version {stale[0]['version']})")
    replacement = [p for p in live if p != victim]
    if not {a["pid"] for a in served(events["worker killed"])} & set(replacement):
        problems.append(f"the workers after the restart ({live}) served nothing")
    stray_errors = [e for e in clients.errors
                    if abs(float(e.split()[0]) - events["worker killed"]) > 1.0]
    if stray_errors or len(clients.errors) > 2:
        problems.append(f"transport errors away from the worker SIGKILL: {clients.errors[:3]}")
    if len({a["incarnation"] for _, a in ok}) != 2:
        problems.append(f"answers must come from exactly two incarnations: "
                        f"{sorted({a['incarnation'] for _, a in ok})}")
    print(f"\n{len(answers)} answers ({len(bad)} x 503 in the destroy window), versions "
          f"{min(a['version'] for _, a in ok)}..{max(a['version'] for _, a in ok)}, events "
          f"{ {k: round(v - events['controller killed'], 2) for k, v in events.items()} }")
    assert not problems, "\n".join(problems) + "\n--- gunicorn log ---\n" + log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
