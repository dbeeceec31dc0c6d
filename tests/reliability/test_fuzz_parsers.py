"""Property-based fuzzing of the three wire parsers (hypothesis, deterministic).

Each parser gets real capture lines from ``tests/fixtures/asterisk`` mutated
(characters inserted, deleted, replaced, lines spliced and cut), random bytes,
bad UTF-8, oversized lengths and arbitrary TCP split points. The claim:

* every bad input ends in the module's typed error (``AgiError``,
  ``AmiProtocolError``, ``AudioSocketError``), never ``IndexError``,
  ``UnicodeDecodeError``, ``struct.error``...;
* nothing hangs: every read is bounded (the stream readers are fed and, where
  the test says so, never closed: a reader that waited for more bytes than the
  bound allows would time out the test);
* valid inputs, generated too, round-trip to the right values.

Each test counts the examples it actually ran and reports them with
``rel.tried``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr.audiosocket import (
    DEFAULT_MAX_PAYLOAD,
    AudioSocketError,
    BadFrameLength,
    Frame,
    Kind,
    TruncatedFrame,
    UnknownFrameKind,
    decode_frames,
    encode_frame,
    read_frame,
)
from ivr.agi.channel import AgiChannel
from ivr.agi.protocol import (
    MAX_LINE_BYTES,
    AgiError,
    AgiHangup,
    AgiInvalidCommand,
    AgiProtocolError,
    AgiResult,
    AgiUsageError,
    ReplyFramer,
    parse_env,
    parse_reply,
)
from ivr.ami.errors import AmiError, AmiProtocolError
from ivr.ami.protocol import AmiProtocol, parse_message, parse_stream

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "asterisk"

# Examples per property; three to four properties per parser: ~10k per parser.
N = 1700

FUZZ = settings(max_examples=N, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def fuzz(n: int = N) -> settings:
    return settings(FUZZ, max_examples=n)


# ---------------------------------------------------------------------------
# Seeds from the captures


def _agi_captures() -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(FIXTURES.glob("*agi*.json"))]


AGI_REPLY_LINES = sorted({line for cap in _agi_captures() for ex in cap.get("exchanges", [])
                          for line in ex.get("recv", [])} | {"HANGUP", "100 result=0 Trying...",
                                                             "520-Invalid command syntax.  Proper usage follows:",
                                                             "520 End of proper usage."})
AGI_ENV_LINES = sorted({line for cap in _agi_captures() for line in cap.get("env", [])})
AMI_CAPTURES = [p.read_bytes() for p in sorted(FIXTURES.glob("ami-*.txt"))]
AMI_BLOCKS = sorted({block for data in AMI_CAPTURES
                     for block in data.split(b"\r\n\r\n") if block.strip()})

assert len(AGI_REPLY_LINES) > 20 and len(AGI_ENV_LINES) > 20 and len(AMI_BLOCKS) > 30


# ---------------------------------------------------------------------------
# Generators shared by the three parsers

_NASTY_TEXT = st.sampled_from(["\n", "\r", "\r\n", "\x00", "\\", '"', "(", ")", "=", " ", ":", ": ",
                               "\udcff", "\ufffd", "\u2028", "中文", "-", "result=", "endpos=", "520-",
                               "HANGUP", "200 ", "\t", "\x7f", "\x85"])
_NASTY_BYTES = st.sampled_from([b"\n", b"\r", b"\r\n", b"\r\n\r\n", b"\x00", b"\xff", b"\xc3", b"\xe4\xb8",
                                b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b": ", b"\\", b'"',
                                b"Response: ", b"Event: ", b"ActionID: ", b"\xff\xff", b"\x10\x01\x40"])


@st.composite
def mutated_text(draw, seeds: list[str]) -> str:
    """A seed line with a few random edits (insert, delete, replace, splice, cut)."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "splice", "cut", "repeat"]))
        at = draw(st.integers(0, len(text)))
        if op == "insert":
            piece = draw(st.one_of(_NASTY_TEXT, st.text(max_size=8)))
            text = text[:at] + piece + text[at:]
        elif op == "delete":
            end = draw(st.integers(at, min(len(text), at + 8)))
            text = text[:at] + text[end:]
        elif op == "replace" and at < len(text):
            text = text[:at] + draw(st.characters()) + text[at + 1:]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            text = text[:at] + other[draw(st.integers(0, len(other))):]
        elif op == "cut":
            text = text[:at]
        elif op == "repeat":
            text = text[:at] + text[at:at + 16] * draw(st.integers(2, 50)) + text[at:]
    return text


