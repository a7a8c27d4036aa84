"""``python -m lowbit <command>``: the same as the ``lowbit`` command (see lowbit.cli)."""
import sys

from .apps.cli import main

sys.exit(main())
