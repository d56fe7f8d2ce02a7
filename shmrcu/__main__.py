"""``python -m shmrcu ...``: the ``shmrcu`` command."""
import sys

from .cli.main import main

sys.exit(main())
