"""``python -m shmrcu.cli ...``: the ``shmrcu`` command."""
import sys

from .main import main

sys.exit(main())
