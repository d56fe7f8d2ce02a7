"""The operator tools: the ``shmrcu`` command (``main``: ``python -m shmrcu``, ``python -m shmrcu.cli``),
the operations commands (``commands``, with their data in ``ops`` and their text in ``render``),
``top``, the benchmark suite (``benchsuite``) and the demo (``demo``).

Knows everything below it; nothing in the package imports it.
"""
