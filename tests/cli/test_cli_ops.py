"""The operations CLI (issue 6): list, stat, map show/dump, top, cleanup, bench.

Every command runs as a real subprocess against a live runtime created here
(with a running WorkerPool when the pool is available), and its JSON is
checked against the Python API's own view.
"""
from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

import shmrcu
from shmrcu.cli import commands as cli_ops, ops
from shmrcu.core import segment as seg

import _ops_procs

ROOT = Path(__file__).resolve().parents[2]


CLI = "shmrcu.cli"   # python -m shmrcu.cli: the shmrcu command, operations commands included


def shmrcu_cli(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run ``shmrcu ARGS`` in a fresh interpreter; the one place that names the entry point."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", CLI, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env, **kw)


def ok_json(*args: str):
    r = shmrcu_cli(*args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def user_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """A user error: non-zero, exactly one line on stderr, no traceback."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _segments(name: str) -> list[str]:
    return sorted(n for n in os.listdir(seg.SHM_DIR) if n.startswith(f"{seg.PREFIX}{name}."))


# ---------------------------------------------------------------------------
# a live runtime: maps, an outer slot, and a running pool (if there is one)

@pytest.fixture
def live(rt_name):
    """The runtime with one registered reader (no pool: the CLI runs fast)."""
    yield from _live(rt_name, with_pool=False)


@pytest.fixture
def live_pool(rt_name):
    """The runtime with a running 2-worker pool when WorkerPool is available (both
    cores busy: only for the tests that check workers)."""
    yield from _live(rt_name, with_pool=True)


def _live(rt_name, with_pool):
    rt = shmrcu.Runtime.create(rt_name, max_workers=8)
    pool = None
    try:
        stats = rt.create_map("hash", key="I", value="QQ", max_entries=256, name="stats")
        cfg = rt.create_map("array_of_maps", max_entries=2, inner=stats, name="cfg")
        cfg[0] = stats
        static = rt.create_map("hash", key="I", value="Qq", max_entries=16, name="static")
        static[7] = (70, -7)
        static[8] = (80, -8)
        arr = rt.create_map("array", value="Q", max_entries=4, name="arr")
        arr[2] = 22
        pw = rt.create_map("per_worker_hash", key="I", value="Q", max_entries=8, name="pw")
        WorkerPool = None
        if with_pool:
            try:
                from shmrcu.pool import WorkerPool
                from shmrcu.sources import Traffic
            except ImportError:
                pass
        if WorkerPool is not None:
            pool = WorkerPool(rt, workers=2, program="traffic_accounting",
                              source=Traffic(keys=64, batch=256), args={"cfg": "cfg"})
            pool.start()
            deadline = time.monotonic() + 10
            while pool.applied() == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        else:                              # no pool yet: one registered reader instead
            rt.reader(worker_id=0)
        yield {"rt": rt, "pool": pool, "stats": stats, "cfg": cfg, "static": static, "arr": arr,
               "pw": pw, "name": rt_name}
    finally:
        if pool is not None:
            pool.stop()
        if not rt.closed:
            rt.destroy()


# ---------------------------------------------------------------------------
# --help

def test_every_command_has_help_with_an_example():
    parser = cli_ops.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"list", "stat", "map", "top", "cleanup", "bench"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert "example:" in p.format_help(), name
        assert f"shmrcu {name}" in p.format_help(), name
    msub = next(a for a in sub.choices["map"]._actions if a.dest == "map_command")
    for name in ("show", "dump"):
        assert f"shmrcu map {name}" in msub.choices[name].format_help()
    r = shmrcu_cli("map", "dump", "--help")
    assert r.returncode == 0 and "example:" in r.stdout and "inner_map_id" in r.stdout


# ---------------------------------------------------------------------------
# list / stat / map show / map dump against a live runtime

def test_list_and_stat_match_the_api(live_pool):
    live = live_pool
    rt, name, pool = live["rt"], live["name"], live["pool"]
    listed = {r["name"]: r for r in ok_json("list", "-j")}
    me = listed[name]
    assert me["state"] == "live" and me["controller_alive"] is True
    assert me["controller_pid"] == os.getpid()
    assert me["maps"] == len(rt.maps())
    assert me["segments"] == len(seg.runtime_segments(name))

    s = ok_json("stat", name, "-j")
    assert s["schema"] == ops.SCHEMA and s["runtime"] == name
    assert s["controller"] == {"pid": os.getpid(), "alive": True}
    assert s["max_workers"] == rt.max_workers == 8
    # workers: the same slots and pids as the runtime's own view (and the pool's)
    api = {r["slot"]: r for r in rt.readers_info()}
    assert {w["slot"]: w["pid"] for w in s["workers"]} == {k: r["pid"] for k, r in api.items()}
    if pool is not None:
        assert sorted(w["pid"] for w in s["workers"]) == sorted(pool.pids())
        # the box is shared (2 cores): a worker may miss the 0.2 s window, not both
        assert sum(w["events_per_s"] for w in s["workers"]) > 0
        for w in s["workers"]:
            assert w["state"] == "online" and w["events_per_s"] >= 0 and w["events"] > 0
            assert w["cpu"] is not None and w["cpu"] in w["affinity"]
            assert w["worker_id"] in (0, 1) and w["restarts"] == 0
    # maps: every map of rt.maps(), with sizes from /dev/shm and the outer reference
    maps = {m["id"]: m for m in s["maps"]}
    assert {m["id"]: (m["name"], m["kind"], m["state"], m["max_entries"]) for m in rt.maps()} == \
        {i: (m["name"], m["kind"], m["state"], m["max_entries"]) for i, m in maps.items()}
    stats, static = maps[live["stats"].id], maps[live["static"].id]
    assert stats["referenced_by"] == [{"outer_id": live["cfg"].id, "outer_name": "cfg", "key": 0}]
    assert maps[live["cfg"].id]["referenced_by"] == []
    assert (static["key"], static["key_size"], static["value"], static["value_size"]) == ("I", 4, "Qq", 16)
    assert static["entries"] == 2 and maps[live["arr"].id]["entries"] == 4
    assert static["bytes"] == os.stat(f"{seg.SHM_DIR}/{seg.PREFIX}{name}.map.{live['static'].id}").st_size
    if pool is not None:
        assert stats["entries"] == len(live["stats"]) == 64      # every uid seen
    g = s["grace_periods"]
    assert g["count"] >= 1 and g["p50_us"] is not None     # cfg[0] = stats waited for one
    assert g["pending_retired"] == 0 and g["pending_retired_bytes"] == 0
    assert s["memory"]["bytes"] == sum(os.stat(f"{seg.SHM_DIR}{n}").st_size
                                       for n in seg.runtime_segments(name))

    pretty = shmrcu_cli("stat", name, "-p", "--sample", "0")
    assert pretty.returncode == 0 and pretty.stdout.startswith("{\n")
    assert set(json.loads(pretty.stdout)) == set(s)
    text = shmrcu_cli("stat", name)
    assert text.returncode == 0, text.stderr
    for needle in ("grace periods:", "EVENTS/S", "REFERENCED-BY", "cfg[0]", "static", f"runtime {name}"):
        assert needle in text.stdout


def test_stat_shows_retired_maps_until_freed(runtime):
    rt = runtime
    keep = rt.create_map("hash", key="I", value="QQ", max_entries=64, name="keep")
    old = rt.create_map("hash", key="I", value="QQ", max_entries=64, name="old")
    r = rt.reader()
    r.online()                                   # holds the grace period: old stays retired
    try:
        rt.retire(old)
        s = ok_json("stat", rt.name, "-j", "--sample", "0")
        g = s["grace_periods"]
        size = os.stat(f"{seg.SHM_DIR}{seg.shm_name(rt.name, f'map.{old.id}')}").st_size
        assert (g["pending_retired"], g["pending_retired_bytes"], g["pending_retired_ids"]) == (1, size, [old.id])
        states = {m["id"]: m["state"] for m in s["maps"]}
        assert states == {keep.id: "live", old.id: "retired"}
        assert [(w["state"], w["epoch_lag"] > 0) for w in s["workers"]] == [("online", True)]
    finally:
        r.offline()
    rt.barrier(timeout=5)
    s = ops.stat(rt.name, sample_s=0)
    assert s["grace_periods"]["pending_retired"] == 0
    assert [m["id"] for m in s["maps"]] == [keep.id]


def test_map_show_and_dump(live):
    rt, name = live["rt"], live["name"]
    shown = ok_json("map", "show", name, "-j")
    assert [m["id"] for m in shown] == [m["id"] for m in rt.maps()]
    text = shmrcu_cli("map", "show", name)
    assert text.returncode == 0
    assert f"{live['static'].id}: hash  name static  key I (4B)  value Qq (16B)  max_entries 16" in text.stdout
    assert "referenced by cfg[0]" in text.stdout

    d = ok_json("map", "dump", name, "static", "-j")
    assert d["count"] == 2 and d["map"]["id"] == live["static"].id
    assert sorted((e["key"], tuple(e["value"])) for e in d["entries"]) == sorted(live["static"].items())
    t = shmrcu_cli("map", "dump", name, "static")
    assert t.returncode == 0
    assert "key: 7  value: (70, -7)" in t.stdout and t.stdout.rstrip().endswith("Found 2 elements")

    outer = ok_json("map", "dump", name, str(live["cfg"].id), "-j")          # by id
    assert outer["entries"] == [{"key": 0, "inner_map_id": live["stats"].id}]
    t = shmrcu_cli("map", "dump", name, "cfg")
    assert f"key: 0  inner_map_id: {live['stats'].id}" in t.stdout and "Found 1 element" in t.stdout

    arr = ok_json("map", "dump", name, "arr", "-j")
    assert [(e["key"], e["value"]) for e in arr["entries"]] == live["arr"].items()
    pw = ok_json("map", "dump", name, "pw", "-j")
    assert pw["count"] == len(live["pw"]) == 0


def test_user_errors_are_one_line(live, capsys):
    name = live["name"]
    # real processes: the exit status and stderr as a shell sees them
    user_error(shmrcu_cli("stat", "no-such-runtime-xyz"), "not found", "no-such-runtime-xyz")
    user_error(shmrcu_cli("map", "dump", name, "nope"), "no map 'nope'")
    assert shmrcu_cli("stat").returncode == 2                      # argparse usage error
    # the same handlers in-process (faster), every command
    for argv, needle in ((["stat", "bad/name"], "invalid runtime name"),
                         (["map", "dump", name, "999"], "no map 999"),
                         (["map", "show", "missing-rt-xyz"], "not found"),
                         (["top", "missing-rt-xyz"], "not found"),
                         (["cleanup", "missing-rt-xyz"], "not found"),
                         (["cleanup", "bad/name"], "invalid runtime name"),
                         (["cleanup", name, "--prefix", "x"], "not both")):
        assert cli_ops.main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "Traceback" not in err, (argv, err)


def test_permission_denied_is_one_line(live, monkeypatch, capsys):
    """A segment we may not open (tests run as root, who may open anything: simulate it)."""
    def denied(name, writable=True):
        raise PermissionError(f"no permission to open shared-memory segment {name}")
    monkeypatch.setattr(seg.Segment, "open", staticmethod(denied))
    for argv in (["stat", live["name"]], ["map", "show", live["name"]], ["top", live["name"]]):
        assert cli_ops.main(argv) == 13
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "permission denied" in err and "Traceback" not in err
    listed = {r["name"]: r for r in ops.list_runtimes()}
    assert listed[live["name"]]["state"] == "inaccessible"
    with pytest.raises(ops.OpsError, match="permission denied"):
        ops.cleanup(live["name"])


def test_corrupt_runtime(rt_name):
    path = f"{seg.SHM_DIR}/{seg.PREFIX}{rt_name}.ctl"
    with open(path, "wb") as f:
        f.write(b"definitely not a control block" * 100)
    os.chmod(path, 0o600)
    try:
        user_error(shmrcu_cli("stat", rt_name), f"runtime {rt_name!r}")
        listed = {r["name"]: r for r in ok_json("list", "-j")}
        assert listed[rt_name]["state"] == "corrupt"
        # nobody holds it: cleanup removes it
        r = shmrcu_cli("cleanup", rt_name)
        assert r.returncode == 0, r.stderr
        assert "removed runtime" in r.stdout and _segments(rt_name) == []
    finally:
        seg.unlink(f"/{seg.PREFIX}{rt_name}.ctl")


# ---------------------------------------------------------------------------
# cleanup

def test_cleanup_after_sigkilled_controller(rt_name, procs):
    ready = procs.ctx.Event()
    child = procs.start(_ops_procs.controller_with_maps, rt_name, ready)
    assert ready.wait(30)
    before = _segments(rt_name)
    assert len(before) >= 5                      # ctl, dir, 3 maps
    live_state = {r["name"]: r for r in ops.list_runtimes()}[rt_name]
    assert live_state["state"] == "live" and live_state["controller_pid"] == child.pid
    user_error(shmrcu_cli("cleanup", rt_name), "refusing", "controller alive", "--force")
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)

    listed = {r["name"]: r for r in ok_json("list", "-j")}
    assert listed[rt_name]["state"] == "dead" and listed[rt_name]["controller_alive"] is False
    text = shmrcu_cli("list")
    assert rt_name in text.stdout and "dead" in text.stdout

    res = ok_json("cleanup", "--prefix", rt_name, "-j")
    removed = {r["runtime"]: r for r in res["removed"]}
    assert set(removed) == {rt_name}
    assert {s["segment"] for s in removed[rt_name]["segments"]} == {"/" + n for n in before}
    assert _segments(rt_name) == []
    r = shmrcu_cli("cleanup", "--prefix", rt_name)
    assert r.returncode == 0 and "nothing to clean up" in r.stdout


def test_cleanup_by_name_and_force(rt_name, procs):
    ready = procs.ctx.Event()
    child = procs.start(_ops_procs.controller_with_maps, rt_name, ready, False)
    assert ready.wait(30)
    n = len(_segments(rt_name))
    user_error(shmrcu_cli("cleanup", "--force"), "needs a runtime NAME")
    r = shmrcu_cli("cleanup", rt_name, "--force")             # live, but forced
    assert r.returncode == 0, r.stderr
    assert f"removed runtime {rt_name} (forced (controller alive" in r.stdout
    assert r.stdout.count(f"{seg.SHM_DIR}/{seg.PREFIX}{rt_name}.") == n
    assert _segments(rt_name) == []
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)


# ---------------------------------------------------------------------------
# top in a pseudo-terminal

def _read_until(fd: int, deadline: float, needle: bytes | None = None, count: int = 1) -> bytes:
    buf = b""
    while time.monotonic() < deadline:
        if needle is not None and buf.count(needle) >= count:
            break
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def _top(name: str):
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="160", LINES="50")
    p = subprocess.Popen([sys.executable, "-m", CLI, "top", name, "--interval", "0.2"],
                         stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, close_fds=True)
    return p, master, slave


def test_top_in_a_pty_quits_on_q(live_pool):
    live = live_pool
    name = live["name"]
    p, master, slave = _top(name)
    before = termios.tcgetattr(slave)
    try:
        out = _read_until(master, time.monotonic() + 20, b"q: quit", count=3)
        assert out.count(b"q: quit") >= 3, out[-2000:]          # a few refreshes
        assert termios.tcgetattr(slave) != before                 # cbreak while running
        os.write(master, b"q")
        assert p.wait(10) == 0
        out += _read_until(master, time.monotonic() + 1)
        assert termios.tcgetattr(slave) == before                 # terminal restored
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
        os.close(slave)
    text = out.decode(errors="replace")
    assert "\x1b[?1049h" in text and text.rstrip().endswith("\x1b[?25h\x1b[?1049l")
    assert f"runtime {name}" in text and "SLOT" in text and "stats" in text
    if live["pool"] is not None:
        assert "2 online" in text


def test_top_exits_cleanly_on_sigint(live):
    p, master, slave = _top(live["name"])
    try:
        out = _read_until(master, time.monotonic() + 20, b"q: quit")
        assert b"q: quit" in out
        p.send_signal(signal.SIGINT)
        assert p.wait(10) == 0
        out += _read_until(master, time.monotonic() + 1)
        assert out.rstrip().endswith(b"\x1b[?1049l") and b"Traceback" not in out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
        os.close(slave)
    # not a terminal: frames are plain text; -n stops after N refreshes
    r = shmrcu_cli("top", live["name"], "-n", "2", "--interval", "0.1")
    assert r.returncode == 0 and r.stdout.count("q: quit") == 2 and "\x1b[" not in r.stdout


def test_top_notices_a_vanished_runtime(rt_name):
    rt = shmrcu.Runtime.create(rt_name, max_workers=2)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", CLI, "top", rt_name, "--interval", "0.1"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=ROOT, env=env)
    try:
        line = p.stdout.readline()                 # the first frame is out
        assert b"shmrcu top" in line
        rt.destroy()
        assert p.wait(10) == 1
        err = p.stderr.read().decode()
        assert err.count("\n") == 1 and "is gone" in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
        if not rt.closed:
            rt.destroy()


# ---------------------------------------------------------------------------
# bench

def test_bench_quick_json(tmp_path):
    out = tmp_path / "bench.json"
    t0 = time.monotonic()
    r = shmrcu_cli("bench", "--quick", "--json", str(out), timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert elapsed < 30, f"bench --quick took {elapsed:.1f}s"
    res = json.loads(out.read_text())
    rows = {row["id"]: row for g in res["groups"] for row in g["rows"]}
    for rid in ("shmrcu_call", "shmrcu_batch", "shm_lock", "manager", "acct_shm_lock",
                "gp_shmrcu_sections_p50", "gp_shmrcu_qsbr_p99", "gp_kernel_p50"):
        assert rows[rid]["value"] and rows[rid]["value"] > 0, rows[rid]
    assert rows["shm_lock"]["baseline"] and rows["shmrcu_batch"]["ratio"] > 1
    assert rows["gp_shmrcu_qsbr_p50"]["ratio"] > 1        # a user-space grace period beats the kernel's
    assert rows["gp_shmrcu_qsbr_p99"]["ratio_to"] == "gp_kernel_p99"
    for label in ("shared_memory + Lock", "Manager().dict()", "membarrier(GLOBAL)", "baseline", "UltraDict"):
        assert label in r.stdout
    assert not [n for n in os.listdir(seg.SHM_DIR) if n.startswith(f"{seg.PREFIX}bench-")]


def test_bench_plot_without_matplotlib_is_one_line(tmp_path):
    try:
        import matplotlib  # noqa: F401
        pytest.skip("matplotlib is installed")
    except ImportError:
        pass
    r = shmrcu_cli("bench", "--quick", "--plot", str(tmp_path / "x.png"))
    user_error(r, "matplotlib")


def test_map_dump_outer_slot_and_display_formats(runtime):
    """`map dump RT OUTER[KEY]` dumps the inner map in that slot (resolved and read in one
    section); --format / --value-format show keys and values as ipv4, ipv6, hex or int."""
    name = runtime.name
    tmpl = runtime.create_map("hash", key="!I", value="4sQ", max_entries=8, name="t")
    outer = runtime.create_map("array_of_maps", max_entries=2, inner=tmpl, name="blocklist")
    outer.replace(1, {0x0a000001: (b"\xc0\xa8\x00\x01", 3)})
    d = ok_json("map", "dump", name, "blocklist[1]", "--format", "ipv4", "-j")
    assert d["map"]["id"] == outer[1].id and d["map"]["version"] == 1
    assert d["count"] == 1 and d["entries"][0]["key"] == "10.0.0.1"
    v = ok_json("map", "dump", name, "blocklist[1]", "--value-format", "hex", "-j")
    assert v["entries"] == [{"key": 0x0a000001, "value": ["c0a80001", "0x3"]}]
    t = shmrcu_cli("map", "dump", name, "blocklist[1]", "--format", "ipv4", "--value-format", "ipv4")
    assert t.returncode == 0 and "key: '10.0.0.1'" in t.stdout and "192.168.0.1" in t.stdout
    h = ok_json("map", "dump", name, "blocklist[0x1]", "--format", "hex", "-j")
    assert h["entries"][0]["key"] == "0xa000001"
    user_error(shmrcu_cli("map", "dump", name, "blocklist[0]"), "holds no map")
    user_error(shmrcu_cli("map", "dump", name, "t[0]"), "not an outer map")
    user_error(shmrcu_cli("map", "dump", name, "blocklist[x]"), "must be an integer")
