"""Type stubs for the test-only hooks (shmrcu/testing/_hooks.pyx)."""
from typing import Any

from ..maps._maps import MapCore

def abandon_insert(m: MapCore, key: Any) -> int: ...
def abandon_update(m: MapCore, key: Any, value: Any) -> int: ...
