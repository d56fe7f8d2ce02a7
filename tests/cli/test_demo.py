"""`shmrcu demo` as users run it: a subprocess, JSON out, no segments left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import shmrcu
from shmrcu.cli import main as cli
from shmrcu.core import segment as seg

# the subprocess imports the same shmrcu this test process imported (built in place or installed)
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(shmrcu.__file__)))
KEYS = {"workers", "duration_s", "events", "events_per_s", "applied", "counted", "exact",
        "grace_periods", "gp_p50_us", "gp_p99_us", "restarts"}


def _demo(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "shmrcu.cli", "demo", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def _leftovers(pid: int) -> list[str]:
    return seg.runtime_segments(f"demo-{pid}")


def _finish(p: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"demo did not finish in {timeout}s; stderr:\n{err}")
    return p.returncode, out, err


def _worker_pids(name: str, n: int, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with shmrcu.Runtime.attach(name) as rt:
                pids = [r["pid"] for r in rt.readers_info() if r["worker_id"] >= 0]
            if len(pids) >= n:
                return pids
        except shmrcu.RuntimeNotFound:
            pass
        time.sleep(0.05)
    pytest.fail(f"runtime {name} never had {n} workers")


def test_demo_json_is_exact_and_leaves_nothing():
    p = _demo("--duration", "2", "--json")
    rc, out, err = _finish(p)
    assert rc == 0, err
    s = json.loads(out)
    assert KEYS <= s.keys()
    assert s["exact"] is True and s["counted"] == s["applied"] == s["events"] > 0
    assert s["dropped"] == 0, "max_entries == keys: every event has a slot"
    assert s["workers"] == 2 and s["restarts"] == 0
    assert s["grace_periods"] >= s["swaps"] > 5
    assert s["gp_p50_us"] is not None and s["gp_p99_us"] >= s["gp_p50_us"]
    assert _leftovers(p.pid) == []


def test_demo_survives_sigkill_of_a_worker_and_stays_exact():
    p = _demo("--duration", "4", "--json")
    try:
        pids = _worker_pids(f"demo-{p.pid}", 2)
        time.sleep(0.5)
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(1.0)
        os.kill(_worker_pids(f"demo-{p.pid}", 2)[-1], signal.SIGKILL)
    finally:
        rc, out, err = _finish(p)
    assert rc == 0, err
    s = json.loads(out)
    assert s["restarts"] >= 2
    assert s["exact"] is True and s["counted"] == s["applied"] > 0
    assert _leftovers(p.pid) == []


def test_demo_shared_maps_is_exact():
    p = _demo("--duration", "1", "--json", "--maps", "shared", "--workers", "1")
    rc, out, err = _finish(p)
    assert rc == 0, err
    assert json.loads(out)["exact"] is True


def test_demo_ctrl_c_stops_cleanly_with_summary():
    p = _demo("--duration", "30")
    _worker_pids(f"demo-{p.pid}", 2)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    rc, out, err = _finish(p, timeout=20)
    assert rc == 0, err
    assert "(interrupted)" in out and "exact: counted == applied" in out
    assert _leftovers(p.pid) == []


def test_demo_rejects_bad_options(capsys):
    assert cli.main(["demo", "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_cli_has_a_command_registry():
    assert "demo" in cli.COMMANDS
    with pytest.raises(SystemExit):
        cli.main([])
