"""Test doubles: a fake Asterisk AudioSocket client.

:class:`FakeAudioSocketClient` connects the way Asterisk's ``AudioSocket()``
application does (``tests/fixtures/asterisk/audiosocket*.json``): a kind
0x01 frame with the 16-byte call UUID, then kind 0x10 frames of 320 bytes
(20 ms of 8 kHz s16le) paced in real time (or faster), a kind 0x03 frame with
one ASCII key when the caller presses a key, and a close of the socket when
the caller hangs up. When it receives kind 0x00 it closes, as Asterisk does
when ``EXEC AudioSocket`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid as uuid_mod
from dataclasses import dataclass, field

from .audiosocket import AUDIO_FRAME_BYTES, AudioSocketError, Frame, Kind, encode_frame, read_frame

__all__ = ["FRAME_MS", "ClientReport", "FakeAudioSocketClient"]

FRAME_MS = 20


@dataclass
class ClientReport:
    """What happened on the fake Asterisk side of one AudioSocket connection."""

    received_hangup: bool = False  # the server sent kind 0x00
    closed_by_server: bool = False  # the server closed the socket (with or without 0x00)
    hung_up: bool = False  # the fake caller hung up (closed) mid-stream
    audio_frames_sent: int = 0
    dtmf_sent: str | None = None
    received: list[Frame] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def audio_ms_sent(self) -> int:
        return self.audio_frames_sent * FRAME_MS


class FakeAudioSocketClient:
    """Plays Asterisk's part of an AudioSocket connection.

    Args:
        host, port: the AudioSocket server.
        uuid: the call UUID sent in the first frame.
    """

    def __init__(self, host: str, port: int, uuid: str | uuid_mod.UUID) -> None:
        self.host = host
        self.port = port
        self.uuid = uuid_mod.UUID(str(uuid))

    async def run(
        self,
        pcm: bytes = b"",
        *,
        speed: float | None = 1.0,
        dtmf: str | None = None,
        dtmf_at_ms: float = 0.0,
        hangup_at_ms: float | None = None,
        trailing_silence_ms: float = 3000.0,
        continuous: bool = True,
        wait_for_server_s: float = 5.0,
    ) -> ClientReport:
        """Connect, stream ``pcm`` and report.

        Args:
            pcm: caller audio, s16le 8 kHz mono; cut into 320-byte frames (the
                last one padded with silence).
            speed: pacing; 1.0 is real time (one frame per 20 ms), 10.0 ten
                times faster, None as fast as the socket allows.
            dtmf: a key to send once ``dtmf_at_ms`` of audio has been sent.
            hangup_at_ms: close the socket (the caller hangs up) after this
                much audio.
            trailing_silence_ms: silence frames sent after ``pcm`` when
                ``continuous`` (a SIP call streams silence; a Local channel,
                ``continuous=False``, sends nothing during silence).
            wait_for_server_s: after the audio, how long to wait for the server
                to send 0x00 or close before giving up.
        """
        report = ClientReport()
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        server_done = asyncio.Event()

        async def receive() -> None:
            try:
                while True:
                    frame = await read_frame(reader)
                    if frame is None:
                        report.closed_by_server = True
                        return
                    report.received.append(frame)
                    if frame.kind is Kind.HANGUP:
                        report.received_hangup = True
                        return
            except (AudioSocketError, ConnectionError, OSError):
                report.closed_by_server = True
            finally:
                server_done.set()

        receiver = asyncio.create_task(receive())
        try:
            writer.write(encode_frame(Kind.UUID, self.uuid.bytes))
            await writer.drain()
            frames = _frames(pcm)
            if continuous and trailing_silence_ms > 0:
                frames += [bytes(AUDIO_FRAME_BYTES)] * int(trailing_silence_ms // FRAME_MS)
            dtmf_pending = dtmf
            for index, frame in enumerate(frames):
                sent_ms = index * FRAME_MS
                if server_done.is_set():
                    break
                if hangup_at_ms is not None and sent_ms >= hangup_at_ms:
                    report.hung_up = True
                    break
                if dtmf_pending is not None and sent_ms >= dtmf_at_ms:
                    writer.write(encode_frame(Kind.DTMF, dtmf_pending.encode("ascii")))
                    report.dtmf_sent, dtmf_pending = dtmf_pending, None
                if speed:
                    delay = started + sent_ms / 1000 / speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                writer.write(encode_frame(Kind.AUDIO, frame))
                report.audio_frames_sent += 1
                await writer.drain()
                if not speed:
                    await asyncio.sleep(0)
            else:
                if dtmf_pending is not None:
                    writer.write(encode_frame(Kind.DTMF, dtmf_pending.encode("ascii")))
                    await writer.drain()
                    report.dtmf_sent = dtmf_pending
                if hangup_at_ms is not None:
                    report.hung_up = True
            if not report.hung_up and not server_done.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_for_server_s):
                        await server_done.wait()
        except (ConnectionError, OSError):
            report.closed_by_server = True
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            receiver.cancel()
            await asyncio.wait([receiver], timeout=1.0)
            report.elapsed_s = time.monotonic() - started
        return report


def _frames(pcm: bytes) -> list[bytes]:
    """Cut PCM into 320-byte frames, padding the last one with silence."""
    frames = [pcm[i : i + AUDIO_FRAME_BYTES] for i in range(0, len(pcm), AUDIO_FRAME_BYTES)]
    if frames and len(frames[-1]) < AUDIO_FRAME_BYTES:
        frames[-1] = frames[-1] + bytes(AUDIO_FRAME_BYTES - len(frames[-1]))
    return frames
