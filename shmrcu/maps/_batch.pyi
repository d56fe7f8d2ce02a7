"""Type stubs for the batch kernels and MapBatch (shmrcu/maps/_batch.pyx)."""
from typing import Any

from ._maps import MapCore

class MapBatch(MapCore):
    def lookup_batch(self, keys: Any, out: Any = ..., *, threads: int = ..., default: Any = ...,
                     found: Any = ...) -> Any: ...
    def update_batch(self, keys: Any, values: Any, flags: int = ...) -> int: ...
    def delete_batch(self, keys: Any) -> int: ...