@st.composite
def mutated_bytes(draw, seeds: list[bytes]) -> bytes:
    data = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["insert", "delete", "flip", "splice", "cut"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert":
            piece = draw(st.one_of(_NASTY_BYTES, st.binary(max_size=8)))
            data = data[:at] + piece + data[at:]
        elif op == "delete":
            data = data[:at] + data[draw(st.integers(at, min(len(data), at + 16))):]
        elif op == "flip" and at < len(data):
            data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            data = data[:at] + other[draw(st.integers(0, len(other))):]
        elif op == "cut":
            data = data[:at]
    return data


def _splits(draw: st.DataObject, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points, as TCP may deliver it."""
    points = sorted(set(draw.draw(st.lists(st.integers(0, len(data)), max_size=8))))
    pieces, last = [], 0
    for p in points + [len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


WAITING = object()


class Runner:
    """One event loop for a whole property (an asyncio.run per example is too slow)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro, timeout: float = 5.0):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def run_ready(self, coro):
        """Run ``coro`` on the bytes already fed: its result, or WAITING when it
        blocks for more input (no wall-clock timer involved)."""
        task = self.loop.create_task(coro)
        for _ in range(20):
            if task.done():
                return task.result()
            self.loop.run_until_complete(asyncio.sleep(0))
        if task.done():
            return task.result()
        task.cancel()
        try:
            self.loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        return WAITING

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def runner():
    r = Runner()
    yield r
    r.close()


# ---------------------------------------------------------------------------
# (a) AGI replies and environments

def _agi_reply_ok(lines: list[str]) -> AgiResult | None:
    """parse_reply and ReplyFramer on ``lines``: a result or a typed error, nothing else."""
    try:
        framer = ReplyFramer()
        for line in lines:
            if framer.feed(line):
                break
    except AgiError:
        pass
    try:
        return parse_reply(lines)
    except AgiError as exc:
        assert isinstance(exc, (AgiProtocolError, AgiInvalidCommand, AgiHangup, AgiUsageError)), type(exc)
        return None


async def _read_reply_over_stream(data: bytes, feed_eof: bool) -> AgiResult | None:
    """Read one reply as the channel does: lines off a real StreamReader, framed, parsed."""
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES + 4096)
    reader.feed_data(data)
    if feed_eof:
        reader.feed_eof()
    framer = ReplyFramer()
    from ivr.agi.channel import _read_line

    while True:
        line = await _read_line(reader, MAX_LINE_BYTES)
        if line is None:
            return None
        if framer.feed(line):
            return parse_reply(framer.lines)


@pytest.mark.reliability("fuzz.agi-reply")
def test_agi_reply_fuzz(rel, runner):
    count = [0]

    @FUZZ
    @given(st.data())
    def prop(data):
        count[0] += 1
        kind = data.draw(st.sampled_from(["mutated", "lines", "bytes", "huge"]))
        if kind == "mutated":
            lines = data.draw(st.lists(mutated_text(AGI_REPLY_LINES), min_size=1, max_size=4))
        elif kind == "lines":
            lines = data.draw(st.lists(st.text(max_size=60), min_size=0, max_size=4))
        elif kind == "bytes":  # as the channel decodes them, with both error handlers
            raw = data.draw(mutated_bytes([l.encode() for l in AGI_REPLY_LINES]))
            lines = [raw.decode("utf-8", data.draw(st.sampled_from(["replace", "surrogateescape"])))]
        else:
            lines = ["200 result=" + "9" * data.draw(st.integers(10, MAX_LINE_BYTES + 10))]
        _agi_reply_ok(lines)
        # The same bytes through a real StreamReader and the channel's line reader.
        wire = "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n"
        eof = data.draw(st.booleans())
        try:
            outcome = runner.run_ready(_read_reply_over_stream(wire, eof))
        except AgiError:
            pass
        else:
            # Without EOF and without a complete reply the reader waits for
            # more bytes (the command timeout's job); with EOF it never waits.
            assert not (eof and outcome is WAITING), "reader waits although the stream was closed"

    prop()
    rel.tried(count[0])
    assert count[0] >= N


