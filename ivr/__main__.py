"""``python -m ivr``: the ``ivr`` command (``python -m ivr.cli`` would load the
CLI module twice and miss the sub-commands plug-ins register)."""

import sys

from ivr.cli import main

sys.exit(main())
