"""AMI client tests: the real captures, and the client against a fake Asterisk
over real sockets (no mocks).

The captures in ``tests/fixtures/asterisk/`` are parsed with the client's own
code path (:func:`ivr.ami.parse_stream`) and cross-checked against counts and
fields read from the raw text independently. The fake
(:mod:`ivr.testing.fake_ami`) is checked byte for byte against the same
captures, then used to drive the client: login, events, timeouts, drops,
restarts, keepalive, originate outcomes, queues, and header injection.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivr.ami import (AmiActionError, AmiActionTimeout, AmiClient, AmiDisconnected, AmiMessage,
                     AmiState, OriginateResult, QueueStatus, QueueSummary, backoff_delay,
                     clean_value, format_originate_variable, load_capture, parse_stream)
from ivr.testing.fake_ami import (BANNER, FakeAmiServer, FakeQueue, FakeQueueEntry,
                                  FakeQueueMember, header, originate_variables, parse_block,
                                  read_capture, separate_app_args)

pytestmark = pytest.mark.timeout(30)

CAPTURES = Path(__file__).parent / "fixtures" / "asterisk"
SESSION = CAPTURES / "ami-session.txt"
SESSION_2 = CAPTURES / "ami-session-2.txt"
QUEUE_WAIT = CAPTURES / "ami-queue-wait.txt"
ALL_CAPTURES = [SESSION, SESSION_2, QUEUE_WAIT]


# -- helpers -------------------------------------------------------------------------


def raw_counts(path: Path) -> Counter[str]:
    """Message kinds counted from the raw text, without any AMI parser: the
    first line of every message (after the banner or an empty line)."""
    text = path.read_bytes().decode("utf-8")
    firsts = re.findall(r"(?:^Asterisk Call Manager/[^\r]*\r\n|\r\n\r\n)([^\r]+)", text)
    return Counter(first.replace("Event: ", "").replace("Response: ", "R:") for first in firsts)


def kinds(messages: list[AmiMessage]) -> Counter[str]:
    return Counter(str(m.get("Event") or f"R:{m['Response']}") for m in messages)


def by_action_id(messages: list[AmiMessage], action_id: str) -> list[AmiMessage]:
    return [m for m in messages if m.get("ActionID") == action_id]


def capture_blocks_between(path: Path, first: bytes, last: bytes) -> bytes:
    """Raw bytes of the capture from the block starting with ``first`` to the
    block starting with ``last`` (inclusive), each with its empty line."""
    blocks = read_capture(path)
    start = next(i for i, b in enumerate(blocks) if b.startswith(first))
    end = next(i for i in range(start, len(blocks)) if blocks[i].startswith(last))
    return b"".join(block + b"\r\n\r\n" for block in blocks[start:end + 1])


def capture_block(path: Path, first: bytes) -> bytes:
    return capture_blocks_between(path, first, first)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def make_client(fake: FakeAmiServer, *, ping_interval: float = 10.0,
                action_timeout: float = 1.0, initial_backoff: float = 0.01,
                max_backoff: float = 0.05, secret: str | None = None) -> AmiClient:
    """A client with test-sized intervals (the defaults are 20 s, 10 s, 0.5 s, 60 s)."""
    return AmiClient(fake.host, fake.port, fake.username,
                     fake.secret if secret is None else secret,
                     ping_interval=ping_interval, action_timeout=action_timeout,
                     initial_backoff=initial_backoff, max_backoff=max_backoff)


class RawAmi:
    """A bare socket client, to see the fake's bytes exactly."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, fake: FakeAmiServer) -> tuple["RawAmi", bytes]:
        reader, writer = await asyncio.open_connection(fake.host, fake.port)
        banner = await reader.readline()
        return cls(reader, writer), banner

    async def send(self, *lines: str) -> None:
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def block(self) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 2)

    async def until(self, prefix: bytes) -> bytes:
        data = b""
        while True:
            block = await self.block()
            data += block
            if block.startswith(prefix):
                return data

    async def login(self, fake: FakeAmiServer, action_id: str = "login-1") -> None:
        await self.send("Action: Login", f"ActionID: {action_id}", f"Username: {fake.username}",
                        f"Secret: {fake.secret}")
        await self.until(b"Event: SuccessfulAuth")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def waitq_like_capture() -> FakeQueue:
    """The queue of ami-queue-wait.txt at the moment of its QueueStatus."""
    return FakeQueue(
        name="waitq",
        members=[FakeQueueMember(name="Slow Agent", location="Local/s@noanswer/n",
                                 login_time=1795619384, status=2)],
        entries=[FakeQueueEntry(channel="Local/s@waitq-in-0000000c;2", uniqueid="1795619384.25",
                                caller_id_num="13800000001", wait=6),
                 FakeQueueEntry(channel="Local/s@waitq-in-0000000e;2", uniqueid="1795619386.29",
                                caller_id_num="13800000002", wait=4),
                 FakeQueueEntry(channel="Local/s@waitq-in-0000000f;2", uniqueid="1795619388.31",
                                caller_id_num="13800000003", wait=3)])


