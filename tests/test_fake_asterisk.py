"""AgiChannel against the fake Asterisk over real sockets on 127.0.0.1.

Replay mode checks that a server built on AgiChannel sends each capture's
exact bytes and gets the README's documented results back; scripted mode
checks the fake answers like Asterisk 22 did and plays a caller.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ivr.agi.channel import AgiChannel, RecordResult
from ivr.agi.protocol import (
    AgiArgumentError,
    AgiCommandTimeout,
    AgiFileMissing,
    AgiHangup,
    AgiInvalidCommand,
    AgiProtocolError,
    AgiUsageError,
    ReplyFramer,
    quote,
    sanitize,
)
from ivr.testing import (
    CALLER_HANGUP,
    SILENCE,
    AppOutcome,
    FakeAsterisk,
    FakeCallResult,
    ReplayMismatch,
    ScriptedCaller,
    build_env,
)

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
Scenario = Callable[[AgiChannel], Awaitable[Any]]


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def env_value(capture: dict, key: str) -> str:
    for line in capture["env"]:
        name, _, value = line.partition(": ")
        if name == key:
            return value
    raise KeyError(key)


@asynccontextmanager
async def agi_server(
    scenario: Scenario, *, close: bool = True, **channel_kw: Any
) -> AsyncIterator[tuple[int, asyncio.Future]]:
    """A FastAGI server on an ephemeral port running ``scenario`` for one call."""
    outcome: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel: AgiChannel | None = None
        try:
            channel = await AgiChannel.accept(reader, writer, **channel_kw)
            value = await scenario(channel)
            if not outcome.done():
                outcome.set_result((value, channel))
        except Exception as exc:  # reported to the test through the future
            if not outcome.done():
                outcome.set_exception(exc)
        finally:
            if close:
                if channel is not None:
                    await channel.close()
                else:
                    writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], outcome
    finally:
        server.close()
        await server.wait_closed()


async def call(
    scenario: Scenario, make_fake: Callable[[int], FakeAsterisk], **server_kw: Any
) -> tuple[Any, AgiChannel, FakeCallResult]:
    """Run one call: the server's scenario against the fake; server errors win."""
    async with agi_server(scenario, **server_kw) as (port, outcome):
        fake_task = asyncio.create_task(make_fake(port).run())
        await asyncio.wait({fake_task, outcome}, timeout=15, return_when=asyncio.ALL_COMPLETED)
        if not outcome.done():
            outcome.cancel()
        value, channel = outcome.result()
        return value, channel, fake_task.result()


# ---------------------------------------------------------------------------
# Replay: the server issues each capture's exact commands


async def menu(ch: AgiChannel) -> None:
    await ch.answer()
    assert await ch.stream_file("demo-congrats", "0123456789*#") == ("2", 9760)
    assert await ch.get_data("beep", 4000, 3) == ("123", False)
    assert await ch.wait_for_digit(1500) == "#"
    assert await ch.get_data("beep", 1000, 4) == ("", True)
    assert await ch.say_digits("42") is None
    await ch.set_variable("IVR_TRAIL", 'menu>balance 中文 "quoted"')
    assert await ch.get_variable("IVR_TRAIL") == 'menu>balance 中文 "quoted"'
    assert await ch.get_full_variable("${CALLERID(num)} ${CALLERID(name)}") == "13800138000 "
    assert await ch.get_variable("NO_SUCH_VAR") is None
    with pytest.raises(AgiInvalidCommand):
        await ch.command("FOO BAR")
    with pytest.raises(AgiUsageError) as usage:
        await ch.command("STREAM FILE")
    assert usage.value.usage.startswith("Send the given file")
    assert await ch.channel_status() == 6
    assert await ch.exec("Playback", "beep") == 0
    assert await ch.exec("NoSuchApplication", "x") == -2
    assert await ch.record_file("/tmp/agi-rec", "wav", "#", 1500, silence_s=1) == RecordResult(None, 0, "timeout")
    await ch.verbose("hello from agi", 1)
    with pytest.raises(AgiFileMissing):
        await ch.stream_file("no-such-sound-file")
    assert not ch.hung_up  # a missing file is not a hangup
    await ch.hangup()
    assert ch.hung_up and ch.hangup_reason == "local"
    assert ch.commands_sent == 19 and len(ch.turnarounds) == 19


