"""Caller-influenced text never becomes an AGI command (or an AMI header).

Whole calls against the running server with the fake Asterisk. Hostile
strings (hypothesis-generated, deterministic) enter through every source a
caller or a back end controls:

* caller ID name and number in the AGI environment, including raw
  non-UTF-8 bytes on the wire;
* the flow's arguments (``agi_network_script`` query string);
* dialled digits: ``GET DATA`` replies carrying junk instead of keys;
* look-up results: a real aiohttp back end returns hostile JSON strings that
  the flow puts in variables, in a spoken (call-time rendered) prompt, in the
  transfer reason, summary and queue name.

The check is on the bytes the server sent (``raw_received``): one line per
command, each ending in LF, no CR or NUL, each splitting (like Asterisk's
``parse_args``) into one of the commands the server legitimately sends with
the right number of arguments, and no line longer than Asterisk reads as one.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivr.agi.protocol import MAX_COMMAND_BYTES, sanitize
from ivr.testing.callers import SimLikeCaller
from ivr.testing.fake_asterisk import FakeAsterisk, parse_args
from .support import wait_ended

# Verb -> allowed argument counts after the verb words (as parse_args splits them).
LEGIT = {
    ("ANSWER",): {0},
    ("STREAM", "FILE"): {2, 3},
    ("GET", "DATA"): {1, 2, 3},
    ("WAIT", "FOR", "DIGIT"): {1},
    ("SET", "VARIABLE"): {2},
    ("GET", "VARIABLE"): {1},
    ("EXEC",): {1, 2},
    ("HANGUP",): {0},
    ("VERBOSE",): {1, 2},
}
SET_NAMES = re.compile(r"(__)?IVR_[A-Z_]+|QUEUE_PRIO")
GET_NAMES = {"QUEUESTATUS", "ANSWEREDTIME", "DIALSTATUS", "CONTEXT", "EXTEN"}
EXEC_APPS = {"Queue", "Dial", "AudioSocket"}

# Strings an attacker would try, plus generated ones.
PAYLOADS = [
    "a\nHANGUP\nb", "x\r\nEXEC System rm -rf /\r\n", 'Bob\\" "EXEC System x', "\\", '"', '\\"\n',
    "\x00EXEC System x", "a\rHANGUP", "\u2028EXEC System x", "\u0085HANGUP", "\t\v\f", "中文\n\"引号\"",
    "😀" * 700, "\\" * 1200, '"' * 1200, "A" * 5000, "}}{{ caller }}{%", "${SHELL(rm -rf /)}", "$[1+1]",
]
HOSTILE = st.one_of(
    st.sampled_from(PAYLOADS),
    st.text(st.sampled_from(list("\n\r\x00\\\" \t,|;()[]${}aZ9#*中😀\u2028\x85\x7f")), max_size=80),
    st.text(max_size=60),
    st.builds(lambda s, n: s * n, st.sampled_from(["\\", '"', "😀", "\n", "中"]), st.integers(100, 2500)),
)
# Raw bytes for the environment (replaced into the wire after encoding).
RAW = st.one_of(st.sampled_from([b"\xff\xfe", b"\xc3(", b"\xed\xa0\x80", b"\xe4\xb8", b"\x80" * 10, b'\\"\xff']),
                st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")))


def _cases(n: int) -> list[dict]:
    """``n`` hostile call set-ups, generated deterministically."""
    out: list[dict] = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(name=HOSTILE, number=HOSTILE, arg=HOSTILE, who=HOSTILE, queue=HOSTILE, digits=HOSTILE,
           raw_name=st.one_of(st.none(), RAW), raw_number=st.one_of(st.none(), RAW),
           lang=st.sampled_from(["", "en-US", "en\nHANGUP", 'x"y', "../../etc"]))
    def collect(**case):
        out.append(case)

    collect()
    return out


FLOW = """
id: inject_all
title: Injection through every source
languages: [en-US]
prompts:
  hi: {{en-US: "Hello {{{{ caller_name }}}} {{{{ arg_name }}}}"}}
start: digits
nodes:
  digits:
    type: input
    prompt: hi
    var: entered
    max_length: 8
    tries: 1
    next: look
    failure: look
    summary: "digits {{{{ entered }}}}"
  look:
    type: lookup
    url: "{backend}/who"
    query: {{case: "{{{{ arg_case }}}}"}}
    assign: {{who: "response.name", target: "response.queue"}}
    next: said
    failure: said
    summary: "lookup {{{{ who }}}}"
  said:
    type: say
    prompt: {{en-US: "You are {{{{ who }}}}"}}
    next: t
  t:
    type: transfer
    queue: "support{{{{ arg_name }}}}{{{{ target }}}}"
    reason: "{{{{ caller_name }}}}|{{{{ caller }}}}|{{{{ arg_name }}}}|{{{{ entered }}}}|{{{{ who }}}}"
    summary: "{{{{ caller_name }}}} {{{{ who }}}} {{{{ arg_name }}}}"