@pytest.fixture
async def fake() -> AsyncIterator[FakeAmiServer]:
    async with FakeAmiServer() as server:
        yield server


@pytest.fixture
async def client(fake: FakeAmiServer) -> AsyncIterator[AmiClient]:
    ami = make_client(fake)
    await ami.start()
    assert ami.state == "connected"
    yield ami
    await ami.stop()


# -- the captures, through the client's parser ---------------------------------


@pytest.mark.parametrize("path", ALL_CAPTURES, ids=lambda p: p.name)
def test_every_capture_message_parses_like_the_raw_text(path: Path) -> None:
    messages = load_capture(path)
    blocks = read_capture(path)
    assert len(messages) == len(blocks)
    assert kinds(messages) == raw_counts(path)
    # Every header of every message, compared with an independent line parser.
    for message, block in zip(messages, blocks):
        assert message.to_dict() == parse_block(block)


@pytest.mark.parametrize("path", ALL_CAPTURES, ids=lambda p: p.name)
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_capture_parses_identically_in_tcp_sized_pieces(path: Path, chunk: int) -> None:
    whole = [m.to_dict() for m in load_capture(path)]
    assert [m.to_dict() for m in parse_stream(path.read_bytes(), chunk_size=chunk)] == whole


def test_session_capture_contents() -> None:
    messages = load_capture(SESSION)
    assert len(messages) == 305
    counts = kinds(messages)
    assert counts["VarSet"] == 48
    assert counts["AGIExecStart"] == counts["AGIExecEnd"] == 31
    assert counts["DTMFBegin"] == counts["DTMFEnd"] == 5
    assert counts["Hangup"] == counts["Newchannel"] == 10
    assert counts["OriginateResponse"] == 4
    assert counts["AgentConnect"] == counts["AgentComplete"] == counts["AgentCalled"] == 1
    assert counts["BridgeEnter"] == 2 and counts["QueueCallerJoin"] == 1
    assert (counts["R:Success"], counts["R:Error"], counts["R:Goodbye"]) == (7, 2, 1)  # + 4 "Response:" lines inside OriginateResponse events

    login = messages[0]
    assert (login["Response"], login["ActionID"], login["Message"]) == (
        "Success", "login-1", "Authentication accepted")
    originated = [(m["ActionID"], m["Response"], m["Reason"])
                  for m in messages if m.get("Event") == "OriginateResponse"]
    assert originated == [("orig-menu", "Success", "4"), ("orig-hangup", "Success", "4"),
                          ("orig-queue", "Success", "4"), ("orig-speech", "Success", "4")]
    assert by_action_id(messages, "ping-1")[0]["Ping"] == "Pong"
    assert by_action_id(messages, "bad-1")[0]["Message"] == "Extension does not exist."
    assert by_action_id(messages, "bad-2")[0]["Message"] == (
        "Invalid/unknown command: NoSuchAction. Use Action: ListCommands to show "
        "available commands.")
    bad_format = next(m for m in messages if m.get("Event") == "RequestBadFormat")
    assert bad_format["RequestType"] == "Action: NoSuchAction"
    # A last header with an empty value is kept (panoramisk's strip() lost it).
    empty_values = [m for m in messages if m.get("Event") == "VarSet" and m["Value"] == ""]
    assert empty_values and all("Value" in m for m in empty_values)
    # UTF-8 survives.
    assert any("中文" in str(m.get("Value", "")) for m in messages)


