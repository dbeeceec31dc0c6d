"""The shipped dialplan uses exactly the names the code uses (ivr/names.py)."""

from __future__ import annotations

import re
from pathlib import Path

from ivr import names

CONF = Path(__file__).resolve().parents[1] / "asterisk_conf"


def contexts(text: str) -> set[str]:
    return set(re.findall(r"^\[([\w-]+)\]", text, re.M))


def test_extensions_conf_contexts_and_variables():
    text = (CONF / "extensions.conf").read_text(encoding="utf-8")
    found = contexts(text)
    for ctx in (names.CONTEXT_SERVICE, names.CONTEXT_FALLBACK, names.CONTEXT_QUEUE):
        assert ctx in found, ctx
    # every Goto/GotoIf target context exists
    for target in re.findall(r"\?([\w-]+),s,1\)", text) + re.findall(r"Goto\(([\w-]+),", text):
        assert target in found, target
    assert f"${{{names.VAR_RESULT}}}" in text
    assert f"${{{names.VAR_SESSION}}}" in text
    assert f"agi://127.0.0.1:{names.DEFAULT_AGI_PORT}" in text
    assert f"AGI({names.AGI_SCRIPT}," in text
    assert f"IVR_FALLBACK_QUEUE={names.FALLBACK_QUEUE}" in text
    assert names.VAR_QUEUE_PRIO in text
    # a live call moved to a queue from the visual IVR reads these
    assert f"${{{names.VAR_QUEUE}}}" in text and f"${{{names.VAR_PRIO}}}" in text


def test_agi_script_exists_under_its_name():
    script = Path(__file__).resolve().parents[1] / "agi_scripts" / names.AGI_SCRIPT
    assert script.is_file()
    assert script.stat().st_mode & 0o111, "agi-bin scripts must be executable"
    assert script.read_text().startswith("#!/usr/bin/env python3")


def test_every_result_the_server_sets_is_handled():
    text = (CONF / "extensions.conf").read_text(encoding="utf-8")
    for result in ("error", "noflow"):
        assert f'"${{{names.VAR_RESULT}}}" = "{result}"' in text