async def hangup(ch: AgiChannel) -> None:
    await ch.answer()
    with pytest.raises(AgiHangup) as info:
        await ch.stream_file("demo-congrats")
    assert info.value.reason == "result=-1"
    assert info.value.result is not None and info.value.result.endpos == 12000
    assert ch.hung_up and ch.hangup_reason == "result=-1"
    sent = ch.commands_sent
    with pytest.raises(AgiHangup):  # refused without writing
        await ch.stream_file("demo-congrats")
    assert ch.commands_sent == sent
    # The capture's server sent them anyway: the raw command still reports the hangup.
    with pytest.raises(AgiHangup) as info:
        await ch.command("STREAM FILE", "demo-congrats", quote(""))
    assert info.value.reason == "HANGUP"
    with pytest.raises(AgiHangup) as info:
        await ch.command("GET DATA", "beep", 2000, 3)
    assert info.value.reason == "511"
    await ch.set_variable("AFTER_HANGUP", "1")  # still answered on a dead channel
    assert ch.hangup_reason == "result=-1"


async def queue(ch: AgiChannel) -> None:
    await ch.answer()
    await ch.set_variable("__IVR_SESSION", "s-123")
    assert await ch.exec("Queue", "support,,,,20") == -1
    assert ch.hung_up and ch.hangup_reason == "result=-1"
    assert await ch.get_variable("QUEUESTATUS") is None


async def queue_continue(ch: AgiChannel) -> None:
    await ch.answer()
    await ch.set_variable("__IVR_SESSION", "s-456")
    assert await ch.exec("Queue", "support,c,,,20") == 0
    assert await ch.get_variable("QUEUESTATUS") == "CONTINUE"
    assert await ch.get_variable("ANSWEREDTIME") == "3"
    assert await ch.stream_file("beep", "12345") == (None, 3404)
    assert await ch.wait_for_digit(8000) == "5"
    await ch.hangup()


async def getdata_partial(ch: AgiChannel) -> None:
    await ch.answer()
    assert await ch.get_data("beep", 3000, 4) == ("12", True)
    assert await ch.stream_file("/usr/share/asterisk/sounds/en/beep", "12") == (None, 3404)


async def moh(ch: AgiChannel) -> None:
    await ch.answer()
    assert await ch.exec("MusicOnHold", "default,3") == 0
    assert await ch.exec("StartMusicOnHold", "default") == 0
    assert await ch.wait_for_digit(4000) is None
    assert await ch.exec("StopMusicOnHold") == 0
    await ch.hangup()


async def redirect(ch: AgiChannel) -> None:
    await ch.answer()
    with pytest.raises(AgiHangup):
        await ch.wait_for_digit(15000)
    # After the HANGUP line GET VARIABLE still answers: the value is returned.
    assert await ch.get_variable("CHANNEL") == ch.env["agi_channel"]
    with pytest.raises(AgiHangup) as info:
        await ch.command("WAIT FOR DIGIT", 1000)
    assert info.value.reason == "511"
    assert ch.hangup_reason == "result=-1"


def audiosocket(capture: str) -> Scenario:
    uuid_and_host = load(capture)["exchanges"][1]["send"].split(" ", 2)[2]

    async def scenario(ch: AgiChannel) -> None:
        await ch.answer()
        assert await ch.exec("AudioSocket", uuid_and_host) == 0
        assert await ch.get_variable("AUDIOSOCKET_STATUS") is None

    return scenario


async def process(ch: AgiChannel) -> None:
    assert ch.env["agi_arg_1"] == "arg1"
    await ch.answer()
    assert await ch.get_variable("CHANNEL") == ch.env["agi_channel"]
    assert await ch.stream_file("beep") == (None, 3404)