def test_session_2_capture_contents() -> None:
    messages = load_capture(SESSION_2)
    assert len(messages) == 506
    counts = kinds(messages)
    assert counts["OriginateResponse"] == 8
    assert counts["AgentConnect"] == counts["BridgeEnter"] / 2 == 3
    assert counts["QueueStatusComplete"] == 2
    results = {m["ActionID"]: OriginateResult.from_event(m)
               for m in messages if m.get("Event") == "OriginateResponse"}
    assert [(r.response, r.reason, r.outcome) for r in results.values()].count(
        ("Success", 4, "answered")) == 6
    busy, noanswer = results["cb-busy"], results["cb-noanswer"]
    assert (busy.response, busy.reason, busy.outcome, busy.channel, busy.uniqueid) == (
        "Failure", 5, "busy", "Local/s@busy/n", None)
    assert (noanswer.response, noanswer.reason, noanswer.outcome) == ("Failure", 3, "noanswer")
    agent_first = results["cb-agent-first"]
    assert (agent_first.channel, agent_first.uniqueid) == (
        "Local/agent1@agents-00000007;1", "1795619340.14")
    assert by_action_id(messages, "redirect-1")[0]["Message"] == "Redirect successful"
    assert by_action_id(messages, "relogin-bad")[0]["Message"] == "Already authenticated"
    connect = next(m for m in messages if m.get("Event") == "AgentConnect")
    assert (connect["Queue"], connect["MemberName"], connect["DestChannel"]) == (
        "support", "Agent One", "Local/agent1@agents-00000003;1")
    during = QueueStatus.from_messages("support", by_action_id(messages, "qs-during"))
    assert during.params is not None and during.params.completed == 1
    assert [m.name for m in during.members] == ["Agent One"] and during.entries == []


def test_queue_wait_capture_contents() -> None:
    messages = load_capture(QUEUE_WAIT)
    assert len(messages) == 283
    counts = kinds(messages)
    assert counts["QueueCallerJoin"] == counts["QueueCallerLeave"] == 3
    assert counts["AgentRingNoAnswer"] == 4 and counts["QueueEntry"] == 3
    assert "ActionID" not in messages[0]  # this session logged in without one
    joins = [(m["Channel"], m["Position"]) for m in messages if m.get("Event") == "QueueCallerJoin"]
    assert [position for _, position in joins] == ["1", "2", "3"]

    answer = by_action_id(messages, "qs-wait")
    assert answer[0]["EventList"] == "start" and answer[-1]["ListItems"] == "5"
    status = QueueStatus.from_messages("waitq", answer)
    assert status.params is not None
    assert (status.params.calls, status.params.strategy) == (3, "ringall")
    assert [(e.position, e.wait, e.priority) for e in status.entries] == [
        (1, 6, 0), (2, 4, 0), (3, 3, 0)]
    assert [e.caller_id_num for e in status.entries] == [
        "13800000001", "13800000002", "13800000003"]
    assert status.entries[0].channel == "Local/s@waitq-in-0000000c;2"
    member = status.members[0]
    assert (member.name, member.location, member.status, member.in_call, member.paused) == (
        "Slow Agent", "Local/s@noanswer/n", 2, False, False)
    summary = QueueSummary.from_event(next(m for m in messages if m.get("Event") == "QueueSummary"))
    assert (summary.logged_in, summary.available, summary.callers, summary.longest_hold_time) == (
        1, 0, 3, 6)


# -- the fake, byte for byte against the captures -----------------------------


async def test_fake_login_matches_capture(fake: FakeAmiServer) -> None:
    raw, banner = await RawAmi.connect(fake)
    assert banner == BANNER == b"Asterisk Call Manager/11.0.0\r\n"
    await raw.send("Action: Login", "ActionID: login-1", "Username: ivr", "Secret: secret")
    assert await raw.block() == capture_block(SESSION, b"Response: Success\r\nActionID: login-1")
    booted, auth = parse_block(await raw.block()), parse_block(await raw.block())
    captured = [parse_block(b) for b in read_capture(SESSION)[1:3]]
    assert list(booted) == list(captured[0]) and booted["Status"] == "Fully Booted"
    assert list(auth) == list(captured[1]) and auth["AccountID"] == "ivr"

    await raw.send("Action: Login", "ActionID: relogin-bad", "Username: ivr", "Secret: secret")
    assert await raw.block() == capture_block(SESSION_2, b"Response: Success\r\nActionID: relogin-bad")
    await raw.send("Action: Ping", "ActionID: ping-1")
    pong = parse_block(await raw.block())
    assert list(pong) == list(parse_block(capture_block(SESSION, b"Response: Success\r\nActionID: ping-1")))
    assert pong["Ping"] == "Pong"
    await raw.send("Action: NoSuchAction", "ActionID: bad-2")
    assert await raw.block() == capture_block(SESSION, b"Response: Error\r\nActionID: bad-2")
    bad_format = parse_block(await raw.block())
    assert list(bad_format) == list(parse_block(capture_block(SESSION, b"Event: RequestBadFormat")))
    assert bad_format["RequestType"] == "Action: NoSuchAction"
    await raw.send("Action: Logoff", "ActionID: bye")
    assert await raw.block() == capture_block(SESSION, b"Response: Goodbye")
    assert await raw.reader.read() == b""  # and the fake hangs up
    await raw.close()
    assert fake.logins == 1


