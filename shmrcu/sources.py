"""Public alias of :mod:`shmrcu.pool.sources` (``shmrcu.sources.Traffic`` keeps working)."""
from .pool.sources import *  # noqa: F401,F403
from .pool.sources import __all__, as_batch, TrafficGenerator  # noqa: F401
