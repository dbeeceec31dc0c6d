"""Recognised speech never becomes an AGI command.

A real Vosk model emits only words of its vocabulary, so it cannot produce a
hostile string; what it emits is still text the flow puts into variables,
prompts and AGI commands. Here the recogniser's output is replaced at its
boundary: the server's :class:`~ivr.hearing.SpeechPort` (``voice_hooks
["speech"]``) is a stand-in whose turns return :class:`~ivr.hearing.Heard`
results carrying hostile text. Everything past that boundary is the real
code: the voice face opens the turn, plays the prompts, sends ``EXEC
AudioSocket <uuid>,<address>`` and turns the ``Heard`` into the ``Input``
(``Heard.to_input`` / ``with_speech``) exactly as with the real recogniser;
the engine, the flow, the prompt renderer, the look-up and the transfer
follow. The fake Asterisk's ``AudioSocket`` application hands the call's
next scripted result to the turn named by the UUID, as the real AudioSocket
server matches a connection to its turn.

Whole calls through the real FastAGI server:

* a free ``ask`` node: the text becomes a flow variable that is confirmed
  (the built-in "Did you say {{ heard }}?" prompt, rendered at call time)
  or taken at once, then spoken in a rendered prompt, sent as a look-up
  query (a real aiohttp back end echoes it back), and put in the transfer's
  reason, summary and queue name template (``SET VARIABLE``, ``EXEC Queue``);
* a menu with speech: hostile grammar values and utterances, confident or
  to be confirmed (the confirm prompt repeats the utterance).

The wire check is :func:`call_problems` of ``test_agi_injection``.
"""

from __future__ import annotations

import asyncio
import collections
import uuid

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivr.agi.protocol import sanitize
from ivr.engine.types import Listen
from ivr.hearing import Heard
from ivr.testing.fake_asterisk import AppOutcome, FakeAsterisk, ScriptedCaller

from .test_agi_injection import HOSTILE, call_problems

# What a recogniser could be made to say, if it could say anything.
SPOKEN = [
    "billing\nHANGUP", "a\rEXEC System x", "x\r\nEXEC System rm -rf /\r\n", 'say "yes" \\" EXEC System x',
    "\\", '"', "\\\"\n", "\x00EXEC System x", "nul\x00in\x00the middle", "\u2028EXEC System x", "\u0085HANGUP",
    "A" * 5000, "😀" * 700, "😀 billing 😀", "中文\n\"引号\"", "{{ caller }}{% for %}", "${SHELL(rm -rf /)}",
    "   ", "",
]


def _cases(n: int) -> list[dict]:
    """``n`` hostile recognitions per call, generated deterministically."""
    out: list[dict] = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(topic=st.one_of(st.sampled_from(SPOKEN), HOSTILE), topic_conf=st.sampled_from([0.95, 0.3]),
           yes_text=HOSTILE, menu_value=st.one_of(st.sampled_from(["1", "2"]), HOSTILE),
           menu_text=st.one_of(st.sampled_from(SPOKEN), HOSTILE), menu_conf=st.sampled_from([0.95, 0.3]))
    def collect(**case):
        out.append(case)

    collect()
    return out


class _Turn:
    """One recognition: answered when the fake's AudioSocket application names its UUID."""

    transport = "audiosocket"

    def __init__(self, ears: StandInEars, listen: Listen) -> None:
        self.uuid = str(uuid.uuid4())
        self.listen = listen
        self.exec_argument = f"{self.uuid},127.0.0.1:9"
        self._heard: asyncio.Future[Heard] = asyncio.get_running_loop().create_future()
        self._ears = ears
        ears.turns[self.uuid] = self

    @property
    def connected(self) -> bool:
        return self._heard.done()

    def deliver(self, heard: Heard) -> None:
        if not self._heard.done():
            self._heard.set_result(heard)

    async def run(self) -> Heard:
        return await self._heard

    def dtmf(self, key: str) -> None:
        self.deliver(Heard("dtmf", dtmf=key, source="audiosocket"))

    async def close(self) -> None:
        self._ears.turns.pop(self.uuid, None)
        if not self._heard.done():
            self._heard.cancel()


class StandInEars:
    """A :class:`~ivr.hearing.SpeechPort` whose recogniser says what the test scripts."""

    connect_timeout = 2.0

    def __init__(self) -> None:
        self.turns: dict[str, _Turn] = {}
        self.opened = 0

    def open(self, listen: Listen) -> _Turn:
        self.opened += 1
        return _Turn(self, listen)

    async def transcribe(self, path: str, lang: str) -> dict:
        return {"transcript": None, "reason": "not used here"}


def _benign(listen: Listen) -> Heard:
    """What an exhausted script says: something the question accepts."""
    if listen.free:
        return Heard("final", "fallback", "fallback", 0.99, source="audiosocket")
    value = listen.grammar[0][0]
    return Heard("final", value, listen.grammar[0][1][0], 0.99, source="audiosocket")