REPLAYS: dict[str, Scenario] = {
    "agi-menu.json": menu,
    "agi-hangup.json": hangup,
    "agi-queue.json": queue,
    "agi-queue_continue.json": queue_continue,
    "agi-getdata_partial.json": getdata_partial,
    "agi-moh.json": moh,
    "agi-redirect.json": redirect,
    "agi-speech.json": audiosocket("agi-speech.json"),
    "agi-speech_dtmf.json": audiosocket("agi-speech_dtmf.json"),
    "process-agi.json": process,
    "process-eagi.json": process,
}


def test_every_agi_capture_has_a_replay() -> None:
    names = {p.name for p in FIXTURES.glob("agi-*.json")} | {p.name for p in FIXTURES.glob("process-*.json")}
    assert names == set(REPLAYS)


@pytest.mark.parametrize("capture", sorted(REPLAYS))
async def test_replay_capture(capture: str) -> None:
    data = load(capture)
    _, channel, result = await call(REPLAYS[capture], lambda port: FakeAsterisk.replay(FIXTURES / capture, port=port))
    assert result.mismatches == []
    assert result.commands == [exchange["send"] for exchange in data["exchanges"]]
    assert result.raw_received == "".join(e["send"] + "\n" for e in data["exchanges"]).encode("utf-8")
    assert result.server_closed and not result.idle_timed_out
    assert result.close_delay is not None and result.close_delay < 1.0
    assert channel.closed
    assert channel.env == dict(line.split(": ", 1) if ": " in line else (line[:-1], "") for line in data["env"])


async def test_replay_mismatch_is_reported_clearly() -> None:
    async def wrong(ch: AgiChannel) -> None:
        await ch.answer()
        with pytest.raises(AgiHangup):  # the fake hangs up on the stray command
            await ch.stream_file("wrong-file", "0123456789*#")

    with pytest.raises(ReplayMismatch) as info:
        await call(wrong, lambda port: FakeAsterisk.replay(FIXTURES / "agi-menu.json", port=port))
    message = str(info.value)
    assert "agi-menu.json" in message and "exchange 2/19" in message
    assert "expected 'STREAM FILE demo-congrats \"0123456789*#\"'" in message
    assert "got 'STREAM FILE wrong-file \"0123456789*#\"'" in message
    assert info.value.result.commands == ["ANSWER", 'STREAM FILE wrong-file "0123456789*#"']


async def test_replay_reports_a_server_that_stops_early_or_never_closes() -> None:
    async def short(ch: AgiChannel) -> None:
        await ch.answer()

    with pytest.raises(ReplayMismatch, match="expected 'SET VARIABLE __IVR_SESSION"):
        await call(short, lambda port: FakeAsterisk.replay(FIXTURES / "agi-queue.json", port=port))

    _, channel, result = await call(
        short,
        lambda port: FakeAsterisk.replay(FIXTURES / "agi-queue.json", port=port, strict=False, idle_timeout=0.3),
        close=False,
    )
    await channel.close()
    assert result.idle_timed_out and not result.server_closed
    assert "sent nothing for 0.3 s" in result.mismatches[0]


# ---------------------------------------------------------------------------
# Scripted mode answers like the captures (a raw server sends the exact lines)


def scripted_kwargs(capture: str) -> dict[str, Any]:
    data = load(capture)
    channel = env_value(data, "agi_channel")
    return {
        "agi-menu.json": dict(
            inputs=["2", "123#", SILENCE],
            sound_lengths={"demo-congrats": 19520},
            missing_files={"no-such-sound-file"},
        ),
        "agi-hangup.json": dict(hangup_after=2),
        "agi-queue.json": {},
        "agi-getdata_partial.json": dict(inputs=["12", SILENCE]),
        "agi-moh.json": {},
        "agi-redirect.json": dict(hangup_after=2, channel=channel),
        "agi-speech.json": {},
        "process-agi.json": dict(channel=channel),
    }[capture]


