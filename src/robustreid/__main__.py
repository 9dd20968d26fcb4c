"""``python -m robustreid`` is the ``robustreid`` command."""

import sys

from robustreid.cli import main

sys.exit(main())