@pytest.mark.reliability("fuzz.agi-reply")
def test_agi_reply_valid_round_trip(rel):
    count = [0]
    data_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40)

    @FUZZ
    @given(result=st.one_of(st.integers(-1, 10**9).map(str), st.sampled_from(["", "12#", "*"])),
           data=st.one_of(st.none(), data_text),
           endpos=st.one_of(st.none(), st.integers(0, 10**12)),
           notice=st.booleans())
    def prop(result, data, endpos, notice):
        count[0] += 1
        line = f"200 result={result}"
        if data is not None or endpos is not None:
            line += " "
        if data is not None:
            line += f"({data})"
        if endpos is not None:
            line += f" endpos={endpos}"
        lines = (["HANGUP"] if notice else []) + [line]
        framer = ReplyFramer()
        assert [framer.feed(l) for l in lines][-1] is True
        parsed = parse_reply(lines)
        assert parsed.code == 200 and parsed.result == result
        assert parsed.data == data
        assert parsed.endpos == endpos
        assert parsed.hangup_notice is notice
        assert parsed.value == (int(result) if result.lstrip("-").isdigit() else None)

    prop()
    rel.tried(count[0])


_ENV_VALUE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40)


@pytest.mark.reliability("fuzz.agi-reply")
def test_agi_env_fuzz(rel, runner):
    count = [0]

    @FUZZ
    @given(st.data())
    def prop(data):
        count[0] += 1
        kind = data.draw(st.sampled_from(["mutated", "bytes", "random", "many", "long"]))
        if kind == "mutated":
            lines = data.draw(st.lists(mutated_text(AGI_ENV_LINES), min_size=1, max_size=30))
            wire = "".join(f"{l}\n" for l in lines).encode("utf-8", "surrogateescape") + b"\n"
        elif kind == "bytes":
            seed = "".join(f"{l}\n" for l in AGI_ENV_LINES).encode() + b"\n"
            wire = data.draw(mutated_bytes([seed]))
            lines = wire.decode("utf-8", "replace").split("\n")
        elif kind == "random":
            wire = data.draw(st.binary(max_size=200))
            lines = wire.decode("utf-8", "replace").split("\n")
        elif kind == "many":
            lines = [f"agi_arg_{i}: x" for i in range(data.draw(st.integers(200, 400)))]
            wire = "".join(f"{l}\n" for l in lines).encode() + b"\n"
        else:
            lines = ["agi_callerid: " + "1" * data.draw(st.integers(MAX_LINE_BYTES - 20, MAX_LINE_BYTES + 20))]
            wire = (lines[0] + "\n\n").encode()
        try:
            env = parse_env(lines)
        except AgiError:
            pass
        else:
            assert all(k.startswith("agi_") for k in env)
        reader = asyncio.StreamReader(limit=MAX_LINE_BYTES + 4096, loop=runner.loop)
        for piece in _splits(data, wire):
            reader.feed_data(piece)
        eof = data.draw(st.booleans())
        if eof:
            reader.feed_eof()
        try:
            outcome = runner.run_ready(AgiChannel.read_env(reader, timeout=None))
        except AgiError:
            pass
        else:
            assert not (eof and outcome is WAITING), "reader waits although the stream was closed"

    prop()
    rel.tried(count[0])


