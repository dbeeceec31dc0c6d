"""AudioSocket codec and server against the captured Asterisk traffic (no model needed)."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asr.audiosocket import (
    AUDIO_FRAME_BYTES,
    AudioChunk,
    AudioSocketError,
    AudioSocketServer,
    BadFrameLength,
    Dtmf,
    Frame,
    Hangup,
    Kind,
    TruncatedFrame,
    UnknownFrameKind,
    decode_frames,
    encode_frame,
    read_frame,
)
from asr.testing import FakeAudioSocketClient

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"


def load_capture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def exec_uuid(agi_capture: str) -> uuid.UUID:
    """The UUID the AGI side passed to ``EXEC AudioSocket``."""
    for exchange in load_capture(agi_capture)["exchanges"]:
        if exchange["send"].startswith("EXEC AudioSocket "):
            return uuid.UUID(exchange["send"].split(" ", 2)[2].split(",")[0])
    raise AssertionError("no EXEC AudioSocket in capture")


def reader_for(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


# -- codec ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capture", "agi"), [("audiosocket.json", "agi-speech.json"), ("audiosocket-dtmf.json", "agi-speech_dtmf.json")]
)
def test_uuid_frame_matches_capture(capture: str, agi: str) -> None:
    first = load_capture(capture)["frames"][0]
    call = exec_uuid(agi)
    wire = encode_frame(Kind.UUID, call.bytes)
    assert wire[0] == int(first["kind"], 16) == 0x01
    assert struct.unpack(">H", wire[1:3])[0] == first["len"] == 16
    assert wire[3:].hex() == first["head"]
    assert decode_frames(wire) == [Frame(Kind.UUID, call.bytes)]
    assert decode_frames(wire)[0].uuid == call


def test_audio_and_dtmf_frames_match_capture() -> None:
    frames = load_capture("audiosocket-dtmf.json")["frames"]
    audio = [f for f in frames if f.get("kind") == "0x10"]
    assert audio and all(f["len"] == AUDIO_FRAME_BYTES for f in audio)
    for f in audio:
        payload = bytes.fromhex(f["head"]).ljust(AUDIO_FRAME_BYTES, b"\0")
        wire = encode_frame(Kind.AUDIO, payload)
        assert wire[:3] == bytes([0x10]) + (320).to_bytes(2, "big")
        assert decode_frames(wire) == [Frame(Kind.AUDIO, payload)]
    (key,) = [f for f in frames if f.get("kind") == "0x3"]
    wire = encode_frame(Kind.DTMF, b"7")
    assert wire == bytes([0x03, 0x00, 0x01]) + bytes.fromhex(key["head"])
    assert decode_frames(wire)[0].dtmf == "7"


def test_hangup_frame_is_three_bytes() -> None:
    assert encode_frame(Kind.HANGUP) == b"\x00\x00\x00"


async def test_read_frame_round_trip_and_clean_eof() -> None:
    call = uuid.uuid4()
    frames = [
        Frame(Kind.UUID, call.bytes),
        Frame(Kind.AUDIO, bytes(range(256)) + bytes(64)),
        Frame(Kind.DTMF, b"#"),
        Frame(Kind.ERROR, b"\x01"),
        Frame(Kind.HANGUP),
    ]
    reader = reader_for(b"".join(f.encode() for f in frames))
    got = [await read_frame(reader) for _ in frames]
    assert got == frames
    assert await read_frame(reader) is None


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x02\x00\x00", UnknownFrameKind),
        (b"\x11\x00\x02\x00\x00", UnknownFrameKind),
        (b"\x01\x00\x0f" + bytes(15), BadFrameLength),  # UUID must be 16 bytes
        (b"\x03\x00\x02" + b"12", BadFrameLength),  # one key per DTMF frame
        (b"\x00\x00\x01\x00", BadFrameLength),  # hangup has no payload
        (b"\x10\x00\x00", BadFrameLength),  # empty audio
        (b"\x10\x01\x41" + bytes(321), BadFrameLength),  # odd audio length
        (b"\x10\xff\xff" + bytes(10), BadFrameLength),  # over the payload bound
        (b"\x10\x01", TruncatedFrame),  # header cut short
        (b"\x10\x01\x40" + bytes(100), TruncatedFrame),  # payload cut short
        (b"\x03\x00\x01\x01", AudioSocketError),  # not a DTMF key
    ],
)
async def test_bad_frames_raise_typed_errors(data: bytes, error: type[AudioSocketError]) -> None:
    with pytest.raises(error):
        await read_frame(reader_for(data))
    with pytest.raises(error):
        decode_frames(data)


async def test_payload_bound_is_configurable() -> None:
    wire = encode_frame(Kind.AUDIO, bytes(640))
    with pytest.raises(BadFrameLength):
        await read_frame(reader_for(wire), max_payload=320)
    assert (await read_frame(reader_for(wire), max_payload=640)) == Frame(Kind.AUDIO, bytes(640))


def test_encode_rejects_impossible_frames() -> None:
    with pytest.raises(UnknownFrameKind):
        encode_frame(0x42, b"")
    with pytest.raises(BadFrameLength):
        encode_frame(Kind.UUID, b"short")
    with pytest.raises(BadFrameLength):
        encode_frame(Kind.AUDIO, bytes(70000))


# -- the fake client sends what Asterisk sends -----------------------------------


async def test_fake_client_reproduces_capture_layout() -> None:
    """A raw server records the fake client's bytes; they follow audiosocket-dtmf.json."""
    captured = bytearray()
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        captured.extend(await reader.read(-1))
        writer.close()
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    call = exec_uuid("agi-speech_dtmf.json")
    pcm = b"".join(
        bytes.fromhex(f["head"]).ljust(320, b"\0")
        for f in load_capture("audiosocket-dtmf.json")["frames"]
        if f.get("kind") == "0x10"
    )
    report = await FakeAudioSocketClient("127.0.0.1", port, call).run(
        pcm, speed=None, dtmf="7", dtmf_at_ms=10_000, continuous=False, wait_for_server_s=0.1
    )
    await asyncio.wait_for(done.wait(), 2)
    server.close()
    await server.wait_closed()

    frames = decode_frames(bytes(captured))
    expected = [f for f in load_capture("audiosocket-dtmf.json")["frames"] if "kind" in f]
    assert [(f.kind, len(f.payload)) for f in frames] == [(int(e["kind"], 16), e["len"]) for e in expected]
    assert [f.payload[:16].hex() for f in frames] == [e["head"] for e in expected]
    assert report.dtmf_sent == "7" and report.audio_frames_sent == 5