"""


class HostileAsterisk(FakeAsterisk):
    """The fake, with raw bytes swapped into the environment and junk GET DATA replies."""

    def __init__(self, *args, raw_swaps: dict[bytes, bytes], get_data_reply: str | None, **kw) -> None:
        super().__init__(*args, **kw)
        self._swaps = raw_swaps
        self._get_data_reply = get_data_reply
        self._env_sent = False

    async def _write(self, data: bytes) -> bool:
        if not self._env_sent:
            self._env_sent = True
            for marker, raw in self._swaps.items():
                data = data.replace(marker, raw)
        return await super()._write(data)

    async def _get_data(self, argv, hang_now):
        if self._get_data_reply is not None and not hang_now:
            reply, self._get_data_reply = self._get_data_reply, None
            self._result.played.append(argv[2] if len(argv) > 2 else "")
            return [reply]
        return await super()._get_data(argv, hang_now)


def wire_problems(raw: bytes, commands: list[str]) -> list[str]:
    """Everything wrong with what the server wrote, judged as Asterisk reads it."""
    problems: list[str] = []
    if b"\x00" in raw or b"\r" in raw:
        problems.append("NUL or CR on the wire")
    lines = raw.split(b"\n")
    if lines[-1] != b"":
        problems.append(f"unterminated last line {lines[-1][:80]!r}")
    lines = lines[:-1]
    if len(lines) != len(commands):
        problems.append(f"{len(lines)} lines but the fake read {len(commands)} commands")
    for line in lines:
        if len(line) + 1 > MAX_COMMAND_BYTES + 1:
            problems.append(f"line of {len(line)} bytes: Asterisk reads it as two commands")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"not UTF-8: {line[:80]!r}")
            continue
        argv = parse_args(text)
        verb = next((v for v in sorted(LEGIT, key=len, reverse=True)
                     if tuple(w.upper() for w in argv[:len(v)]) == v), None)
        if verb is None:
            problems.append(f"unexpected command {text[:80]!r}")
            continue
        args = argv[len(verb):]
        if len(args) not in LEGIT[verb]:
            problems.append(f"{' '.join(verb)} with {len(args)} arguments: {text[:120]!r}")
        elif verb == ("SET", "VARIABLE") and not SET_NAMES.fullmatch(args[0]):
            problems.append(f"SET VARIABLE of {args[0][:40]!r}")
        elif verb == ("GET", "VARIABLE") and args[0] not in GET_NAMES:
            problems.append(f"GET VARIABLE of {args[0][:40]!r}")
        elif verb == ("EXEC",) and args[0] not in EXEC_APPS:
            problems.append(f"EXEC of {args[0][:40]!r}")
        elif verb == ("EXEC",) and args[0] in ("Queue", "Dial") and not re.fullmatch(
                r"[A-Za-z0-9_.\-/@]+,[^\s\"\\]*", args[1] if len(args) > 1 else ""):
            problems.append(f"{args[0]} arguments outside the strict alphabet: {args[1][:80]!r}")
    return problems


async def call_problems(app, result, outcomes: dict[str, int]) -> tuple[list[str], str | None]:
    """What went wrong with one finished call: the bytes on the wire, then the end
    of its session (whose outcome is counted in ``outcomes``); and the session id."""
    problems = wire_problems(result.raw_received, result.commands)
    session_id = result.variables.get("IVR_SESSION")
    session = await wait_ended(app, session_id)
    if session is None or session["ended_at"] is None:
        problems.append(f"session not ended: {session_id}")
    elif not result.server_closed:
        problems.append("server did not close the socket")
    else:
        outcomes[session["outcome"]] = outcomes.get(session["outcome"], 0) + 1
    return problems, session_id


@pytest.fixture
async def backend():
    """A real HTTP back end; each case's hostile answer is registered under its id."""
    answers: dict[str, dict] = {}

    async def who(request: web.Request) -> web.Response:
        body = answers.get(request.query.get("case", ""), {"name": "nobody", "queue": ""})
        return web.Response(text=json.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_get("/who", who)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", answers
    finally:
        await runner.cleanup()


def _quote_arg(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


CALLS = 160


@pytest.mark.reliability("inject.agi")
async def test_hostile_text_from_every_source_never_reaches_the_wire_as_a_command(rel, server, flows_dir, backend):
    url, answers = backend
    (flows_dir / "inject_all.yaml").write_text(FLOW.format(backend=url), encoding="utf-8")
    assert [f.id for f in server.registry.reload()] == ["inject_all"]
    cases = _cases(CALLS)
    lost: list[str] = []
    outcomes: dict[str, int] = {}
    reached: dict[str, int] = {}
    sem = asyncio.Semaphore(4)

    async def one(i: int, case: dict) -> None:
        answers[str(i)] = {"name": case["who"], "queue": case["queue"]}
        swaps, name, number = {}, case["name"], case["number"]
        if case["raw_name"] is not None:
            swaps[b"@@RAWNAME@@"] = case["raw_name"]
            name = "Evil @@RAWNAME@@ name"
        if case["raw_number"] is not None:
            swaps[b"@@RAWNUM@@"] = case["raw_number"]
            number = "1380@@RAWNUM@@"
        # The environment cannot carry a line break (Asterisk never sends one in a value).
        name, number = (sanitize(t).replace("\u2028", " ") for t in (name, number))
        junk = "200 result=" + sanitize(case["digits"]).replace("\x85", " ")[:200]
        script = f"inject_all?case={i}&name={_quote_arg(case['arg'])}"
        if case["lang"]:
            script += f"&lang={_quote_arg(case['lang'])}"
        fake = HostileAsterisk("127.0.0.1", server.config.agi_port, inputs=SimLikeCaller(["1234#"]), script=script,
                               callerid=number or "1", calleridname=name, raw_swaps=swaps,
                               get_data_reply=junk if i % 2 else None, idle_timeout=15)
        async with sem:
            result = await fake.run()
        problems, session_id = await call_problems(server, result, outcomes)
        reason = dict(result.variables_set).get("__IVR_REASON")
        if reason is not None and case["raw_name"] is None and name not in ("", "unknown"):
            expected = sanitize(name).split("|")[0]
            said = reason.split("|")[0]  # cut to fit, possibly inside the name
            if not (expected.startswith(said) and len(said) >= min(len(expected), 50)):
                problems.append(f"reason does not round-trip the caller name: {reason[:60]!r} vs {expected[:60]!r}")
        who = sanitize(case["who"])[:20]
        if reason is not None and who.strip() and who in reason:
            reached["look-up"] = reached.get("look-up", 0) + 1
        if any(c.startswith("STREAM FILE ivr/en-US/said.prompt-") for c in result.commands):
            reached["rendered prompt"] = reached.get("rendered prompt", 0) + 1
        if problems:
            lost.append(f"case {i}: {problems[:3]}")

    await asyncio.gather(*(one(i, c) for i, c in enumerate(cases)))
    rel.tried(len(cases))
    rel.lost(len(lost), "; ".join(lost[:5]))
    rel.note(f"{len(cases)} whole calls: caller ID name/number (raw bytes too), flow arguments, junk GET DATA "
             f"replies, look-up results; outcomes {dict(sorted(outcomes.items()))}")
    assert not lost, lost[:10]
    assert outcomes.get("transfer", 0) > len(cases) // 2, outcomes
    # the hostile look-up results really reached the sinks, and the spoken prompt was rendered
    assert reached.get("look-up", 0) > len(cases) // 4 and reached.get("rendered prompt") == len(cases), reached


# ---------------------------------------------------------------------------
# AMI: callbacks carry caller text into Originate


def _ami_cases(n: int) -> list[dict]:
    out: list[dict] = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(summary=HOSTILE, reason=HOSTILE, language=HOSTILE, digits=st.text("0123456789", min_size=5, max_size=11),
           decor=st.sampled_from(["", " ", "-", "(", ")", ".", "\n", "\r\nAction: Command", ",X=1", "\x00"]))
    def collect(**case):
        out.append(case)

    collect()
    return out


AMI_CALLBACKS = 40
ORIGINATE_HEADERS = {"action", "actionid", "channel", "context", "exten", "priority", "timeout", "callerid",
                     "async", "variable", "channelid", "otherchannelid", "codecs", "account", "earlymedia",
                     "application", "data"}


@pytest.mark.reliability("inject.agi")
async def test_hostile_callback_values_never_add_an_ami_header(rel, tmp_path):
    from callback.api import CallbackError, request_callback
    from callback.scheduler import CallbackScheduler
    from ivr import names
    from ivr.ami import AmiClient
    from ivr.store import TrailStore
    from ivr.testing.fake_ami import FakeAmiServer, FakeQueue, FakeQueueMember, header
    from types import SimpleNamespace

    fake = FakeAmiServer(originate_delay=0.01)
    fake.add_queue(FakeQueue("support", members=[FakeQueueMember("Agent 1", "Local/agent1@ivr-agents")]))
    store = await TrailStore.open(f"sqlite:///{tmp_path / 'cb.db'}")
    cases = _ami_cases(AMI_CALLBACKS)
    refused = 0
    expected: dict[str, dict] = {}
    async with fake:
        ami = AmiClient("127.0.0.1", fake.port, fake.username, fake.secret, initial_backoff=0.05,
                        max_backoff=0.2, action_timeout=3)
        await ami.start()
        await ami.wait_connected(5)
        sched = None
        try:
            app = SimpleNamespace(store=store, callbacks=None,
                                  config=SimpleNamespace(callback_max_attempts=1, callback_retry_interval=300))
            for i, case in enumerate(cases):
                number = f"139{i:04d}{case['digits']}"[:20]
                sid = await store.create_session(flow_id="demo_hotline", flow_version="v1", channel="voice",
                                                 caller=case["summary"][:64], language="zh-CN")
                await store.end_session(sid, outcome="transfer", node="t", summary=case["summary"],
                                        reason=case["reason"])
                try:
                    req = await request_callback(app, sid, number=number + case["decor"], when="asap",
                                                 queue="support", language=case["language"][:16] or "zh-CN",
                                                 reason=case["reason"] or None, channel="voice")
                except CallbackError:
                    refused += 1  # not a phone number: refused before anything is dialled
                    continue
                expected[req["id"]] = case
            sched = CallbackScheduler(store, ami, server_id="inject", poll_interval=0.05, lease=30.0,
                                      concurrency=10, dial_timeout=5.0)
            sched.start()
            deadline = asyncio.get_running_loop().time() + 30
            while len(fake.originated) < len(expected) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
        finally:
            if sched is not None:
                await sched.stop()
            await ami.stop()
            await store.close()

    problems: list[str] = []
    names_seen = {header(a, "Action").lower() for a in fake.actions}
    if not names_seen <= {"login", "originate", "ping", "queuestatus", "logoff", "getvar", "setvar"}:
        problems.append(f"unexpected actions {sorted(names_seen)}")
    originates = [a for a in fake.actions if header(a, "Action").lower() == "originate"]
    if len(originates) != len(expected):
        problems.append(f"{len(originates)} Originates for {len(expected)} callbacks")
    for action in originates:
        extra = {k.lower() for k in action} - ORIGINATE_HEADERS
        repeated = [k for k, v in action.items() if isinstance(v, list) and k.lower() != "variable"]
        if extra or repeated:
            problems.append(f"extra headers {sorted(extra)} repeated {repeated}")
    for orig in fake.originated:
        cb = orig.variables.get(names.INHERIT + names.VAR_CALLBACK)
        case = expected.get(cb or "")
        if case is None:
            problems.append(f"Originate for an unknown callback {cb!r}")
            continue
        allowed = {names.INHERIT + v for v in (names.VAR_SESSION, names.VAR_CALLBACK, names.VAR_SUMMARY,
                                               names.VAR_REASON, names.VAR_LANGUAGE)}
        allowed |= {names.VAR_CALLBACK_QUEUE, names.VAR_CALLBACK_PRIO, names.VAR_CALLBACK_NUMBER,
                    names.INHERIT + names.VAR_CALLBACK_DIAL}
        if set(orig.variables) - allowed:
            problems.append(f"smuggled variables {sorted(set(orig.variables) - allowed)}")
        summary = orig.variables.get(names.INHERIT + names.VAR_SUMMARY)
        want = re.sub(r"[\r\n\x00]+", " ", case["summary"].replace("\x00", "")[:500])
        if summary != want:
            problems.append(f"summary did not arrive as one literal value: {summary!r:.80} vs {want!r:.80}")
        number = orig.variables.get(names.VAR_CALLBACK_NUMBER, "")
        if not re.fullmatch(r"\+?[0-9]{3,20}", number):
            problems.append(f"callback number {number!r}")
    rel.tried(len(cases))
    rel.lost(len(problems), "; ".join(problems[:5]))
    rel.note(f"{len(cases)} callback requests with hostile summaries, reasons, languages and numbers "
             f"({refused} numbers refused as not phone numbers); every Originate checked header by header")
    assert not problems, problems[:10]
    assert len(expected) >= len(cases) // 2


@pytest.mark.reliability("inject.agi")
def test_clip_fits_any_text_into_one_command_line(rel):
    from ivr.agi.protocol import build_command, clip, quote

    count = [0]

    @settings(max_examples=500, derandomize=True, database=None, deadline=None)
    @given(text=HOSTILE, budget=st.integers(2, 2000))
    def prop(text, budget):
        count[0] += 1
        cut = clip(text, budget)
        assert sanitize(text).startswith(cut)
        assert len(quote(cut).encode("utf-8")) <= budget
        if cut != sanitize(text):  # the longest prefix that fits
            assert len(quote(sanitize(text)[: len(cut) + 1]).encode("utf-8")) > budget
        build_command("SET VARIABLE", "__IVR_SUMMARY", quote(clip(text, 1200)))

    prop()
    rel.tried(count[0])