@pytest.mark.reliability("fuzz.agi-reply")
def test_agi_env_valid_round_trip(rel, runner):
    count = [0]

    @FUZZ
    @given(env=st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=20).map("agi_".__add__), _ENV_VALUE, max_size=30),
           cut=st.data())
    def prop(env, cut):
        count[0] += 1
        wire = "".join(f"{k}: {v}\n" for k, v in env.items()).encode() + b"\n"
        reader = asyncio.StreamReader(loop=runner.loop)
        for piece in _splits(cut, wire):
            reader.feed_data(piece)
        expected = {k: v for k, v in env.items()}
        if not env:
            assert parse_env([""]) == {}
        else:
            assert runner.run(AgiChannel.read_env(reader, timeout=2.0)) == expected
        lines = [f"{k}: {v}" for k, v in env.items()] + [""]
        assert parse_env(lines) == expected

    prop()
    rel.tried(count[0])
    rel.note(f"{len(AGI_REPLY_LINES)} captured reply lines and {len(AGI_ENV_LINES)} environment lines as seeds")


# ---------------------------------------------------------------------------
# (b) AMI messages


def _parse_chunks(pieces: list[bytes], *, strict: bool) -> list:
    return parse_stream(b"".join(pieces), chunks=pieces, strict=strict)


@pytest.mark.reliability("fuzz.ami-message")
def test_ami_stream_fuzz(rel):
    count = [0]
    seeds = AMI_CAPTURES + [b"\r\n\r\n".join(AMI_BLOCKS[i:i + 5]) + b"\r\n\r\n" for i in range(0, len(AMI_BLOCKS), 5)]

    @fuzz(2300)
    @given(st.data())
    def prop(data):
        count[0] += 1
        kind = data.draw(st.sampled_from(["mutated", "blocks", "random", "repeated"]))
        if kind == "mutated":
            wire = data.draw(mutated_bytes(seeds))
        elif kind == "blocks":
            blocks = data.draw(st.lists(mutated_bytes(AMI_BLOCKS), min_size=1, max_size=6))
            wire = b"Asterisk Call Manager/11.0.0\r\n" + b"\r\n\r\n".join(blocks) + b"\r\n\r\n"
        elif kind == "random":
            wire = data.draw(st.binary(max_size=300))
        else:  # repeated headers where one value is expected
            header = data.draw(st.sampled_from([b"ActionID", b"Event", b"Response", b"CommandID", b"actionid"]))
            wire = (b"Response: Success\r\n" + b"".join(header + b": x%d\r\n" % i for i in range(
                data.draw(st.integers(2, 4)))) + b"\r\n")
        pieces = _splits(data, wire)
        whole = parse_stream(wire)  # lenient: the link's own behaviour, never raises
        assert all("Event" in m or "Response" in m for m in whole)
        chunked = _parse_chunks(pieces, strict=False)
        assert [m.to_dict() for m in chunked] == [m.to_dict() for m in whole], "TCP split points changed the result"
        try:
            strict = _parse_chunks(pieces, strict=True)
        except AmiProtocolError:
            pass
        else:
            assert [m.to_dict() for m in strict] == [m.to_dict() for m in whole]

    prop()
    rel.tried(count[0])


@pytest.mark.reliability("fuzz.ami-message")
def test_ami_block_fuzz(rel):
    """``parse_message`` on single blocks, and a live protocol that must keep the link."""
    count = [0]
    texts = [b.decode("utf-8", "replace") for b in AMI_BLOCKS]

    @fuzz(2300)
    @given(st.data())
    def prop(data):
        count[0] += 1
        block = data.draw(st.one_of(mutated_text(texts), st.text(max_size=100)))
        try:
            message = parse_message(block)
        except AmiProtocolError:
            message = None
        else:
            assert "Event" in message or "Response" in message
            assert not isinstance(message.get("ActionID"), list)
        # The same block on a protocol object, as data_received sees it: it
        # must never raise (asyncio would tear the link down).
        proto = AmiProtocol()
        proto.version = ""
        proto.data_received(block.encode("utf-8", "surrogateescape") + b"\r\n\r\n")
        assert not proto.closed

    prop()
    rel.tried(count[0])