async def test_fake_queue_answers_match_capture(fake: FakeAmiServer) -> None:
    fake.add_queue(waitq_like_capture())
    raw, _ = await RawAmi.connect(fake)
    await raw.login(fake)
    await raw.send("Action: QueueStatus", "ActionID: qs-wait", "Queue: waitq")
    assert await raw.until(b"Event: QueueStatusComplete") == capture_blocks_between(
        QUEUE_WAIT, b"Response: Success\r\nActionID: qs-wait", b"Event: QueueStatusComplete")
    await raw.send("Action: QueueSummary", "ActionID: qsum", "Queue: waitq")
    assert await raw.until(b"Event: QueueSummaryComplete") == capture_blocks_between(
        QUEUE_WAIT, b"Response: Success\r\nActionID: qsum", b"Event: QueueSummaryComplete")
    await raw.close()


async def test_fake_originate_and_redirect_match_capture(fake: FakeAmiServer) -> None:
    fake.set_originate_outcome("Local/s@busy/n", "busy")
    raw, _ = await RawAmi.connect(fake)
    await raw.login(fake)
    await raw.send("Action: Originate", "ActionID: cb-busy", "Channel: Local/s@busy/n",
                   "Application: Wait", "Data: 1", "Async: true")
    assert await raw.block() == capture_block(SESSION_2, b"Response: Success\r\nActionID: cb-busy")
    captured_event = next(b for b in read_capture(SESSION_2)
                          if b.startswith(b"Event: OriginateResponse\r\nPrivilege: call,all\r\n"
                                          b"ActionID: cb-busy"))
    assert await raw.block() == captured_event + b"\r\n\r\n"
    # as in the capture, the failed Local channel's Hangup follows (cause 0, Unknown)
    hangup = parse_block(await raw.block())
    assert hangup["Event"] == "Hangup" and hangup["Channel"].startswith("Local/s@busy-")
    assert (hangup["Cause"], hangup["Cause-txt"]) == ("0", "Unknown")

    # A synchronous Originate answers only once the outcome is known.
    await raw.send("Action: Originate", "ActionID: sync-1", "Channel: Local/s@busy/n",
                   "Context: c", "Exten: s")
    assert parse_block(await raw.block()) == {
        "Response": "Error", "ActionID": "sync-1", "Message": "Originate failed"}

    fake.add_channel("Local/s@ivr-in-00000005;2")
    await raw.send("Action: Redirect", "ActionID: redirect-1",
                   "Channel: Local/s@ivr-in-00000005;2", "Context: toqueue", "Exten: s",
                   "Priority: 1")
    assert await raw.block() == capture_block(SESSION_2, b"Response: Success\r\nActionID: redirect-1")
    assert fake.redirects == [("Local/s@ivr-in-00000005;2", "toqueue", "s", "1")]
    await raw.close()


async def test_fake_refuses_actions_before_login_and_bad_secrets(fake: FakeAmiServer) -> None:
    raw, _ = await RawAmi.connect(fake)
    await raw.send("Action: Ping", "ActionID: early")
    assert parse_block(await raw.block())["Message"] == "Permission denied"
    await raw.send("Action: Login", "ActionID: l", "Username: ivr", "Secret: wrong")
    assert parse_block(await raw.block())["Message"] == "Authentication failed"
    assert await raw.reader.read() == b""
    await raw.close()
    assert fake.logins == 0


def test_separate_app_args_follows_asterisk() -> None:
    assert separate_app_args("A=1,B=2") == ["A=1", "B=2"]
    assert separate_app_args('A="x,y",B=f(1,2)') == ["A=x,y", "B=f(1,2)"]
    assert separate_app_args(r"A=a\,b\\c") == [r"A=a,b\c"]
    assert separate_app_args("A=1,") == ["A=1", ""]


# -- header safety -------------------------------------------------------------------


def test_clean_value_and_names() -> None:
    assert clean_value("a\r\nAction: Command\nb\rc\x00d") == "a Action: Command b c d"
    assert clean_value(True) == "true" and clean_value(30000) == "30000"
    assert format_originate_variable("__IVR_SESSION", 'a,b"c') == r'__IVR_SESSION=a\,b\"c'
    for bad in ["", "A=B", "A,B", "A B", "X\r\nAction", "CALLERID(num", "A:B"]:
        with pytest.raises(ValueError):
            format_originate_variable(bad, "v")
    assert format_originate_variable("CALLERID(num)", "1") == "CALLERID(num)=1"


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60))
def test_escaped_originate_value_arrives_literally_as_one_variable(value: str) -> None:
    headers = {"Variable": [format_originate_variable("IVR_NOTE", value)]}
    assert originate_variables(headers) == {"IVR_NOTE": clean_value(value)}


