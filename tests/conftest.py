"""Shared fixtures: unique runtime names, and proof that no test leaks segments.

The helpers that child processes import (``_procs``, ``_threads``, ...) live once, in ``tests/helpers/``:
it goes on ``sys.path`` here (so tests in every folder, and 'spawn' children, which inherit
``sys.path``, import them by name) and on ``PYTHONPATH`` (for ``subprocess`` children).
"""
from __future__ import annotations

import itertools
import os
import sys

import pytest

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
if HELPERS not in sys.path:
    sys.path.insert(0, HELPERS)
if HELPERS not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join([HELPERS] + ([os.environ["PYTHONPATH"]]
                                                            if os.environ.get("PYTHONPATH") else []))

from shmrcu.core import segment as seg

from _spawn import Procs  # noqa: E402  (helpers are on sys.path from here on)

_counter = itertools.count()
TEST_PREFIX = f"pt{os.getpid()}-"


def _segments(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir(seg.SHM_DIR) if n.startswith(seg.PREFIX + prefix))


@pytest.fixture
def rt_name(request):
    """A runtime name unique to this test; fails the test if it leaves segments."""
    name = f"{TEST_PREFIX}{next(_counter)}"
    yield name
    leaked = _segments(name + ".")
    for n in leaked:
        seg.unlink("/" + n)
    if leaked and not (hasattr(request.node, "rep_call") and request.node.rep_call.failed):
        pytest.fail(f"test left shared-memory segments behind: {leaked}")


@pytest.fixture
def runtime(rt_name):
    import shmrcu
    rt = shmrcu.Runtime.create(rt_name, max_workers=8)
    try:
        yield rt
    finally:
        if not rt.closed:
            rt.destroy()
        else:
            for n in seg.runtime_segments(rt_name):
                seg.unlink(n)


@pytest.fixture
def procs():
    helper = Procs()
    try:
        yield helper
    finally:
        helper.reap()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_sessionfinish(session, exitstatus):
    left = _segments(TEST_PREFIX)
    for n in left:
        seg.unlink("/" + n)
    if left:
        print(f"\nshmrcu tests leaked segments: {left}")
        session.exitstatus = 1
