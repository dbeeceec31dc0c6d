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


def _sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^\[([\w-]+)\]", line)
        if m:
            current = m.group(1)
            out[current] = ""
        elif current:
            out[current] += line.split(";", 1)[0] + "\n"
    return out


def test_handoff_contexts_match_the_code():
    text = (CONF / "extensions.conf").read_text(encoding="utf-8")
    found = contexts(text)
    for ctx in (names.CONTEXT_QUEUE_EXIT, names.CONTEXT_CALLBACK, names.CONTEXT_CALLBACK_OUT, names.CONTEXT_AGENTS):
        assert ctx in found, ctx
    sections = _sections(text)
    # the exit key, and both callback extensions the scheduler originates into
    assert f"exten => {names.QUEUE_EXIT_CALLBACK_KEY}," in sections[names.CONTEXT_QUEUE_EXIT]
    callback = sections[names.CONTEXT_CALLBACK]
    assert f"exten => {names.EXTEN_CALLBACK_CUSTOMER},1" in callback
    assert f"exten => {names.EXTEN_CALLBACK_AGENT},1" in callback
    for var in (names.VAR_CALLBACK_QUEUE, names.VAR_CALLBACK_PRIO, names.VAR_CALLBACK_NUMBER, names.VAR_CALLBACK):
        assert f"${{{var}}}" in callback, var
    assert f"UserEvent({names.USEREVENT_CALLBACK_DIAL}," in callback
    assert f"@{names.CONTEXT_CALLBACK_OUT}," in callback
    assert names.SOUND_CALLBACK_HELLO in callback
    # caller-influenced values are filtered before they reach an application
    assert "FILTER(0-9+,${IVR_CALLBACK_NUMBER})" in callback
    assert "FILTER(A-Za-z0-9_.-,${IVR_CALLBACK_QUEUE})" in callback
    # each dial is noted in AstDB, so a scheduler whose AMI link dropped can read it back
    out = sections[names.CONTEXT_CALLBACK_OUT]
    note = f"Set(DB({names.ASTDB_CALLBACK}/${{FILTER(A-Za-z0-9-,${{{names.VAR_CALLBACK_DIAL}}})}})="
    assert note + "DIALLING)" in out and note + "${DIALSTATUS})" in out
    assert note + "ANSWER)" in callback
    # nothing in the originate contexts runs programs
    for ctx in (names.CONTEXT_CALLBACK, names.CONTEXT_CALLBACK_OUT):
        assert not re.search(r"System\(|TrySystem\(|SHELL\(|AGI\(", sections[ctx]), ctx


def test_queues_conf_offers_the_exit_key():
    sections = _sections((CONF / "queues.conf").read_text(encoding="utf-8"))
    template = sections["ivr-queue-template"]
    assert re.search(rf"^context = {names.CONTEXT_QUEUE_EXIT}$", template, re.M)
    assert re.search(rf"^periodic-announce = {names.SOUND_QUEUE_CALLBACK_OFFER}$", template, re.M)
    assert names.FALLBACK_QUEUE in sections
    for queue in ("support", "support-en"):  # the demo flow's queues
        assert re.search(r"^member => Local/\w+@" + names.CONTEXT_AGENTS, sections[queue], re.M)


def test_manager_conf_is_least_privilege():
    sections = _sections((CONF / "manager.conf").read_text(encoding="utf-8"))
    general, user = sections["general"], sections["ivr"]
    assert re.search(r"^bindaddr = 127\.0\.0\.1$", general, re.M)
    assert re.search(rf"^channelvars = {names.VAR_SESSION},{names.VAR_CALLBACK}$", general, re.M)
    assert re.search(r"^deny = 0\.0\.0\.0/0\.0\.0\.0$", user, re.M) and "permit = " in user
    write = re.search(r"^write = (.*)$", user, re.M).group(1).replace(" ", "").split(",")
    read = re.search(r"^read = (.*)$", user, re.M).group(1).replace(" ", "").split(",")
    assert sorted(write) == ["call", "originate", "reporting"]  # reporting: DBGet (callbacks after an AMI drop)
    assert sorted(read) == ["agent", "call", "user"]
    assert not {"system", "command", "config", "all"} & set(write + read)
