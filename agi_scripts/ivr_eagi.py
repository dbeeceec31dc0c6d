#!/usr/bin/env python3
"""Process-AGI entry point with speech (EAGI): copy (or link) into Asterisk's agi-bin.

    exten => s,n,EAGI(ivr_eagi.py,demo_hotline,lang=zh)

Runs the same flows as the FastAGI server; questions with speech listen to the
caller's audio, which EAGI() gives the script on file descriptor 3. Settings
come from ``IVR_CONFIG`` (a TOML file) and ``IVR_*`` environment variables
(``asr_models`` names the Vosk models); see docs/speech.md and docs/asterisk.md.
"""

import sys

from ivr.process_eagi import main

if __name__ == "__main__":
    sys.exit(main())
