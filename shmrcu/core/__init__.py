"""The shared-memory core: POSIX segments and mappings (``segment``, ``_segment``), the control segment's
binary layout (``_layout.h``/``_layout.pxd``, one source of truth) and atomics (``_atomics.h``), and the
epoch RCU algorithm (``_epoch``: its essay first, then ``ControlBlock`` and ``Reader``).

Knows nothing of maps, the pool or the CLI: it imports only ``shmrcu.errors``.
"""