async def test_header_injection_never_reaches_the_wire(fake: FakeAmiServer,
                                                       client: AmiClient) -> None:
    evil = "s-1\r\nAction: Command\r\nCommand: core restart now\r\n"
    fake.set_originate_outcome("Local/s@ivr-callback/n", "answered")
    result = await client.originate_and_wait(
        "Local/s@ivr-callback/n", context="ivr-callback", exten="s",
        variables={"__IVR_SESSION": evil, "IVR_NOTE": 'a,B=2 "q" \\ (x) [y]'},
        caller_id="Evil\r\nAction: Hangup <123>")
    assert result.answered
    await client.setvar(result.channel, "IVR_SUMMARY", "ok\nAction: Hangup\nChannel: x")
    await client.action({"Action": "Ping", "Note": "a\r\n\r\nAction: Command\r\nCommand: x"})
    with pytest.raises(ValueError):
        await client.action({"Action": "Ping", "Bad\r\nAction: Command": "x"})
    with pytest.raises(ValueError):
        await client.setvar(result.channel, "X\nAction: Command", "v")

    assert [header(a, "Action") for a in fake.actions] == [
        "Login", "Originate", "Setvar", "Ping"]
    assert all("Command" not in action for action in fake.actions)
    originate = fake.originated[0]
    assert originate.variables == {
        "__IVR_SESSION": "s-1 Action: Command Command: core restart now ",
        "IVR_NOTE": 'a,B=2 "q" \\ (x) [y]'}
    assert header(originate.action, "CallerID") == "Evil Action: Hangup <123>"
    assert fake.channels[result.channel]["IVR_SUMMARY"] == "ok Action: Hangup Channel: x"


# -- client lifecycle ---------------------------------------------------------------------


def test_constructor_enforces_the_limits() -> None:
    with pytest.raises(ValueError):
        AmiClient("127.0.0.1", 5038, "u", "s", ping_interval=31)
    with pytest.raises(ValueError):
        AmiClient("127.0.0.1", 5038, "u", "s", max_backoff=61)
    with pytest.raises(ValueError):
        AmiClient("127.0.0.1", 5038, "u", "s", initial_backoff=2, max_backoff=1)