# -- server -----------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[AudioSocketServer]:
    srv = AudioSocketServer("127.0.0.1", 0, handshake_timeout=1.0)
    await srv.start()
    yield srv
    await srv.stop()


async def test_events_then_hangup_frame(server: AudioSocketServer) -> None:
    stream = server.expect("b679f00e-032e-48b5-889a-ae874a775cfe")
    assert stream.exec_argument == f"b679f00e-032e-48b5-889a-ae874a775cfe,127.0.0.1:{server.port}"
    pcm = bytes(range(200)) * 4  # 800 bytes -> three frames, the last padded
    client = FakeAudioSocketClient("127.0.0.1", server.port, stream.uuid)
    task = asyncio.create_task(client.run(pcm, speed=None, dtmf="7", dtmf_at_ms=40, continuous=False))

    assert await stream.wait_connected(2.0)
    events = []
    async for event in stream:
        events.append(event)
        if isinstance(event, Dtmf):
            break
    assert events == [AudioChunk(pcm[:320]), AudioChunk(pcm[320:640]), Dtmf("7")]
    assert (await stream.next_event(1.0)) == AudioChunk(pcm[640:] + bytes(160))
    await stream.send_audio(bytes(range(160)) * 4)  # a prompt for the caller: two 20 ms frames
    await stream.hangup()
    report = await task
    assert report.received_hangup
    assert report.received == [
        Frame(Kind.AUDIO, bytes(range(160)) * 2),
        Frame(Kind.AUDIO, bytes(range(160)) * 2),
        Frame(Kind.HANGUP),
    ]
    assert stream.hangup_sent and server.expected == []
    await stream.hangup()  # idempotent


