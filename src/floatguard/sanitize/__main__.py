"""``python -m floatguard.sanitize [options] SCRIPT [ARGS...]``: the same as ``floatguard run``."""

import sys

from .cli import main

sys.exit(main())
