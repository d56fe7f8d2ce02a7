"""shmrcu: a multi-process shared-memory runtime with RCU.

Worker processes read map-of-maps tables in POSIX shared memory through an
epoch-based RCU core; a controller swaps inner maps atomically and waits for
grace periods.  Start with ``Runtime.create`` / ``Runtime.attach``.
"""
from .core._epoch import Reader
from .maps._maps import ANY, EXIST, NOEXIST
from .errors import (ControllerBusy, CorruptSegment, GracePeriodTimeout, IndexOutOfRange, InheritedAcrossFork,
                     InvalidMapSpec, KeyExists, KeyNotFound, MapClosed, MapExists, MapFull, MapInUse,
                     MapNotFound, NoFreeSlot, NotController, OutOfSharedMemory, OutsideSection, ReaderClosed, ReadOnlyMap,
                     RuntimeDestroyed, RuntimeExists, RuntimeNotFound, SelfDeadlock, ShmrcuError, StalledSlot, TemplateMismatch,
                     UnsupportedOperation)
from .runtime import Runtime
from . import maps
from .pool import WorkerPool

__version__ = "0.1.0"

__all__ = [
    "Runtime", "Reader", "WorkerPool", "maps", "ANY", "NOEXIST", "EXIST",
    "ShmrcuError", "RuntimeExists", "RuntimeNotFound", "CorruptSegment", "NoFreeSlot",
    "ReaderClosed", "GracePeriodTimeout", "StalledSlot", "ControllerBusy", "MapInUse",
    "OutOfSharedMemory", "KeyNotFound", "KeyExists", "MapFull", "IndexOutOfRange", "ReadOnlyMap",
    "MapClosed", "MapNotFound", "MapExists", "InvalidMapSpec", "TemplateMismatch",
    "UnsupportedOperation", "InheritedAcrossFork", "NotController", "SelfDeadlock",
    "OutsideSection", "RuntimeDestroyed",
]