async def test_caller_hangup_ends_the_event_stream(server: AudioSocketServer) -> None:
    stream = server.expect()
    client = FakeAudioSocketClient("127.0.0.1", server.port, stream.uuid)
    report = await client.run(bytes(3200), speed=None, hangup_at_ms=60)
    assert report.hung_up and report.audio_frames_sent == 3
    events = [event async for event in stream]
    assert events[-1] == Hangup("eof")
    assert sum(isinstance(e, AudioChunk) for e in events) == 3
    assert (await stream.next_event(0.1)) == Hangup("closed")
    await stream.hangup()  # no exception although the caller is gone


async def test_unknown_uuid_is_closed(server: AudioSocketServer, caplog: pytest.LogCaptureFixture) -> None:
    expected = server.expect()
    stranger = FakeAudioSocketClient("127.0.0.1", server.port, uuid.uuid4())
    with caplog.at_level(logging.WARNING, logger="asr.audiosocket"):
        report = await stranger.run(bytes(640), speed=None, continuous=False, wait_for_server_s=2.0)
    assert report.closed_by_server and not report.received_hangup
    assert "unexpected call" in caplog.text
    assert not expected.connected and server.expected == [expected.uuid]


async def test_connection_without_uuid_frame_is_closed(server: AudioSocketServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(encode_frame(Kind.AUDIO, bytes(320)))
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 2.0) == b""
    writer.close()


async def test_garbage_handshake_is_closed(server: AudioSocketServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 2.0) == b""
    writer.close()


async def test_audiosocket_that_never_connects(server: AudioSocketServer) -> None:
    stream = server.expect()
    assert not await stream.wait_connected(timeout=0.2)
    assert server.expected == []  # forgotten: a late connection is refused
    late = await FakeAudioSocketClient("127.0.0.1", server.port, stream.uuid).run(
        bytes(320), speed=None, continuous=False, wait_for_server_s=2.0
    )
    assert late.closed_by_server and not stream.connected


async def test_duplicate_connection_is_closed(server: AudioSocketServer) -> None:
    stream = server.expect()
    first = asyncio.create_task(
        FakeAudioSocketClient("127.0.0.1", server.port, stream.uuid).run(bytes(320), speed=None, continuous=False)
    )
    assert await stream.wait_connected(2.0)
    second = await FakeAudioSocketClient("127.0.0.1", server.port, stream.uuid).run(
        bytes(320), speed=None, continuous=False, wait_for_server_s=2.0
    )
    assert second.closed_by_server and not second.received_hangup
    await stream.hangup()
    assert (await first).received_hangup


async def test_expect_twice_is_an_error(server: AudioSocketServer) -> None:
    stream = server.expect()
    with pytest.raises(ValueError):
        server.expect(stream.uuid)


async def test_stop_hangs_up_connected_streams() -> None:
    srv = AudioSocketServer("127.0.0.1", 0)
    await srv.start()
    stream = srv.expect()
    task = asyncio.create_task(
        FakeAudioSocketClient("127.0.0.1", srv.port, stream.uuid).run(bytes(320), speed=None, continuous=False)
    )
    assert await stream.wait_connected(2.0)
    await srv.stop()
    assert (await task).received_hangup


async def test_error_frame_ends_stream(server: AudioSocketServer) -> None:
    stream = server.expect()
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(encode_frame(Kind.UUID, stream.uuid.bytes) + encode_frame(Kind.ERROR, b"\x01"))
    await writer.drain()
    assert await stream.wait_connected(2.0)
    event = await stream.next_event(2.0)
    assert isinstance(event, Hangup) and event.reason == "error" and "01" in event.detail
    await stream.hangup()
    writer.close()
