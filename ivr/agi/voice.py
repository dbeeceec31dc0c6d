"""The voice face: engine turns played and collected over one FastAGI channel."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import wave
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

from ivr import names
from ivr.agi.channel import AgiChannel
from ivr.agi.protocol import AgiCommandTimeout, AgiError, AgiFileMissing, AgiHangup, AgiProtocolError, clip, token
from ivr.engine import Expect, Input, Listen, PromptOut
from ivr.hearing import LINK_FAILURES, Heard, SpeechPort, SpeechTurn, with_speech
from ivr.session import CallerGone, FaceBroken, SessionInfo

log = logging.getLogger("ivr.voice")

DIGIT_KEYS = "0123456789*#"
#: Seconds to wait for the reply to IVR_RESULT when handing a call back after
#: a cancelled command (the server stopping past its grace).
HANDBACK_TIMEOUT = 5.0

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
                 prompt_files: PromptFiles | None = None, on_missing: MissingPrompt | None = None,
                 speech: SpeechPort | None = None, record_dir: str | None = None,
                 exec_timeout: float | None = None):
        self.chan = chan
        # Queue() and Dial() last as long as the conversation with the agent:
        # past this many seconds without a reply, Asterisk counts as gone
        # (None: wait without limit).
        self.exec_timeout = exec_timeout
        self.sounds_prefix = sounds_prefix
        self._prompt_files = prompt_files
        self._on_missing = on_missing
        # Speech (see ivr.speech): questions with Expect.listen are answered by
        # voice when a recogniser is free; RECORD FILE writes under record_dir.
        self.speech = speech
        self.record_dir = record_dir
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

    def _broken(self, exc: AgiError) -> FaceBroken:
        """Asterisk (or what claims to be it) sent garbage or stopped answering."""
        return FaceBroken(f"AGI {type(exc).__name__}: {exc}")

    async def present(self, prompts: list[PromptOut]) -> None:
        try:
            for p in prompts:
                await self._play(p, "")
        except AgiHangup as exc:
            raise self._gone(exc) from None
        except (AgiCommandTimeout, AgiProtocolError) as exc:
            raise self._broken(exc) from None

    async def collect(self, prompts: list[PromptOut], expect: Expect) -> Input:
        try:
            if expect.listen is not None or expect.kind == "speech":
                return await self._collect_spoken(prompts, expect)
            if expect.kind == "choice":
                return await self._collect_choice(prompts, expect)
            return await self._collect_digits(prompts, expect)
        except AgiHangup as exc:
            raise self._gone(exc) from None
        except (AgiCommandTimeout, AgiProtocolError) as exc:
            raise self._broken(exc) from None

    async def _collect_choice(self, prompts: list[PromptOut], expect: Expect) -> Input:
        escape = expect.keys
        for p in prompts:
            key = await self._play(p, escape)
            if key:
                return Input.dtmf(key)
        key = await self.chan.wait_for_digit(int(expect.timeout * 1000))
        return Input.dtmf(key) if key else Input.noinput()

    # ---- speech
    async def _collect_spoken(self, prompts: list[PromptOut], expect: Expect) -> Input:
        """A question that may be answered by voice; keys keep working throughout.

        With a free recogniser: register the call with the AudioSocket server,
        play the prompts (a key ends them and is the answer), then ``EXEC
        AudioSocket`` while the recogniser consumes the caller's audio; the
        server ends the socket when the answer is final or time is up. When
        no recogniser is free the question takes keys, with a prompt saying
        so; an audio link that fails does the same.
        """
        listen = expect.listen
        turn: SpeechTurn | str = "unavailable"
        if listen is not None and self.speech is not None:
            turn = self.speech.open(listen)
        if isinstance(turn, str):
            heard = Heard(turn)
            if not expect.choices:  # nothing to press: the node decides (e.g. ask -> no_speech)
                await self.present(prompts)
                return heard.to_input()
            if turn == "unavailable":  # no model for this language: speech is simply off
                inp = await self._collect_choice(prompts, expect)
                # a model is configured but broken: the trail says why keys were taken
                why = getattr(self.speech, "why_unavailable", lambda lang: None)(listen.lang) if listen else None
                if not why:
                    return inp
                inp = with_speech(inp, heard)
                inp.detail["speech"]["why"] = why
                return inp
            extra = list(listen.keypad) if listen is not None else []
            return with_speech(await self._collect_choice([*prompts, *extra], expect), heard)
        assert listen is not None
        try:
            for p in [*prompts, *listen.hint]:
                key = await self._play(p, expect.keys)
                if key:
                    return Input.dtmf(key)
            if turn.transport == "eagi":
                heard = await self._listen_eagi(turn)
            else:
                heard = await self._listen_audiosocket(turn, listen)
        finally:
            await turn.close()
        if heard.reason in LINK_FAILURES:
            if self.chan.hung_up:
                raise AgiHangup(self.chan.hangup_reason or "eof")
            await self.chan.channel_status()  # raises AgiHangup when the caller is gone
            log.warning("call %s: speech audio link failed (%s); taking keys", self.chan.uniqueid, heard.reason)
            if not expect.choices:
                return heard.to_input()
            return with_speech(await self._collect_choice(list(listen.keypad), expect), heard)
        return heard.to_input()

    async def _listen_audiosocket(self, turn: SpeechTurn, listen: Listen) -> Heard:
        assert turn.exec_argument is not None and self.speech is not None
        run = asyncio.create_task(turn.run())
        budget = (listen.no_input_ms or 10_000) + (listen.max_speech_ms or 30_000)
        limit = self.speech.connect_timeout + budget / 1000 + 10
        try:
            # EXEC AudioSocket returns when we send kind 0x00 (result final or
            # time is up), when the caller hangs up, or at once when Asterisk
            # cannot reach us. Not chan.exec(): -1 here need not be a hang-up.
            result = await self.chan.command("EXEC", "AudioSocket", token(turn.exec_argument), timeout=limit)
        except BaseException:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            raise
        if result.value == -2:
            log.error("Asterisk has no AudioSocket application: load app_audiosocket (see docs/asterisk.md)")
        if not run.done():
            if turn.connected:
                await asyncio.wait([run], timeout=2.0)
            run.cancel()
            await asyncio.wait([run])
        if run.cancelled():  # the AudioSocket connection never came
            heard = Heard("no_audio", source="audiosocket")
        elif run.exception() is not None:
            log.error("call %s: recognition failed: %r", self.chan.uniqueid, run.exception())
            heard = Heard("no_audio", source="audiosocket")
        else:
            heard = run.result()
        if result.value == -1 and heard.reason not in LINK_FAILURES:
            await self.chan.channel_status()  # the answer was heard; is the caller still there?
        return heard

    async def _listen_eagi(self, turn: SpeechTurn) -> Heard:
        """EAGI: audio arrives on fd 3 while short WAIT FOR DIGITs keep keys working."""
        run = asyncio.create_task(turn.run())
        try:
            while not run.done():
                key = await self.chan.wait_for_digit(200)
                if key:
                    turn.dtmf(key)
                    break
            return await run
        except BaseException:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            raise

    # ---- recording
    async def record(self, params: dict[str, Any], session: SessionInfo) -> dict[str, Any]:
        """``RECORD FILE`` a message under ``record_dir``, then transcribe it (the ``record`` action)."""
        if not self.record_dir:
            return {"status": "unsupported", "reason": "no record_dir configured"}
        os.makedirs(self.record_dir, exist_ok=True)
        base = os.path.join(self.record_dir, f"{session.id}-{params.get('name', 'record')}-{int(time.time())}")
        status = "recorded"
        endpos = 0
        key = None
        try:
            rec = await self.chan.record_file(
                base, "wav", str(params.get("terminator") or "#"), int(params.get("max_seconds") or 60) * 1000,
                beep=bool(params.get("beep", True)), silence_s=int(params.get("silence_s") or 0) or None,
            )
            endpos, key = rec.endpos, rec.digit
        except AgiHangup:
            status = "hangup"  # a voicemail often ends with the caller hanging up: keep the message
        except AgiError as exc:
            return {"status": "failed", "reason": str(exc)}
        path = base + ".wav"
        seconds = _wav_seconds(path)
        if seconds is None:
            seconds = round(endpos / 8000, 2) if endpos else 0.0
            if not os.path.exists(path):
                return {"status": "hangup" if status == "hangup" else "empty", "file": None, "seconds": 0.0,
                        "transcript": None, "reason": "no file written"}
        if status == "recorded" and seconds < 0.3:
            status = "empty"
        out: dict[str, Any] = {"status": status, "file": path, "seconds": seconds, "key": key,
                               "transcript": None, "confidence": None}
        if params.get("transcribe", True) and status != "empty":
            if self.speech is None:
                out["reason"] = "speech recognition is off"
            else:
                out.update(await self.speech.transcribe(path, str(params.get("lang") or "")))
        return out

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
            # Cut to fit one command line whatever the text (4-byte characters, quotes to escape).
            await chan.set_variable(inherit + names.VAR_SUMMARY, clip(str(params.get("summary") or "")[:500], 1200))
            await chan.set_variable(inherit + names.VAR_LANGUAGE, clip(str(params.get("language") or ""), 64))
            await chan.set_variable(inherit + names.VAR_REASON, clip(str(params.get("reason") or "")[:200], 600))
            if params.get("queue"):
                return await self._queue(params, session)
            if not params.get("extension"):
                raise ValueError("transfer without a queue or an extension")
            target = _dialplan_word(params["extension"], allow="/@-_.")
            result = await chan.exec("Dial", f"{target},{int(params.get('timeout') or 60)}",
                                     timeout=self.exec_timeout)
            if result == -1 or chan.hung_up:
                return {"status": "ended", "extension": target}
            dialstatus = await chan.get_variable(names.VAR_DIALSTATUS) or ""
            return {"status": "continue" if dialstatus == "ANSWER" else "failed", "dialstatus": dialstatus}
        except AgiHangup as exc:
            raise self._gone(exc) from None
        except (AgiCommandTimeout, AgiProtocolError) as exc:
            raise self._broken(exc) from None
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
        result = await chan.exec("Queue", f"{queue},c,,,{int(params.get('timeout') or 300)}",
                                 timeout=self.exec_timeout)
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
                # after a cancelled command (the server stopping) the reply
                # it owes comes first; Asterisk reads ours once that command
                # ends, so wait briefly and do not hold the shutdown up
                if chan.owed_replies:
                    await chan.set_variable(names.VAR_RESULT, outcome, timeout=HANDBACK_TIMEOUT)
                else:
                    await chan.set_variable(names.VAR_RESULT, outcome)
                if outcome not in ("error",):
                    await chan.hangup()
        except AgiError:
            pass
        finally:
            await chan.close()


#: Longest queue name or dial string passed on (Asterisk's own names are far shorter).
MAX_DIALPLAN_WORD = 128


def _dialplan_word(value: str, allow: str = "-_.") -> str:
    """Queue names and dial strings go into application arguments, where ',' '|'
    and spaces would split or inject arguments: allow a strict ASCII alphabet
    only, and a bounded length (a look-up may return anything)."""
    cleaned = "".join(ch for ch in str(value) if (ch.isascii() and ch.isalnum()) or ch in allow)
    cleaned = cleaned[:MAX_DIALPLAN_WORD]
    if not cleaned:
        raise ValueError(f"{value!r} is not a usable queue or dial target")
    return cleaned


def _wav_seconds(path: str) -> float | None:
    """Duration of a WAV file, None when it cannot be read."""
    with contextlib.suppress(OSError, wave.Error, EOFError):
        with wave.open(path, "rb") as wav:
            return round(wav.getnframes() / float(wav.getframerate() or 8000), 2)
    return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
