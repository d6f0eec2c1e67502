"""``python -m tui [--model DIR]``: the same as ``steerling-lite tui``."""

import sys

from tui.command import main

sys.exit(main())
