"""Asterisk AudioSocket: frame codec, server, and recognition over a call's audio.

Wire format (as captured from Asterisk 22, ``tests/fixtures/asterisk/audiosocket*.json``)::

    +------+----------------+-----------------+
    | kind | length (2, BE) | payload (length)|
    +------+----------------+-----------------+

    0x00  hang up           no payload (server → Asterisk ends ``EXEC AudioSocket``)
    0x01  call UUID         16 bytes, the first frame Asterisk sends
    0x03  DTMF              one ASCII byte (0x37 = "7")
    0x10  audio             signed 16-bit little-endian 8 kHz mono, 320 bytes = 20 ms
    0xff  error             optional error code

Usage from the FastAGI side::

    server = AudioSocketServer("127.0.0.1", 9092)
    await server.start()
    stream = server.expect(call_uuid)            # before the AGI command
    # AGI: EXEC AudioSocket {stream.exec_argument}   (runs until we send 0x00)
    if await stream.wait_connected(timeout=3):
        result = await recognize_stream(stream, pool.open("ko", grammar))

A Local channel sends no audio frames while there is silence, a SIP channel
sends them continuously; :func:`recognize_stream` handles both.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import struct
import uuid as uuid_mod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from ._audio import ms_to_bytes
from .recognizer import Recognition, RecognitionSession

log = logging.getLogger(__name__)

__all__ = [
    "AUDIO_FRAME_BYTES",
    "DEFAULT_MAX_PAYLOAD",
    "AudioChunk",
    "AudioSocketError",
    "AudioSocketServer",
    "AudioStream",
    "BadFrameLength",
    "Dtmf",
    "Frame",
    "Hangup",
    "Kind",
    "StreamEvent",
    "TruncatedFrame",
    "UnknownFrameKind",
    "decode_frames",
    "encode_frame",
    "read_frame",
    "recognize_stream",
]


class Kind(enum.IntEnum):
    """AudioSocket frame kinds."""

    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    AUDIO = 0x10
    ERROR = 0xFF


HEADER = struct.Struct(">BH")
#: 20 ms of 8 kHz signed 16-bit mono, the audio frame size Asterisk sends.
AUDIO_FRAME_BYTES = 320
#: Largest payload accepted by :func:`read_frame` by default (1 s of audio).
DEFAULT_MAX_PAYLOAD = 16000
_DTMF_KEYS = frozenset("0123456789*#ABCDabcd")


class AudioSocketError(Exception):
    """Base of all AudioSocket protocol errors."""


class UnknownFrameKind(AudioSocketError):
    """A frame kind this implementation does not know."""

    def __init__(self, kind: int) -> None:
        super().__init__(f"unknown AudioSocket frame kind 0x{kind:02x}")
        self.kind = kind


class BadFrameLength(AudioSocketError):
    """A length that is impossible for the kind, or over the payload bound."""

    def __init__(self, kind: int, length: int, why: str) -> None:
        super().__init__(f"bad length {length} for AudioSocket frame kind 0x{kind:02x}: {why}")
        self.kind = kind
        self.length = length


class TruncatedFrame(AudioSocketError):
    """The connection ended in the middle of a frame."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One AudioSocket frame."""

    kind: Kind
    payload: bytes = b""

    @property
    def uuid(self) -> uuid_mod.UUID:
        """The call UUID of a ``UUID`` frame."""
        if self.kind is not Kind.UUID:
            raise AudioSocketError(f"{self.kind.name} frame has no UUID")
        return uuid_mod.UUID(bytes=self.payload)

    @property
    def dtmf(self) -> str:
        """The key of a ``DTMF`` frame."""
        if self.kind is not Kind.DTMF:
            raise AudioSocketError(f"{self.kind.name} frame has no DTMF key")
        return self.payload.decode("ascii")

    def encode(self) -> bytes:
        """The frame's wire bytes."""
        return encode_frame(self.kind, self.payload)


def _check(kind: int, length: int, max_payload: int) -> Kind:
    """Validate a header; returns the typed kind."""
    try:
        typed = Kind(kind)
    except ValueError:
        raise UnknownFrameKind(kind) from None
    if length > max_payload:
        raise BadFrameLength(kind, length, f"over the {max_payload}-byte bound")
    if typed is Kind.HANGUP and length != 0:
        raise BadFrameLength(kind, length, "a hangup frame has no payload")
    if typed is Kind.UUID and length != 16:
        raise BadFrameLength(kind, length, "a UUID is 16 bytes")
    if typed is Kind.DTMF and length != 1:
        raise BadFrameLength(kind, length, "a DTMF frame carries one key")
    if typed is Kind.AUDIO and (length == 0 or length % 2):
        raise BadFrameLength(kind, length, "audio is whole 16-bit samples")
    return typed