_HEADER_NAME = st.builds(str.__add__, st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                         st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                                 max_size=15)).filter(
    lambda n: n.lower() not in ("event", "response", "actionid", "commandid", "content"))
_HEADER_VALUE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30)


@pytest.mark.reliability("fuzz.ami-message")
def test_ami_valid_round_trip(rel):
    count = [0]

    @fuzz(2300)
    @given(first=st.sampled_from([("Event", "Newchannel"), ("Event", "VarSet"), ("Response", "Success"),
                                  ("Response", "Error"), ("Event", "中文")]),
           action_id=st.one_of(st.none(), st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)),
           headers=st.dictionaries(_HEADER_NAME, _HEADER_VALUE, max_size=10),
           messages=st.integers(1, 3), data=st.data())
    def prop(first, action_id, headers, messages, data):
        count[0] += 1
        # case-insensitive names: keep one spelling of each
        seen: dict[str, str] = {}
        for name, value in headers.items():
            seen.setdefault(name.lower(), name)
        headers = {name: headers[name] for name in seen.values()}
        fields = {first[0]: first[1], **({"ActionID": action_id} if action_id else {}), **headers}
        block = "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        wire = ("Asterisk Call Manager/11.0.0\r\n" + block * messages).encode()
        got = _parse_chunks(_splits(data, wire), strict=True)
        assert [m.to_dict() for m in got] == [fields] * messages
        if action_id:
            assert got[0].action_id == action_id

    prop()
    rel.tried(count[0])
    rel.note(f"{len(AMI_BLOCKS)} captured AMI messages as seeds, fed split at random points")


# ---------------------------------------------------------------------------
# (c) AudioSocket frames

_UUID = uuid.UUID("b679f00e-032e-48b5-889a-ae874a775cfe")


def _capture_frames() -> list[bytes]:
    frames = [encode_frame(Kind.UUID, _UUID.bytes), encode_frame(Kind.DTMF, b"7"), encode_frame(Kind.HANGUP),
              encode_frame(Kind.ERROR, b"\x01")]
    for name in ("audiosocket.json", "audiosocket-dtmf.json"):
        for f in json.loads((FIXTURES / name).read_text(encoding="utf-8"))["frames"][:20]:
            if f.get("kind") == "0x10":
                frames.append(encode_frame(Kind.AUDIO, bytes.fromhex(f["head"]).ljust(f["len"], b"\0")))
    return frames


AS_FRAMES = _capture_frames()
AS_STREAMS = [b"".join(AS_FRAMES[i:i + 6]) for i in range(0, len(AS_FRAMES), 6)]


async def _read_all(data_pieces: list[bytes], eof: bool, max_payload: int) -> list[Frame]:
    reader = asyncio.StreamReader()
    for piece in data_pieces:
        reader.feed_data(piece)
    if eof:
        reader.feed_eof()
    frames: list[Frame] = []
    while True:
        frame = await read_frame(reader, max_payload=max_payload)
        if frame is None:
            return frames
        frames.append(frame)


def _outcome(fn):
    try:
        return ("ok", [(f.kind, f.payload) for f in fn()])
    except AudioSocketError as exc:
        return ("error", type(exc))