@pytest.mark.parametrize(
    "capture",
    ["agi-menu.json", "agi-hangup.json", "agi-queue.json", "agi-getdata_partial.json", "agi-moh.json",
     "agi-redirect.json", "agi-speech.json", "process-agi.json"],
)  # fmt: skip
async def test_scripted_fake_answers_like_asterisk(capture: str) -> None:
    data = load(capture)
    replies: list[list[str]] = []
    done = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await AgiChannel.read_env(reader)
            for exchange in data["exchanges"]:
                writer.write(exchange["send"].encode("utf-8") + b"\n")
                framer = ReplyFramer()
                while not framer.feed((await reader.readline()).decode("utf-8")):
                    pass
                replies.append(framer.lines)
        finally:
            writer.close()
            done.set_result(None)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        result = await FakeAsterisk("127.0.0.1", port, **scripted_kwargs(capture)).run()
        await done
    assert replies == [exchange["recv"] for exchange in data["exchanges"]]
    assert result.replies == replies
    assert result.server_closed


# ---------------------------------------------------------------------------
# Hangups


async def test_hangup_sequence_and_dead_channel_guard() -> None:
    async def scenario(ch: AgiChannel) -> None:
        await ch.answer()
        with pytest.raises(AgiHangup):
            await ch.get_data("enter-id", 5000, 18)
        refused: list[Callable[[], Awaitable[object]]] = [
            ch.answer,
            lambda: ch.stream_file("beep"),
            lambda: ch.wait_for_digit(100),
            ch.channel_status,
            lambda: ch.exec("Queue", "support"),
        ]
        for command in refused:
            with pytest.raises(AgiHangup):
                await command()
        await ch.set_variable("IVR_RESULT", "hung up")  # gets HANGUP + 200: allowed, no error
        assert await ch.get_variable("IVR_RESULT") == "hung up"
        await ch.verbose("call ended")
        await ch.hangup()  # no-op once hung up

    _, channel, result = await call(scenario, lambda port: FakeAsterisk(port=port, hangup_after=2))
    assert channel.hangup_reason == "result=-1"
    assert result.commands == [
        "ANSWER",
        "GET DATA enter-id 5000 18",
        'SET VARIABLE IVR_RESULT "hung up"',
        "GET VARIABLE IVR_RESULT",
        'VERBOSE "call ended" 1',
    ]
    assert result.replies[1:3] == [["200 result=-1"], ["HANGUP", "200 result=1"]]
    assert result.hung_up and result.hangup_by == "caller"
    assert result.server_closed


async def test_caller_hangs_up_from_the_script() -> None:
    async def scenario(ch: AgiChannel) -> str:
        await ch.answer()
        assert await ch.get_data("menu", 3000, 1) == ("1", False)
        try:
            await ch.stream_file("goodbye", "#")
        except AgiHangup as exc:
            return exc.reason
        return "no hangup"

    reason, _, result = await call(scenario, lambda port: FakeAsterisk(port=port, inputs=["1", CALLER_HANGUP]))
    assert reason == "result=-1"
    assert result.replies[-1] == ["200 result=-1 endpos=4000"]
    assert result.inputs_left == []


async def test_hangup_during_a_command_that_does_not_wait() -> None:
    async def scenario(ch: AgiChannel) -> str:
        await ch.set_variable("A", "1")
        with pytest.raises(AgiHangup) as info:
            await ch.answer()
        assert info.value.reason == "HANGUP"
        with pytest.raises(AgiHangup):
            await ch.command("ANSWER")
        return ch.hangup_reason or ""

    reason, _, result = await call(scenario, lambda port: FakeAsterisk(port=port, hangup_after=1))
    assert reason == "HANGUP"
    assert result.replies == [["200 result=1"], ["HANGUP", "511 Command Not Permitted on a dead channel or intercept routine"],
                              ["511 Command Not Permitted on a dead channel or intercept routine"]]  # fmt: skip


async def test_hangup_when_script_runs_out() -> None:
    async def scenario(ch: AgiChannel) -> None:
        assert await ch.wait_for_digit(1000) == "9"
        with pytest.raises(AgiHangup):
            await ch.wait_for_digit(1000)

    await call(scenario, lambda port: FakeAsterisk(port=port, inputs=["9"], hangup_when_done=True))


async def test_eof_is_a_hangup() -> None:
    async def scenario(ch: AgiChannel) -> str | None:
        with pytest.raises(AgiHangup) as info:
            await ch.answer()
        assert info.value.reason == "eof"
        with pytest.raises(AgiHangup):
            await ch.command("NOOP")
        return ch.hangup_reason

    async def peer(port: int) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(("\n".join(build_env(port=port)) + "\n\n").encode())
        await writer.drain()
        writer.close()

    async with agi_server(scenario) as (port, outcome):
        await peer(port)
        reason, _ = await asyncio.wait_for(outcome, 5)
    assert reason == "eof"