def test_backoff_is_exponential_and_capped() -> None:
    no_jitter = [backoff_delay(n, initial=0.5, cap=60, rand=lambda: 0.0) for n in range(10)]
    assert no_jitter == [0.5, 1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert all(backoff_delay(n, initial=0.5, cap=60) <= 60 for n in range(200))
    assert min(backoff_delay(9, initial=0.5, cap=60, rand=lambda: 1.0) for _ in range(3)) >= 48


async def test_login_and_state_changes(fake: FakeAmiServer) -> None:
    ami = make_client(fake)
    states: list[str] = []
    ami.on_state_change(states.append)
    assert ami.state == "disconnected"
    await ami.start()
    assert states == ["connecting", "connected"]
    assert ami.state is AmiState.CONNECTED and ami.version == "11.0.0"
    assert fake.logins == 1
    login = fake.actions_named("Login")[0]
    assert (header(login, "Username"), header(login, "Events")) == ("ivr", "on")
    assert header(login, "ActionID").startswith("ivr-")
    await ami.stop()
    assert states[-1] == "disconnected"
    assert fake.actions_named("Logoff")
    await asyncio.sleep(0.15)
    assert fake.logins == 1 and fake.session_count == 0  # no reconnect after stop()


async def test_start_does_not_raise_when_asterisk_is_down(fake: FakeAmiServer) -> None:
    await fake.stop()
    ami = make_client(fake)
    await ami.start()  # returns after the first failed attempt
    assert ami.state != "connected"
    with pytest.raises(AmiDisconnected) as raised:
        await ami.action({"Action": "Ping"})
    assert raised.value.sent is False
    await fake.start()
    await ami.wait_connected(timeout=3)
    assert (await ami.ping())["Ping"] == "Pong"
    await ami.stop()


async def test_refused_login_keeps_retrying(fake: FakeAmiServer) -> None:
    ami = make_client(fake, secret="wrong", max_backoff=0.02)
    await ami.start()
    assert ami.state != "connected"
    await fake.wait_for_action("Login", count=3)
    assert fake.logins == 0
    await ami.stop()


async def test_reconnects_after_drop(fake: FakeAmiServer, client: AmiClient) -> None:
    states: list[str] = []
    client.on_state_change(states.append)
    await fake.drop()
    await eventually(lambda: fake.logins == 2 and client.state == "connected")
    assert states == ["disconnected", "connecting", "connected"]
    assert (await client.ping())["Ping"] == "Pong"


async def test_reconnects_after_asterisk_restart_with_capped_backoff(fake: FakeAmiServer) -> None:
    ami = make_client(fake, initial_backoff=0.01, max_backoff=0.05)
    shutdowns: list[AmiMessage] = []
    ami.on_event("Shutdown", shutdowns.append)
    await ami.start()
    attempts: list[float] = []
    states: list[str] = []

    def on_state(state: str) -> None:
        states.append(state)
        if state == "connecting":
            attempts.append(time.monotonic())

    ami.on_state_change(on_state)
    await fake.stop()  # Asterisk shuts down: Event: Shutdown, then the socket closes
    await eventually(lambda: ami.state != "connected")
    await asyncio.sleep(0.6)
    await fake.start()  # same port
    await ami.wait_connected(timeout=3)
    assert len(shutdowns) == 1 and shutdowns[0]["Restart"] == "True"
    assert states[0] == "disconnected" and states[-1] == "connected"
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert len(attempts) >= 6, attempts  # kept trying while Asterisk was down
    assert max(gaps) < 0.05 + 0.5, gaps  # ...never waiting past the cap (uncapped, the 6th wait would be 1.6 s)
    assert fake.logins == 2
    await ami.stop()


async def test_in_flight_action_fails_fast_on_drop(fake: FakeAmiServer) -> None:
    ami = make_client(fake, action_timeout=10.0)
    await ami.start()
    fake.ignore_action("QueueStatus")
    pending = asyncio.create_task(ami.queue_status("support"))
    await fake.wait_for_action("QueueStatus")
    started = time.monotonic()
    await fake.drop()
    with pytest.raises(AmiDisconnected) as raised:
        await pending
    assert time.monotonic() - started < 1.0
    assert raised.value.sent is True and raised.value.action == "QueueStatus"
    await ami.stop()


async def test_originate_waiting_for_its_outcome_fails_fast_on_drop(fake: FakeAmiServer) -> None:
    ami = make_client(fake, action_timeout=10.0)
    await ami.start()
    fake.originate_delay = 30.0
    pending = asyncio.create_task(ami.originate_and_wait(
        "PJSIP/100", context="ivr-callback", exten="s"))
    await fake.wait_for_action("Originate")
    await asyncio.sleep(0.05)  # the "successfully queued" answer is in
    started = time.monotonic()
    await fake.drop()
    with pytest.raises(AmiDisconnected) as raised:
        await pending
    assert time.monotonic() - started < 1.0 and raised.value.sent is True
    await ami.stop()


async def test_stop_fails_actions_in_flight(fake: FakeAmiServer) -> None:
    ami = make_client(fake, action_timeout=10.0)
    await ami.start()
    fake.ignore_action("Getvar")
    pending = asyncio.create_task(ami.getvar(None, "X"))
    await fake.wait_for_action("Getvar")
    await ami.stop()
    with pytest.raises(AmiDisconnected):
        await pending


async def test_keepalive_pings(fake: FakeAmiServer) -> None:
    ami = make_client(fake, ping_interval=0.05)
    await ami.start()
    await fake.wait_for_action("Ping", count=3, timeout=2)
    assert ami.state == "connected" and fake.logins == 1
    await ami.stop()


async def test_missing_pong_drops_and_reopens_the_link(fake: FakeAmiServer) -> None:
    ami = make_client(fake, ping_interval=0.05, action_timeout=0.2)
    await ami.start()
    fake.ignore_action("Ping")
    await eventually(lambda: fake.logins >= 2)
    fake.clear_action_rules()
    await ami.wait_connected(timeout=3)
    assert (await ami.ping())["Ping"] == "Pong"
    await ami.stop()


# -- actions ----------------------------------------------------------------------------------


async def test_action_timeout_and_late_answer(fake: FakeAmiServer) -> None:
    ami = make_client(fake, action_timeout=0.3)
    await ami.start()
    fake.channels["SIP/1-1"] = {"A": "1", "B": "2"}
    fake.ignore_action("Getvar")
    started = time.monotonic()
    with pytest.raises(AmiActionTimeout) as raised:
        await ami.getvar("SIP/1-1", "A")
    assert 0.25 < time.monotonic() - started < 1.5  # action_timeout
    assert (raised.value.action, raised.value.timeout) == ("Getvar", 0.3)

    fake.clear_action_rules()
    fake.delay_action("Getvar", 0.2)
    with pytest.raises(AmiActionTimeout):
        await ami.action({"Action": "Getvar", "Channel": "SIP/1-1", "Variable": "A"},
                         timeout=0.05)
    fake.clear_action_rules()
    assert await ami.getvar("SIP/1-1", "B") == "2"
    await asyncio.sleep(0.25)  # the late answer to "A" arrives and is dropped
    assert await ami.getvar("SIP/1-1", "B") == "2"
    assert ami.state == "connected" and fake.logins == 1
    await ami.stop()


async def test_error_responses_raise(client: AmiClient) -> None:
    with pytest.raises(AmiActionError) as raised:
        await client.action({"Action": "NoSuchAction"})
    assert raised.value.message == (
        "Invalid/unknown command: NoSuchAction. Use Action: ListCommands to show "
        "available commands.")
    with pytest.raises(AmiActionError, match="Channel does not exist"):
        await client.redirect("SIP/gone-1", "ivr-queue", "s")
    with pytest.raises(AmiActionError, match="No such channel"):
        await client.getvar("SIP/gone-1", "X")


@pytest.mark.parametrize("outcome, response, reason", [
    ("answered", "Success", 4), ("busy", "Failure", 5), ("noanswer", "Failure", 3)])
async def test_originate_and_wait_outcomes(fake: FakeAmiServer, client: AmiClient,
                                           outcome: str, response: str, reason: int) -> None:
    fake.set_originate_outcome("Local/s@ivr-callback/n", outcome)
    result = await client.originate_and_wait(
        "Local/s@ivr-callback/n", context="ivr-callback", exten="s",
        variables={"IVR_SESSION": "s-42"}, caller_id="IVR <4000>", timeout_ms=20000)
    assert (result.response, result.reason, result.outcome) == (response, reason, outcome)
    sent = fake.actions_named("Originate")[0]
    assert header(sent, "ActionID") == result.action_id
    assert (header(sent, "Timeout"), header(sent, "Async"), header(sent, "Priority")) == (
        "20000", "true", "1")
    if outcome == "answered":
        assert result.channel.startswith("Local/s@ivr-callback-") and result.uniqueid
        assert fake.channels[result.channel]["IVR_SESSION"] == "s-42"
    else:
        assert (result.channel, result.uniqueid) == ("Local/s@ivr-callback/n", None)


async def test_concurrent_originates_match_by_action_id(fake: FakeAmiServer,
                                                        client: AmiClient) -> None:
    fake.set_originate_outcome("PJSIP/busy", "busy")
    fake.set_originate_outcome("PJSIP/away", "noanswer")
    # An OriginateResponse with someone else's ActionID is not ours.
    await fake.replay_events(SESSION_2, names=["OriginateResponse"])
    results = await asyncio.gather(*[
        client.originate_and_wait(channel, context="c", exten="s", action_id=action_id)
        for channel, action_id in [("PJSIP/busy", "cb-1"), ("PJSIP/ok", "cb-2"),
                                   ("PJSIP/away", "cb-3")]])
    assert [(r.action_id, r.outcome) for r in results] == [
        ("cb-1", "busy"), ("cb-2", "answered"), ("cb-3", "noanswer")]


async def test_originate_errors_and_timeouts(fake: FakeAmiServer, client: AmiClient) -> None:
    fake.missing_extensions.add(("nowhere", "s"))
    with pytest.raises(AmiActionError) as raised:
        await client.originate("PJSIP/100", context="nowhere", exten="s")
    assert raised.value.message == "Extension does not exist."
    fake.originate_delay = 5.0
    with pytest.raises(AmiActionTimeout):
        await client.originate_and_wait("PJSIP/100", context="c", exten="s", timeout=0.1)
    action_id = await client.originate("PJSIP/100", context="c", exten="s")
    assert action_id.startswith("ivr-")


async def test_queue_status_and_summary(fake: FakeAmiServer, client: AmiClient) -> None:
    fake.add_queue(waitq_like_capture())
    fake.add_queue(FakeQueue(name="support", completed=2, service_level_perf=100.0,
                             members=[FakeQueueMember("Agent One", "Local/agent1@agents/n")]))
    status = await client.queue_status("waitq")
    assert status.params is not None and status.params.calls == 3
    assert [(e.position, e.wait, e.caller_id_num) for e in status.entries] == [
        (1, 6, "13800000001"), (2, 4, "13800000002"), (3, 3, "13800000003")]
    assert [(m.name, m.status) for m in status.members] == [("Slow Agent", 2)]
    raw = await client.action({"Action": "QueueStatus"})
    assert isinstance(raw, list) and raw[-1]["Event"] == "QueueStatusComplete"
    assert raw[-1]["ListItems"] == str(len(raw) - 2) == "7"

    summary = await client.queue_summary("waitq")
    assert summary is not None
    assert (summary.logged_in, summary.available, summary.callers,
            summary.longest_hold_time) == (1, 0, 3, 6)
    support = await client.queue_summary("support")
    assert support is not None and (support.available, support.callers) == (1, 0)
    empty = await client.queue_status("nosuchqueue")
    assert (empty.params, empty.members, empty.entries) == (None, [], [])
    assert await client.queue_summary("nosuchqueue") is None


async def test_getvar_setvar_redirect(fake: FakeAmiServer, client: AmiClient) -> None:
    fake.add_channel("PJSIP/200-00000001", LANG="zh")
    assert await client.getvar("PJSIP/200-00000001", "LANG") == "zh"
    assert await client.getvar("PJSIP/200-00000001", "UNSET") == ""
    await client.setvar("PJSIP/200-00000001", "__IVR_TRAIL", "menu>余额 \"quoted\"")
    assert await client.getvar("PJSIP/200-00000001", "__IVR_TRAIL") == "menu>余额 \"quoted\""
    await client.setvar(None, "IVR_GLOBAL", 7)
    assert await client.getvar(None, "IVR_GLOBAL") == "7"
    response = await client.redirect("PJSIP/200-00000001", "ivr-queue", "support", 2)
    assert response["Message"] == "Redirect successful"
    assert fake.redirects == [("PJSIP/200-00000001", "ivr-queue", "support", "2")]


# -- events ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_CAPTURES, ids=lambda p: p.name)
async def test_replayed_events_arrive_in_order_with_their_fields(fake: FakeAmiServer,
                                                                  client: AmiClient,
                                                                  path: Path) -> None:
    await asyncio.sleep(0.05)  # let the login's own events pass
    received: list[AmiMessage] = []
    client.on_event("*", received.append)
    expected = [parse_block(b) for b in read_capture(path) if b.startswith(b"Event:")]
    assert await fake.replay_events(path) == len(expected)
    await eventually(lambda: len(received) >= len(expected))
    assert [m.to_dict() for m in received] == expected


async def test_event_patterns_and_isolated_callbacks(fake: FakeAmiServer,
                                                     client: AmiClient) -> None:
    queue_events: list[str] = []
    connects: list[AmiMessage] = []
    bridged: list[str] = []
    seen: list[str] = []

    def broken(event: AmiMessage) -> None:
        raise RuntimeError("a buggy subscriber")

    async def on_bridge(event: AmiMessage) -> None:
        await asyncio.sleep(0)
        bridged.append(event["BridgeUniqueid"])

    client.on_event("Queue*", lambda e: queue_events.append(e["Event"]))
    client.on_event("agentconnect", connects.append)  # names match case-insensitively
    client.on_event("*", broken)
    client.on_event("BridgeEnter", on_bridge)
    unsubscribe = client.on_event("*", lambda e: seen.append(e["Event"]))
    sent = await fake.replay_events(SESSION_2)
    await eventually(lambda: len(seen) == sent and len(bridged) == 6)
    assert set(queue_events) == {"QueueCallerJoin", "QueueCallerLeave", "QueueMemberStatus",
                                 "QueueParams", "QueueMember", "QueueStatusComplete"}
    assert len(connects) == 3 and connects[0]["MemberName"] == "Agent One"
    assert client.state == "connected" and fake.logins == 1  # the broken callback hurt nothing
    unsubscribe()
    users: list[AmiMessage] = []
    client.on_event("UserEvent", users.append)
    await fake.emit({"Event": "UserEvent", "UserEvent": "IvrTest", "Note": "张三"})
    await eventually(lambda: len(users) == 1)
    assert users[0]["Note"] == "张三" and len(seen) == sent  # unsubscribed: not seen


async def test_emitted_events_and_subscriptions_survive_reconnect(fake: FakeAmiServer,
                                                                  client: AmiClient) -> None:
    notes: list[str] = []
    client.on_event("UserEvent", lambda e: notes.append(e["Note"]))
    await fake.emit({"Event": "UserEvent", "Note": "before 张三"})
    await eventually(lambda: len(notes) == 1)
    await fake.drop()
    await eventually(lambda: fake.logins == 2 and client.state == "connected")
    await fake.emit({"Event": "UserEvent", "Note": "after"})
    await eventually(lambda: len(notes) == 2)
    assert notes == ["before 张三", "after"]