@pytest.mark.reliability("fuzz.audiosocket-frame")
def test_audiosocket_frame_fuzz(rel, runner):
    count = [0]

    @fuzz(3400)
    @given(st.data())
    def prop(data):
        count[0] += 1
        kind = data.draw(st.sampled_from(["mutated", "random", "header", "oversized"]))
        if kind == "mutated":
            wire = data.draw(mutated_bytes(AS_STREAMS + AS_FRAMES))
        elif kind == "random":
            wire = data.draw(st.binary(max_size=400))
        elif kind == "header":
            wire = bytes([data.draw(st.integers(0, 255))]) + data.draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
            wire += data.draw(st.binary(max_size=64))
        else:  # a length over the bound, with no payload behind it: must not wait for it
            wire = bytes([0x10]) + data.draw(st.integers(DEFAULT_MAX_PAYLOAD + 1, 0xFFFF)).to_bytes(2, "big")
        max_payload = data.draw(st.sampled_from([DEFAULT_MAX_PAYLOAD, 320, 0xFFFF]))
        whole = _outcome(lambda: decode_frames(wire, max_payload=max_payload))
        pieces = _splits(data, wire)
        streamed = _outcome(lambda: runner.run(_read_all(pieces, True, max_payload)))
        assert streamed == whole, "stream reader and decoder disagree"
        if whole[0] == "ok":
            for kind_, payload in whole[1]:
                if kind_ is Kind.DTMF:
                    assert Frame(kind_, payload).dtmf in "0123456789*#ABCDabcd"
                if kind_ is Kind.UUID:
                    assert isinstance(Frame(kind_, payload).uuid, uuid.UUID)
        # Without EOF: a bad header fails at once; a valid prefix waits for
        # more bytes (the caller's timeout) instead of inventing a frame.
        try:
            outcome = runner.run_ready(_read_all(pieces, False, max_payload))
        except AudioSocketError as exc:
            assert whole[0] == "error" and not isinstance(exc, TruncatedFrame)
        else:
            assert outcome is WAITING  # never ends without EOF or a bad header
        if kind == "oversized" and max_payload < 0xFFFF:
            assert whole == ("error", BadFrameLength)

    prop()
    rel.tried(count[0])


@pytest.mark.reliability("fuzz.audiosocket-frame")
def test_audiosocket_valid_round_trip(rel, runner):
    count = [0]
    frame = st.one_of(
        st.builds(lambda u: Frame(Kind.UUID, u.bytes), st.uuids()),
        st.builds(lambda k: Frame(Kind.DTMF, k.encode()), st.sampled_from("0123456789*#ABCD")),
        st.builds(lambda n, b: Frame(Kind.AUDIO, (b * (2 * n))[: 2 * n]), st.integers(1, 800),
                  st.binary(min_size=1, max_size=4)),
        st.builds(lambda p: Frame(Kind.ERROR, p), st.binary(max_size=8)),
    )

    @fuzz(3400)
    @given(frames=st.lists(frame, max_size=8), hangup=st.booleans(), data=st.data())
    def prop(frames, hangup, data):
        count[0] += 1
        frames = frames + ([Frame(Kind.HANGUP)] if hangup else [])
        wire = b"".join(f.encode() for f in frames)
        assert decode_frames(wire) == frames
        assert runner.run(_read_all(_splits(data, wire), True, DEFAULT_MAX_PAYLOAD)) == frames

    prop()
    rel.tried(count[0])


def test_typed_errors_have_clear_bases():
    assert issubclass(AmiProtocolError, AmiError)
    assert issubclass(UnknownFrameKind, AudioSocketError) and issubclass(TruncatedFrame, AudioSocketError)
    assert issubclass(AgiProtocolError, AgiError)


@pytest.mark.reliability("fuzz.ami-message")
@pytest.mark.parametrize("prefix", [b"Asterisk Call Manager/", b"Asterisk Call Manager/11.0.0\r\nEvent: X\r\n"])
def test_ami_message_that_never_ends_closes_the_link(rel, prefix):
    """Banner or message without its end: bounded buffer, typed error, link closed."""
    proto = AmiProtocol()
    proto.data_received(prefix)
    for _ in range(5):
        proto.data_received(b"y" * (1024 * 1024))
        if proto.closed:
            break
    rel.tried(1)
    assert proto.closed and isinstance(proto.errors[-1], AmiProtocolError)
    assert proto._buffer == ""
