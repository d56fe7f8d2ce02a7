"""The worker pool: ``WorkerPool`` (``pool``), the worker process loop (``worker``), event sources
(``sources``, the ``_traffic`` generator) and the built-in programs (``programs``).

Knows the runtime and maps; nothing below it imports it.
"""
from .pool import WorkerPool

__all__ = ["WorkerPool"]
