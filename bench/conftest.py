"""Benchmarks: run with `pytest bench --benchmark-enable` (never part of the test run)."""
import itertools
import os
import sys

import pytest

from shmrcu.core import segment as seg

sys.path.insert(0, os.path.dirname(__file__))
_counter = itertools.count()


@pytest.fixture
def rt_name():
    name = f"bench{os.getpid()}-{next(_counter)}"
    yield name
    for n in seg.runtime_segments(name):
        seg.unlink(n)
