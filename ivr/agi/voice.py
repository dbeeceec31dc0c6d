"""The voice face: engine turns played and collected over one FastAGI channel."""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

from ivr import names
from ivr.agi.channel import AgiChannel
from ivr.agi.protocol import AgiError, AgiFileMissing, AgiHangup
from ivr.engine import Expect, Input, PromptOut
from ivr.session import CallerGone, SessionInfo

log = logging.getLogger("ivr.voice")

DIGIT_KEYS = "0123456789*#"

# Given a prompt, the name STREAM FILE plays (relative to Asterisk's sounds dir
# or absolute, without extension). Prompt audio (rendered ahead of time or on a
# cache miss) plugs in here.
PromptFiles = Callable[[PromptOut], Awaitable[str]]
MissingPrompt = Callable[[PromptOut], Awaitable[str | None]]


def prompt_file_name(prompt: PromptOut, prefix: str = names.SOUNDS_SUBDIR) -> str:
    """``ivr/zh-CN/main_menu``; text with variables gets a name per rendered text."""
    name = prompt.id
    if prompt.dynamic:
        name = f"{prompt.id}-{hashlib.sha256(prompt.text.encode()).hexdigest()[:12]}"
    return f"{prefix}/{prompt.lang}/{name}"


def call_context(env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """(flow name, engine context) from the AGI environment.

    ``agi://host:port/<flow>?k=v``: the script path picks the flow, query
    arguments and ``agi_*`` values become session variables.
    """
    script = env.get("agi_network_script", "")
    flow_name, _, query = script.partition("?")
    flow_name = flow_name.strip("/")
    args = dict(parse_qsl(query, keep_blank_values=True))

    def val(key: str) -> str | None:
        v = env.get(key, "")
        return None if v in ("", "unknown") else v

    caller = val("agi_callerid")
    dialed = val("agi_dnid") or val("agi_extension")
    variables: dict[str, Any] = {f"arg_{k}": v for k, v in args.items()}
    variables.update({
        "caller_name": val("agi_calleridname"),
        "uniqueid": val("agi_uniqueid"),
        "channel_name": val("agi_channel"),
        "context": val("agi_context"),
    })
    return flow_name, {
        "caller": caller,
        "dialed": dialed,
        "uniqueid": val("agi_uniqueid"),
        "lang": args.get("lang") or None,
        "channel": "voice",
        "vars": {k: v for k, v in variables.items() if v is not None},
    }


class VoiceFace:
    """Plays prompts with STREAM FILE (barge-in by escape digits), collects keys
    with WAIT FOR DIGIT / GET DATA, transfers with Queue or Dial."""

    channel = "voice"

    def __init__(self, chan: AgiChannel, *, sounds_prefix: str = names.SOUNDS_SUBDIR,
                 prompt_files: PromptFiles | None = None, on_missing: MissingPrompt | None = None):
        self.chan = chan
        self.sounds_prefix = sounds_prefix
        self._prompt_files = prompt_files
        self._on_missing = on_missing
        self.moved = False  # set when the server itself moved the call (AMI Redirect)

    # ---- prompts
    async def _file(self, prompt: PromptOut) -> str:
        if self._prompt_files:
            return await self._prompt_files(prompt)
        return prompt_file_name(prompt, self.sounds_prefix)

    async def _play(self, prompt: PromptOut, escape: str) -> str | None:
        name = await self._file(prompt)
        try:
            digit, _ = await self.chan.stream_file(name, escape if prompt.barge_in else "")
            return digit
        except AgiFileMissing:
            fallback = await self._on_missing(prompt) if self._on_missing else None
            if fallback:
                try:
                    digit, _ = await self.chan.stream_file(fallback, escape if prompt.barge_in else "")
                    return digit
                except AgiFileMissing:
                    pass
            log.warning("prompt %s (%s) has no audio file %s", prompt.id, prompt.lang, name)
            return None

    def _gone(self, exc: AgiHangup) -> CallerGone:
        return CallerGone("moved" if self.moved else "caller")

    async def present(self, prompts: list[PromptOut]) -> None:
        try:
            for p in prompts:
                await self._play(p, "")
        except AgiHangup as exc:
            raise self._gone(exc) from None

    async def collect(self, prompts: list[PromptOut], expect: Expect) -> Input:
        try:
            if expect.kind == "choice":
                return await self._collect_choice(prompts, expect)
            return await self._collect_digits(prompts, expect)
        except AgiHangup as exc:
            raise self._gone(exc) from None

    async def _collect_choice(self, prompts: list[PromptOut], expect: Expect) -> Input:
        escape = expect.keys
        for p in prompts:
            key = await self._play(p, escape)
            if key:
                return Input.dtmf(key)
        key = await self.chan.wait_for_digit(int(expect.timeout * 1000))
        return Input.dtmf(key) if key else Input.noinput()

    async def _collect_digits(self, prompts: list[PromptOut], expect: Expect) -> Input:
        timeout_ms = int(expect.timeout * 1000)
        first = ""
        last: PromptOut | None = None
        for i, p in enumerate(prompts):
            if i == len(prompts) - 1 and p.barge_in:
                last = p
                break
            key = await self._play(p, DIGIT_KEYS)
            if key:
                first = key
                break
        if first == expect.terminator:
            return Input.dtmf(first)  # '#' alone: the flow-level key, if any
        if first:
            rest, _ = await self.chan.get_data(names.SILENCE_FILE, timeout_ms, expect.max_length + 1 - len(first))
            return Input.dtmf(first + rest)
        file = await self._file(last) if last else names.SILENCE_FILE
        try:
            # one more than the longest entry, so a '#' after a full entry ends
            # GET DATA instead of staying queued to interrupt the next prompt
            digits, timed_out = await self.chan.get_data(file, timeout_ms, expect.max_length + 1)
        except AgiFileMissing:  # pragma: no cover - GET DATA does not report missing files
            digits, timed_out = "", True
        if digits == "" and not timed_out:
            return Input.dtmf(expect.terminator)
        if digits == "":
            return Input.noinput()
        return Input.dtmf(digits)

    # ---- transfer
    #: Set by the server when agent handoff is on (ivr.handoff.core.Handoff):
    #: queue-wait announcements from AMI QueueStatus and who-answered tracking.
    handoff: Any = None

    async def transfer(self, params: dict[str, Any], session: SessionInfo) -> dict[str, Any]:
        chan = self.chan
        inherit = names.INHERIT
        handoff = self.handoff
        if handoff is not None:
            handoff.transfer_started(session.id, params)
        try:
            await chan.set_variable(inherit + names.VAR_SESSION, session.id)
            await chan.set_variable(inherit + names.VAR_SUMMARY, str(params.get("summary") or "")[:500])
            await chan.set_variable(inherit + names.VAR_LANGUAGE, str(params.get("language") or ""))
            await chan.set_variable(inherit + names.VAR_REASON, str(params.get("reason") or "")[:200])
            if params.get("queue"):
                return await self._queue(params, session)
            if not params.get("extension"):
                raise ValueError("transfer without a queue or an extension")
            target = _dialplan_word(params["extension"], allow="/@-_.")
            result = await chan.exec("Dial", f"{target},{int(params.get('timeout') or 60)}")
            if result == -1 or chan.hung_up:
                return {"status": "ended", "extension": target}
            dialstatus = await chan.get_variable(names.VAR_DIALSTATUS) or ""
            return {"status": "continue" if dialstatus == "ANSWER" else "failed", "dialstatus": dialstatus}
        except AgiHangup as exc:
            raise self._gone(exc) from None
        finally:
            if handoff is not None:
                handoff.transfer_ended(session.id)

    async def _queue(self, params: dict[str, Any], session: SessionInfo) -> dict[str, Any]:
        """Queue() with option ``c``; before it, where the caller stands (AMI QueueStatus).

        A caller may take a callback instead of waiting: by pressing the key
        during the announcement played here, or during Asterisk's periodic
        announcements inside Queue(): the queue's ``context`` (queues.conf,
        CONTEXT_QUEUE_EXIT) makes Queue() leave with CONTEXT/EXTEN pointing
        there, which is how we tell it from the other endings.
        """
        chan = self.chan
        priority = int(params.get("priority") or 0)
        if priority:
            await chan.set_variable(names.VAR_QUEUE_PRIO, str(priority))
        queue = _dialplan_word(params["queue"])
        offer_key = names.QUEUE_EXIT_CALLBACK_KEY if params.get("callback_offer") else None
        handoff = self.handoff
        if handoff is not None:
            node = session.state.get("node") if isinstance(session.state, dict) else None
            info = await handoff.queue_wait(session.id, node, queue, priority)
            if info is not None:
                from ivr.handoff.core import wait_prompt

                prompt = wait_prompt(session.flow, str(params.get("language") or session.flow.default_language),
                                     info, offer_key=offer_key)
                if prompt is not None:
                    key = await self._play(prompt, offer_key or "")
                    if offer_key and key == offer_key:
                        return {"status": "callback", "queue": queue, "key": key, "when": "announcement",
                                "position": info.get("position")}
        # option c: when the agent hangs up, the call comes back to us
        result = await chan.exec("Queue", f"{queue},c,,,{int(params.get('timeout') or 300)}")
        if result == -1 or chan.hung_up:
            return {"status": "ended", "queue": queue}
        status = await chan.get_variable(names.VAR_QUEUESTATUS) or ""
        if status == "CONTINUE":
            answered = await chan.get_variable(names.VAR_ANSWEREDTIME)
            return {"status": "continue", "queue": queue, "talk_seconds": _int(answered)}
        if not status:  # left with a key: Queue() sets no QUEUESTATUS then
            if await chan.get_variable("CONTEXT") == names.CONTEXT_QUEUE_EXIT:
                key = await chan.get_variable("EXTEN") or ""
                if offer_key and key == offer_key:
                    return {"status": "callback", "queue": queue, "key": key, "when": "queue"}
                return {"status": "failed", "queue": queue, "queuestatus": "EXITWITHKEY", "key": key}
        return {"status": "failed", "queue": queue, "queuestatus": status}

    async def finish(self, outcome: str, session: SessionInfo) -> None:
        chan = self.chan
        try:
            if not chan.hung_up and not chan.closed:
                await chan.set_variable(names.VAR_RESULT, outcome)
                if outcome not in ("error",):
                    await chan.hangup()
        except AgiError:
            pass
        finally:
            await chan.close()


def _dialplan_word(value: str, allow: str = "-_.") -> str:
    """Queue names and dial strings go into application arguments, where ',' '|'
    and spaces would split or inject arguments: allow a strict alphabet only."""
    cleaned = "".join(ch for ch in str(value) if ch.isalnum() or ch in allow)
    if not cleaned:
        raise ValueError(f"{value!r} is not a usable queue or dial target")
    return cleaned


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