FLOW = """
id: speech_inject
title: Hostile recognised speech
languages: [en-US]
settings: {{timeout: 3, tries: 2, failure: agent}}
prompts:
  q: {{en-US: "What is your call about?"}}
  m: {{en-US: "Say billing or support."}}
start: topic
nodes:
  topic:
    type: ask
    prompt: q
    var: topic
    min_confidence: 0.5
    no_speech: agent
    next: look
    summary: "topic {{{{ topic }}}}"
  look:
    type: lookup
    url: "{backend}/echo"
    query: {{topic: "{{{{ topic }}}}"}}
    assign: {{who: "response.name"}}
    next: said
    failure: said
  said:
    type: say
    prompt: {{en-US: "You said {{{{ topic }}}}, {{{{ who }}}}"}}
    next: menu
  menu:
    type: menu
    prompt: m
    speech: true
    min_confidence: 0.5
    choices:
      - {{key: 1, label: billing, keywords: {{en-US: [billing]}}, next: t}}
      - {{key: 2, label: support, keywords: {{en-US: [support]}}, next: t}}
  t:
    type: transfer
    queue: "support{{{{ topic }}}}{{{{ who }}}}"
    reason: "{{{{ topic }}}}|{{{{ caller }}}}|{{{{ who }}}}"
    summary: "{{{{ topic }}}} {{{{ who }}}}"
  agent: {{type: hangup, outcome: agent}}
"""


@pytest.fixture
async def echo_backend():
    """A real HTTP back end that answers the look-up with the topic it was sent."""
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"name": request.query.get("topic", "")})

    app = web.Application()  # like most web servers, refuses a URL over 8 KB (the flow's failure branch)
    app.router.add_get("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


CALLS = 100


@pytest.mark.reliability("inject.agi")
async def test_hostile_recognised_speech_never_reaches_the_wire_as_a_command(rel, server, flows_dir, echo_backend):
    (flows_dir / "speech_inject.yaml").write_text(FLOW.format(backend=echo_backend), encoding="utf-8")
    assert [f.id for f in server.registry.reload()] == ["speech_inject"]
    ears = StandInEars()
    server.voice_hooks["speech"] = ears
    cases = _cases(CALLS)
    lost: list[str] = []
    outcomes: dict[str, int] = {}
    reached: collections.Counter[str] = collections.Counter()
    sem = asyncio.Semaphore(4)

    async def one(i: int, case: dict) -> None:
        # per question: the free ask, the confirm step ("yes" by value, hostile words), the menu
        script = {
            "free": collections.deque([Heard("final", case["topic"], case["topic"], case["topic_conf"],
                                             source="audiosocket")]),
            "confirm": collections.deque([Heard("final", "1", case["yes_text"], 0.9, source="audiosocket")] * 2),
            "menu": collections.deque([Heard("final", case["menu_value"], case["menu_text"], case["menu_conf"],
                                             source="audiosocket")]),
        }

        async def audiosocket(args: str) -> AppOutcome:
            turn = ears.turns.get(args.partition(",")[0])
            if turn is None:
                return AppOutcome(-1)  # nobody listening on that UUID
            listen = turn.listen
            kind = "free" if listen.free else (
                "confirm" if any("yes" in words for _, words in listen.grammar) else "menu")
            turn.deliver(script[kind].popleft() if script[kind] else _benign(listen))
            return AppOutcome(0)

        fake = FakeAsterisk("127.0.0.1", server.config.agi_port, inputs=ScriptedCaller([]),  # silent: no key
                            script=f"speech_inject?case={i}", callerid=f"1380013{i:04d}",
                            apps={"AudioSocket": audiosocket},
                            # a call-time render of a 5000-character prompt may take long on a busy machine
                            idle_timeout=60)
        async with sem:
            result = await fake.run()
        problems, session_id = await call_problems(server, result, outcomes)
        if not any(c.startswith("EXEC AudioSocket ") for c in result.commands):
            problems.append("never listened")
        events = await server.store.events(session_id) if session_id else []
        if any(e["kind"] == "speech" and e["data"].get("reason") == "final" and e["data"].get("source") == "audiosocket"
               for e in events):
            reached["heard as speech"] += 1  # the face turned the Heard into a speech Input
        reason = dict(result.variables_set).get("__IVR_REASON")
        topic = sanitize(case["topic"]).strip()[:20]
        if reason is not None and topic and topic in reason:
            reached["reason"] += 1
        if any(c.startswith("STREAM FILE ivr/en-US/said.prompt-") for c in result.commands):
            reached["rendered prompt"] += 1
        if any(c.startswith("STREAM FILE ivr/en-US/speech_confirm") for c in result.commands):
            reached["confirm prompt"] += 1
        if problems:
            lost.append(f"case {i}: {problems[:3]}")

    await asyncio.gather(*(one(i, c) for i, c in enumerate(cases)))
    rel.tried(len(cases))
    rel.lost(len(lost), "; ".join(lost[:5]))
    rel.note(f"recognised speech: the recogniser's output replaced at its boundary (a real model emits only its "
             f"vocabulary); {len(cases)} calls")
    rel.note(f"{len(cases)} speech calls: free ask into a variable, confirm prompt, rendered prompt, look-up query, "
             f"transfer reason/summary/queue; menu values and utterances; outcomes {dict(sorted(outcomes.items()))}")
    assert not lost, lost[:10]
    assert not ears.turns  # every turn closed
    assert outcomes.get("transfer", 0) > len(cases) // 2, outcomes
    # the hostile text really reached the sinks
    assert reached["reason"] > len(cases) // 4 and reached["rendered prompt"] > len(cases) // 2, reached
    assert reached["confirm prompt"] > len(cases) // 4 and reached["heard as speech"] == len(cases), reached
