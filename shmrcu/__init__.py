"""shmrcu: a multi-process shared-memory runtime with RCU.

Worker processes read map-of-maps tables in POSIX shared memory through an
epoch-based RCU core; a controller swaps inner maps atomically and waits for
grace periods.  Start with ``Runtime.create`` / ``Runtime.attach``.
"""
from .errors import (ControllerBusy, CorruptSegment, GracePeriodTimeout, MapInUse, NoFreeSlot,
                     OutOfSharedMemory, ReaderClosed, RuntimeExists, RuntimeNotFound, ShmrcuError,
                     StalledSlot)
from .runtime import Runtime
from ._epoch import Reader

__version__ = "0.1.0"

__all__ = [
    "Runtime", "Reader",
    "ShmrcuError", "RuntimeExists", "RuntimeNotFound", "CorruptSegment", "NoFreeSlot",
    "ReaderClosed", "GracePeriodTimeout", "StalledSlot", "ControllerBusy", "MapInUse",
    "OutOfSharedMemory",
]
