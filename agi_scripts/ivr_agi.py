#!/usr/bin/env python3
"""Process-AGI entry point: copy (or link) into Asterisk's agi-bin.

    exten => s,n,AGI(ivr_agi.py,demo_hotline,lang=zh)

Runs the same flows, engine and trail as the FastAGI server. Settings come
from ``IVR_CONFIG`` (a TOML file) and ``IVR_*`` environment variables; see
docs/asterisk.md. The Python that runs it must have this project installed.
"""

import sys

from ivr.process_agi import main

if __name__ == "__main__":
    sys.exit(main())
