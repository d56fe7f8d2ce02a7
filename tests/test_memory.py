"""Real ENOSPC: a private /dev/shm of 96 MiB (unshare -m + tmpfs), not a mock."""
from __future__ import annotations

import errno
import json
import re
import os
import shutil
import subprocess
import sys

import pytest

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")


def run_in_small_shm(module: str, size: str = "96m") -> subprocess.CompletedProcess:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a mount namespace here (needs root or user namespaces)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HELPERS] + sys.path))
    cmd = f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec {sys.executable} -m {module}"
    return subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True,
                          env=env, timeout=120)


def test_create_map_waits_for_memory_of_retired_maps():
    p = run_in_small_shm("_shm_full")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    # without wait_for_memory: a clear error naming the pending retired bytes
    assert out["first_errno"] == errno.ENOSPC
    held = re.search(r"1 retired map\(s\) holding (\d+) bytes are still pending", out["first"])
    assert held and int(held.group(1)) >= 40 << 20, out["first"]
    assert "wait_for_memory=True" in out["first"]
    # with it: the barrier gives the retired map's memory back and the retry succeeds
    assert out["second"] == 7