# ---------------------------------------------------------------------------
# The server closes the socket; the fake records it


async def test_server_close_is_recorded() -> None:
    async def scenario(ch: AgiChannel) -> None:
        await ch.answer()
        await ch.hangup()

    _, _, result = await call(scenario, lambda port: FakeAsterisk(port=port))
    assert result.server_closed and not result.idle_timed_out
    assert result.close_delay is not None and 0 <= result.close_delay < 1.0
    assert result.hangup_by == "server"


async def test_server_that_never_closes_is_reported() -> None:
    async def scenario(ch: AgiChannel) -> None:
        await ch.answer()

    _, channel, result = await call(scenario, lambda port: FakeAsterisk(port=port, idle_timeout=0.3), close=False)
    assert not result.server_closed and result.idle_timed_out
    await channel.close()


# ---------------------------------------------------------------------------
# Scripted caller semantics


async def test_keys_are_taken_one_at_a_time() -> None:
    async def scenario(ch: AgiChannel) -> None:
        await ch.answer()
        assert await ch.stream_file("welcome", "12") == ("1", 4000)  # barge-in takes one key
        assert await ch.get_data("enter-id", 5000, 18) == ("10105199003071239", False)  # '#' ends it
        assert await ch.stream_file("announcement") == (None, 8000)  # '5' is not an escape digit
        assert await ch.stream_file("menu", "1234") == (None, 8000)
        assert await ch.wait_for_digit(2000) == "5"  # ... so it is still there
        assert await ch.get_data("pin", 3000, 4) == ("12", True)  # two keys, then silence
        assert await ch.get_data("pin", 3000, 4) == ("", False)  # '#' at once
        assert await ch.get_data("pin", 3000, 2) == ("34", False)  # max digits, '#' left over
        assert await ch.wait_for_digit(100) == "#"
        assert await ch.wait_for_digit(100) is None  # SILENCE
        assert await ch.get_data("pin", 100, 4) == ("", True)  # nothing left: silence

    _, _, result = await call(
        scenario,
        lambda port: FakeAsterisk(port=port, inputs=["110105199003071239#", "5", "12", SILENCE, "#", "34#", SILENCE]),
    )
    assert result.inputs_left == []
    assert result.played == ["welcome", "enter-id", "announcement", "menu", "pin", "pin", "pin", "pin"]


def test_scripted_caller_validates_inputs() -> None:
    with pytest.raises(ValueError):
        ScriptedCaller(["12x"])
    with pytest.raises(ValueError):
        ScriptedCaller([None])  # type: ignore[list-item]
    assert ScriptedCaller("12#").remaining == ["12#"]


async def test_say_and_record_take_escape_keys() -> None:
    async def scenario(ch: AgiChannel) -> None:
        assert await ch.say_digits("12345", "9") == "9"
        assert await ch.record_file("/tmp/msg", "wav", "#", 60000, beep=True, silence_s=3) == RecordResult(
            "#", 8000, "dtmf"
        )
        assert await ch.record_file("/tmp/msg", "wav", "#", 60000) == RecordResult(None, 0, "timeout")

    _, _, result = await call(scenario, lambda port: FakeAsterisk(port=port, inputs=["9", "#", SILENCE]))
    assert result.commands[1] == 'RECORD FILE /tmp/msg wav "#" 60000 BEEP s=3'
    assert result.commands[2] == 'RECORD FILE /tmp/msg wav "#" 60000 0'


async def test_missing_file_is_not_a_hangup() -> None:
    async def scenario(ch: AgiChannel) -> None:
        with pytest.raises(AgiFileMissing) as info:
            await ch.stream_file("prompts/missing", "1")
        assert info.value.name == "prompts/missing"
        assert not ch.hung_up
        assert await ch.stream_file("beep") == (None, 3404)

    await call(scenario, lambda port: FakeAsterisk(port=port, missing_files={"missing"}))