def _check_payload(kind: Kind, payload: bytes) -> None:
    if kind is Kind.DTMF and chr(payload[0]) not in _DTMF_KEYS:
        raise AudioSocketError(f"bad DTMF key byte 0x{payload[0]:02x}")


def encode_frame(kind: Kind | int, payload: bytes = b"") -> bytes:
    """Wire bytes of one frame.

    Raises:
        AudioSocketError: unknown kind or a payload impossible for it.
    """
    typed = _check(int(kind), len(payload), 0xFFFF)
    if payload:
        _check_payload(typed, payload)
    return HEADER.pack(typed, len(payload)) + bytes(payload)


async def read_frame(reader: asyncio.StreamReader, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Frame | None:
    """Read one frame; None at a clean end of stream (between frames).

    Raises:
        UnknownFrameKind, BadFrameLength: a header that cannot be valid.
        TruncatedFrame: the stream ended inside a frame.
        AudioSocketError: a payload that is invalid for its kind.
    """
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise TruncatedFrame(f"stream ended after {len(exc.partial)} of {HEADER.size} header bytes") from None
    kind, length = HEADER.unpack(header)
    typed = _check(kind, length, max_payload)
    try:
        payload = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError as exc:
        raise TruncatedFrame(
            f"stream ended after {len(exc.partial)} of {length} payload bytes of a {typed.name} frame"
        ) from None
    if payload:
        _check_payload(typed, payload)
    return Frame(typed, payload)


def decode_frames(data: bytes, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> list[Frame]:
    """Decode a complete byte string of frames (tests, captures)."""
    frames: list[Frame] = []
    view = memoryview(data)
    while view:
        if len(view) < HEADER.size:
            raise TruncatedFrame(f"{len(view)} trailing bytes are not a frame header")
        kind, length = HEADER.unpack(view[: HEADER.size])
        typed = _check(kind, length, max_payload)
        if len(view) < HEADER.size + length:
            raise TruncatedFrame(f"{typed.name} frame needs {length} payload bytes, {len(view) - HEADER.size} left")
        payload = bytes(view[HEADER.size : HEADER.size + length])
        if payload:
            _check_payload(typed, payload)
        frames.append(Frame(typed, payload))
        view = view[HEADER.size + length :]
    return frames


# -- stream events -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Caller audio: s16le 8 kHz mono (normally 320 bytes = 20 ms)."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class Dtmf:
    """The caller pressed a key."""

    key: str


@dataclass(frozen=True, slots=True)
class Hangup:
    """The audio stream is over.

    ``reason``: ``hangup`` (Asterisk sent 0x00), ``eof`` (socket closed),
    ``error`` (0xff frame or a protocol error; see ``detail``), ``closed``
    (we hung up or the server stopped).
    """

    reason: Literal["hangup", "eof", "error", "closed"]
    detail: str = ""


StreamEvent = AudioChunk | Dtmf | Hangup


class AudioStream:
    """One expected AudioSocket connection, identified by the call's UUID.

    Obtained from :meth:`AudioSocketServer.expect`. Iterate it (``async for
    event in stream``) or poll :meth:`next_event`; the last event is always a
    :class:`Hangup`. One consumer at a time.
    """

    def __init__(self, server: AudioSocketServer, call_uuid: uuid_mod.UUID, *, queue_frames: int = 500) -> None:
        self.uuid = call_uuid
        self._server = server
        self._connected = asyncio.Event()
        self._events: asyncio.Queue[StreamEvent] = asyncio.Queue(maxsize=queue_frames)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._ended = False  # a Hangup event has been delivered to the consumer
        self._closed = False  # we hung up / gave up on this stream
        self.hangup_sent = False

    @property
    def exec_argument(self) -> str:
        """The ``EXEC AudioSocket`` argument: ``<uuid>,<host>:<port>``."""
        return f"{self.uuid},{self._server.address}"

    @property
    def connected(self) -> bool:
        """True once Asterisk connected with this UUID."""
        return self._connected.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait for Asterisk to connect; False after ``timeout`` seconds (the call is then forgotten)."""
        if self._closed:
            return self.connected
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            log.warning("AudioSocket connection for call %s did not arrive within %.1f s", self.uuid, timeout)
            await self.close()
            return False
        return True

    def _attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._task = asyncio.create_task(self._pump(), name=f"audiosocket-{self.uuid}")
        self._connected.set()

    async def _pump(self) -> None:
        """Reader task: frames from the socket → events in the queue."""
        assert self._reader is not None
        end: Hangup
        try:
            while True:
                frame = await read_frame(self._reader, max_payload=self._server.max_payload)
                if frame is None:
                    end = Hangup("closed" if self._closed else "eof")
                    break
                if frame.kind is Kind.AUDIO:
                    await self._events.put(AudioChunk(frame.payload))
                elif frame.kind is Kind.DTMF:
                    await self._events.put(Dtmf(frame.dtmf))
                elif frame.kind is Kind.HANGUP:
                    end = Hangup("hangup")
                    break
                elif frame.kind is Kind.ERROR:
                    end = Hangup("error", f"Asterisk error frame {frame.payload.hex() or '(no code)'}")
                    break
                else:  # a second UUID frame: ignore, as Asterisk never sends one
                    log.debug("AudioSocket %s: ignoring repeated UUID frame", self.uuid)
        except AudioSocketError as exc:
            log.warning("AudioSocket %s: protocol error: %s", self.uuid, exc)
            end = Hangup("error", str(exc))
        except (ConnectionError, OSError) as exc:
            end = Hangup("closed" if self._closed else "eof", str(exc))
        await self._events.put(end)

    async def next_event(self, timeout: float | None = None) -> StreamEvent | None:
        """The next event, or None if nothing arrived within ``timeout`` seconds.

        After the stream has ended every call returns the final Hangup again.
        """
        if self._ended:
            return Hangup("closed")
        if not self.connected:
            if self._closed:
                self._ended = True
                return Hangup("closed", "never connected")
            try:
                async with asyncio.timeout(timeout):
                    await self._connected.wait()
            except TimeoutError:
                return None
        if not self._events.empty():  # frames already queued: no timer needed (the common case under load)
            event = self._events.get_nowait()
        else:
            try:
                async with asyncio.timeout(timeout):
                    event = await self._events.get()
            except TimeoutError:
                late = await self._late_event()
                if late is None:
                    return None
                event = late
        if isinstance(event, Hangup):
            self._ended = True
        return event

    async def _late_event(self) -> StreamEvent | None:
        """An event that arrived as the timer expired, or None for a true gap.

        A process that was not scheduled for a while (a loaded machine) wakes
        up to an expired timer *and* frames waiting in the socket. Letting the
        reader task run first keeps those frames from being taken for a
        silent gap (which would put silence into the middle of a word).
        """
        for _ in range(3):
            await asyncio.sleep(0)
            if not self._events.empty():
                return self._events.get_nowait()
        return None

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StreamEvent]:
        while True:
            event = await self.next_event()
            assert event is not None
            yield event
            if isinstance(event, Hangup):
                return

    async def send_audio(self, pcm: bytes) -> None:
        """Send audio to the caller (s16le 8 kHz, split into 20 ms frames)."""
        if self._writer is None or self._closed:
            raise AudioSocketError("AudioSocket stream is not connected")
        for i in range(0, len(pcm), AUDIO_FRAME_BYTES):
            self._writer.write(encode_frame(Kind.AUDIO, pcm[i : i + AUDIO_FRAME_BYTES]))
        await self._writer.drain()

    async def hangup(self) -> None:
        """Send kind 0x00 so Asterisk's ``EXEC AudioSocket`` returns, then close. Idempotent.

        Best effort: if the caller has already gone, nothing is sent.
        """
        if self._closed:
            return
        self._closed = True
        self._server._forget(self)
        writer = self._writer
        if writer is None:
            return
        try:
            if not writer.is_closing():
                writer.write(encode_frame(Kind.HANGUP))
                await writer.drain()
                self.hangup_sent = True
        except (ConnectionError, OSError) as exc:
            log.debug("AudioSocket %s: hangup frame not delivered: %s", self.uuid, exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
        if self._task is not None and not self._task.done():
            # Nobody consumes events after a hang-up: stop the reader now.
            self._task.cancel()
            await asyncio.wait([self._task], timeout=1.0)

    async def close(self) -> None:
        """Stop expecting or serving this stream (hangs up if connected)."""
        await self.hangup()


class AudioSocketServer:
    """TCP server Asterisk's ``AudioSocket`` application connects to.

    Calls are registered with :meth:`expect` before the AGI side runs ``EXEC
    AudioSocket``; a connection whose first frame is not the UUID of an
    expected call is closed.

    Args:
        host, port: where to listen (port 0 picks a free port; see :attr:`port`).
        handshake_timeout: seconds to wait for the UUID frame.
        max_payload: bound on frame payloads.
        advertise_host: host to put in :attr:`AudioStream.exec_argument` when
            listening on a wildcard address.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9092,
        *,
        handshake_timeout: float = 5.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        advertise_host: str | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self.handshake_timeout = handshake_timeout
        self.max_payload = max_payload
        self.advertise_host = advertise_host
        self._server: asyncio.Server | None = None
        self._streams: dict[uuid_mod.UUID, AudioStream] = {}
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (differs from the configured one when it was 0)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` as Asterisk should dial it."""
        host = self.advertise_host or self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def start(self) -> None:
        """Start listening."""
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, self.host, self._port)
            log.info("AudioSocket server listening on %s", self.address)

    async def stop(self) -> None:
        """Stop listening and hang up every stream."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for stream in list(self._streams.values()):
            await stream.hangup()
        for task in list(self._handlers):
            task.cancel()
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await server.wait_closed()

    async def __aenter__(self) -> AudioSocketServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def expect(self, call_uuid: str | uuid_mod.UUID | None = None) -> AudioStream:
        """Register a call whose AudioSocket connection is about to arrive.

        ``call_uuid`` defaults to a fresh random UUID; pass it to Asterisk as
        :attr:`AudioStream.exec_argument`.
        """
        key = uuid_mod.uuid4() if call_uuid is None else uuid_mod.UUID(str(call_uuid))
        if key in self._streams:
            raise ValueError(f"AudioSocket call {key} is already expected")
        stream = AudioStream(self, key)
        self._streams[key] = stream
        return stream

    def _forget(self, stream: AudioStream) -> None:
        if self._streams.get(stream.uuid) is stream:
            del self._streams[stream.uuid]

    @property
    def expected(self) -> list[uuid_mod.UUID]:
        """UUIDs of calls registered and not yet finished."""
        return list(self._streams)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        peer = writer.get_extra_info("peername")
        try:
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    first = await read_frame(reader, max_payload=self.max_payload)
            except (AudioSocketError, TimeoutError, ConnectionError, OSError) as exc:
                log.warning("AudioSocket connection from %s: no valid UUID frame (%s); closing", peer, exc or "timeout")
                writer.close()
                return
            if first is None or first.kind is not Kind.UUID:
                log.warning("AudioSocket connection from %s did not start with a UUID frame; closing", peer)
                writer.close()
                return
            stream = self._streams.get(first.uuid)
            if stream is None or stream.connected or stream.closed:
                log.warning("AudioSocket connection from %s for unexpected call %s; closing", peer, first.uuid)
                writer.close()
                return
            stream._attach(reader, writer)
        finally:
            if task is not None:
                self._handlers.discard(task)


# -- recognition -----------------------------------------------------------------

#: Without a frame for this long, the gap is fed to the recogniser as silence.
DEFAULT_GAP_FILL_MS = 200


async def recognize_stream(
    stream: AudioStream,
    session: RecognitionSession,
    *,
    connect_timeout: float | None = 5.0,
    gap_fill_ms: int = DEFAULT_GAP_FILL_MS,
    hangup: bool = True,
) -> Recognition:
    """Pump a call's AudioSocket audio into a recognition session.

    Ends when the session detects the end of the utterance (``final``,
    ``silence``, ``maxtime``), when the caller presses a key (``dtmf``, with
    the key), or when the stream ends (``hangup``). An AudioSocket connection
    that does not arrive within ``connect_timeout`` gives ``unavailable``.
    Local channels send no frames during silence: a gap of ``gap_fill_ms``
    without frames is fed as silence so silence and end-of-speech timers run.
    Finally, unless ``hangup=False``, kind 0x00 is sent so ``EXEC
    AudioSocket`` returns.
    """
    gap_pcm = b"\0" * ms_to_bytes(gap_fill_ms, session.sample_rate)
    try:
        if not await stream.wait_connected(connect_timeout):
            return await session.finish("unavailable")
        while not session.done:
            event = await stream.next_event(timeout=gap_fill_ms / 1000)
            if event is None:
                await session.feed(gap_pcm)
            elif isinstance(event, AudioChunk):
                await session.feed(event.pcm)
            elif isinstance(event, Dtmf):
                session.dtmf(event.key)
            else:
                if event.reason == "error":
                    log.warning("AudioSocket %s ended with an error: %s", stream.uuid, event.detail)
                return await session.finish("hangup")
        return await session.finish("final")
    except BaseException:
        session.close()
        raise
    finally:
        if hangup:
            await stream.hangup()
