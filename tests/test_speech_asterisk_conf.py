"""The shipped Asterisk configuration covers speech: modules and the EAGI context."""

from __future__ import annotations

import re
from pathlib import Path

from ivr import names

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "asterisk_conf"


def test_modules_conf_loads_what_speech_needs():
    text = (CONF / "modules.conf").read_text(encoding="utf-8")
    loaded = re.findall(r"^load\s*=>\s*(\S+)", text, re.M)
    assert set(names.SPEECH_MODULES) <= set(loaded)
    assert "[modules]" in text


def test_eagi_context_runs_the_eagi_script():
    text = (CONF / "extensions.conf").read_text(encoding="utf-8")
    block = text.split(f"[{names.CONTEXT_SERVICE_EAGI}]", 1)[1].split("\n[", 1)[0]
    assert f"EAGI({names.EAGI_SCRIPT}," in block
    assert f'"${{{names.VAR_RESULT}}}" = "error"' in block and f"?{names.CONTEXT_FALLBACK},s,1)" in block
    script = ROOT / "agi_scripts" / names.EAGI_SCRIPT
    assert script.is_file() and script.stat().st_mode & 0o111
    assert script.read_text().startswith("#!/usr/bin/env python3")


def test_asterisk_doc_has_a_speech_section_naming_the_modules():
    doc = (ROOT / "docs" / "asterisk.md").read_text(encoding="utf-8")
    section = doc.split("## Speech", 1)[1]
    for module in names.SPEECH_MODULES:
        assert module in section
    assert names.CONTEXT_SERVICE_EAGI in section and "AudioSocket" in section