# ---------------------------------------------------------------------------
# Applications, variables, environment


async def test_exec_outcomes() -> None:
    async def audiosocket(args: str) -> AppOutcome:
        await asyncio.sleep(0)
        return AppOutcome(0, {"HEARD": args.split(",")[0]})

    async def scenario(ch: AgiChannel) -> None:
        assert await ch.exec("NoSuchApp") == -2
        assert await ch.exec("AudioSocket", "abc,127.0.0.1:9092") == 0
        assert await ch.get_variable("HEARD") == "abc"
        assert await ch.exec("Set", "COLOUR=blue") == 0
        assert await ch.get_variable("COLOUR") == "blue"
        assert await ch.exec("Dial", "PJSIP/agent,30,g") == 0
        assert await ch.get_variable("DIALSTATUS") == "ANSWER"
        assert await ch.exec("Dial", "PJSIP/agent,30") == -1
        assert ch.hung_up
        assert await ch.get_variable("DIALSTATUS") == "ANSWER"  # no HANGUP line after a bridge ended

    _, _, result = await call(scenario, lambda port: FakeAsterisk(port=port, apps={"AudioSocket": audiosocket}))
    assert result.executed[0] == ("AudioSocket", "abc,127.0.0.1:9092")
    assert result.hangup_by == "app"


async def test_env_overrides() -> None:
    capture_keys = [line.split(":", 1)[0] for line in load("agi-menu.json")["env"]]

    async def scenario(ch: AgiChannel) -> dict[str, str]:
        assert (
            await ch.get_full_variable("${CALLERID(name)}|${CHANNEL(language)}|${UNIQUEID}") == "张三|zh|1795000000.7"
        )
        return ch.env

    env, _, result = await call(
        scenario,
        lambda port: FakeAsterisk(
            port=port,
            script="balance?lang=zh&node=main",
            callerid="13900000000",
            calleridname="张三",
            dnid="95555",
            uniqueid="1795000000.7",
            channel="PJSIP/trunk-00000001",
            language="zh",
            env={"agi_arg_1": "x"},
        ),
    )
    assert list(env) == [*capture_keys, "agi_arg_1"]
    assert env["agi_network_script"] == "balance?lang=zh&node=main"
    assert env["agi_request"].endswith("/balance?lang=zh&node=main")
    assert (env["agi_callerid"], env["agi_calleridname"], env["agi_dnid"]) == ("13900000000", "张三", "95555")
    assert (env["agi_channel"], env["agi_type"], env["agi_language"]) == ("PJSIP/trunk-00000001", "PJSIP", "zh")
    assert result.env == [f"{k}: {v}" for k, v in env.items()]


# ---------------------------------------------------------------------------
# Injection, limits, timeouts, garbage


async def test_caller_data_never_opens_a_second_command() -> None:
    values = [
        "line\nGET VARIABLE X",
        'quote" HANGUP "',
        "back\\slash\\",
        "nul\x00EXEC Dial x",
        "cr\rHANGUP",
        b"Zh\xe4ng\xff".decode("utf-8", "surrogateescape"),
        "\u2028sep\x85",
    ]

    async def scenario(ch: AgiChannel) -> None:
        for index, value in enumerate(values):
            await ch.set_variable(f"V{index}", value)
            await ch.verbose(value)
            await ch.exec("Playback", value)

    _, _, result = await call(scenario, lambda port: FakeAsterisk(port=port))
    assert len(result.commands) == 3 * len(values)
    assert result.raw_received.count(b"\n") == len(result.commands)
    assert b"\r" not in result.raw_received and b"\x00" not in result.raw_received
    result.raw_received.decode("utf-8")  # strict
    assert result.errors == []
    assert [value for _, value in result.variables_set] == [sanitize(v) for v in values]
    assert [args for _, args in result.executed] == [sanitize(v) for v in values]


async def test_overlong_command_is_refused_before_writing() -> None:
    async def scenario(ch: AgiChannel) -> None:
        with pytest.raises(AgiArgumentError):
            await ch.set_variable("X", "x" * 3000)
        with pytest.raises(ValueError):
            await ch.set_variable("BAD NAME", "x")
        await ch.set_variable("X", "ok")

    _, _, result = await call(scenario, lambda port: FakeAsterisk(port=port))
    assert result.commands == ['SET VARIABLE X "ok"']


