"""``python -m steerling_lite ...``: the same as the ``steerling-lite`` command."""

import sys

from .cli import main

sys.exit(main())