async def test_fake_splits_long_lines_like_asterisk() -> None:
    """What build_command's limit prevents: Asterisk runs the tail of a long line as a command."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await AgiChannel.read_env(reader)
        writer.write(b'SET VARIABLE X "' + b"x" * 2100 + b' HANGUP"\n')
        await writer.drain()
        await reader.readline()
        await reader.readline()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        result = await FakeAsterisk(port=server.sockets[0].getsockname()[1]).run()
    assert len(result.commands) == 2
    assert len(result.commands[0].encode()) == 2047
    assert result.commands[1].endswith(' HANGUP"')


async def test_command_timeout_leaves_channel_out_of_step() -> None:
    async def scenario(ch: AgiChannel) -> None:
        with pytest.raises(AgiCommandTimeout):
            await ch.answer()
        with pytest.raises(AgiProtocolError):
            await ch.answer()

    await call(scenario, lambda port: FakeAsterisk(port=port, command_delay=0.5), command_timeout=0.1)


async def _raw_peer(port: int, payload: bytes, *, then_close: bool = True, reply: bytes | None = None) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    if reply is not None:
        await reader.readline()
        writer.write(reply)
        await writer.drain()
        await asyncio.sleep(0.05)
    if then_close:
        writer.close()
        await writer.wait_closed()


ENV = ("\n".join(build_env()) + "\n\n").encode()


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage\n",
        b"200 result=1 endpos=x\n",
        b"520-usage without end\n" + b"x\n" * 300,
        b"200 result=" + b"9" * 70000 + b"\n",
    ],
    ids=["garbage", "bad-endpos", "endless-usage", "overlong"],
)
async def test_garbage_reply_is_a_protocol_error(reply: bytes) -> None:
    async def scenario(ch: AgiChannel) -> None:
        with pytest.raises(AgiProtocolError):
            await ch.answer()
        with pytest.raises(AgiProtocolError):
            await ch.answer()

    async with agi_server(scenario) as (port, outcome):
        await _raw_peer(port, ENV, reply=reply)
        await asyncio.wait_for(outcome, 5)


@pytest.mark.parametrize(
    "payload, error",
    [
        (b"", AgiHangup),
        (b"agi_network: yes\n", AgiProtocolError),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", AgiProtocolError),
        (b"agi_x: " + b"y" * 70000 + b"\n\n", AgiProtocolError),
        (b"".join(b"agi_k%d: v\n" % i for i in range(300)) + b"\n", AgiProtocolError),
    ],
    ids=["eof", "eof-inside", "http-probe", "overlong", "too-many"],
)
async def test_read_env_errors(payload: bytes, error: type[Exception]) -> None:
    async def scenario(ch: AgiChannel) -> None:  # pragma: no cover - accept fails first
        raise AssertionError("environment should have been refused")

    async with agi_server(scenario) as (port, outcome):
        await _raw_peer(port, payload)
        with pytest.raises(error):
            await asyncio.wait_for(outcome, 5)


async def test_read_env_times_out() -> None:
    async def scenario(ch: AgiChannel) -> None:  # pragma: no cover
        raise AssertionError("unreachable")

    async with agi_server(scenario, env_timeout=0.2) as (port, outcome):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"agi_network: yes\n")
        with pytest.raises(AgiProtocolError, match="no complete AGI environment"):
            await asyncio.wait_for(outcome, 5)
        writer.close()
        await writer.wait_closed()


async def test_turnarounds_are_recorded() -> None:
    async def scenario(ch: AgiChannel) -> None:
        for _ in range(5):
            await ch.verbose("tick")

    _, channel, result = await call(scenario, lambda port: FakeAsterisk(port=port, prompt_delay=0.0))
    assert channel.commands_sent == 5 and len(channel.turnarounds) == 5
    assert len(result.turnarounds) == 5 and all(t >= 0 for t in result.turnarounds)
    assert channel.last_command == 'VERBOSE "tick" 1'
