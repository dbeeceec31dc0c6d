"""Caller audio from EAGI's file descriptor 3, for process AGI scripts.

Asterisk's ``EAGI()`` gives the script the caller's audio on fd 3, about
16,000 bytes/s of 8 kHz signed 16-bit mono (``process-eagi.json``). A daemon
thread reads it in 20 ms frames (blocking reads, off the event loop) and keeps
draining it between recognitions so the pipe never fills up::

    source = EagiAudioSource()           # fd 3
    source.start()
    result = await recognize_eagi(source, pool.open("ko", grammar))

Keys do not arrive on fd 3: code that sees one through AGI calls
``session.dtmf(key)`` and the recognition ends with reason ``dtmf``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ._audio import frame_bytes, ms_to_bytes
from .grammar import Grammar, build_grammar
from .models import ModelRegistry
from .recognizer import Recognition, RecognitionSession, RecognizerPool

log = logging.getLogger(__name__)

__all__ = ["EAGI_FD", "EagiAudioSource", "recognize_eagi", "recognize_eagi_sync"]

#: The file descriptor on which EAGI delivers the caller's audio.
EAGI_FD = 3
_EOF = b""


class EagiAudioSource:
    """Reads fixed-size PCM frames from a file descriptor in a background thread.

    Frames are delivered only while a consumer listens (:meth:`listen`);
    otherwise they are read and dropped, which keeps Asterisk's pipe flowing.

    Args:
        fd: file descriptor to read (3 under EAGI).
        sample_rate: of the audio on ``fd``.
        frame_ms: frame duration handed to consumers.
        max_queue_ms: audio buffered for a slow consumer before the oldest is
            dropped (the reader never blocks, so Asterisk's pipe never fills).
        close_fd: close ``fd`` in :meth:`stop`.
    """

    def __init__(
        self,
        fd: int = EAGI_FD,
        *,
        sample_rate: int = 8000,
        frame_ms: int = 20,
        max_queue_ms: int = 10_000,
        close_fd: bool = False,
    ) -> None:
        self.fd = fd
        self.sample_rate = sample_rate
        self.frame_bytes = frame_bytes(sample_rate, frame_ms)
        self._max_frames = max(1, max_queue_ms // frame_ms)
        self._close_fd = close_fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[bytes] | None = None
        self._listening = False
        self._eof = False
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def eof(self) -> bool:
        """True once the fd reached end of file (the call is gone)."""
        return self._eof

    def start(self) -> None:
        """Start the reader thread (call from the event loop that consumes frames)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._thread = threading.Thread(target=self._read_loop, name=f"eagi-fd{self.fd}", daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        buffer = bytearray()
        while not self._stopped.is_set():
            try:
                data = os.read(self.fd, self.frame_bytes - len(buffer))
            except OSError as exc:
                if not self._stopped.is_set():
                    log.warning("EAGI audio fd %d: read failed: %s", self.fd, exc)
                data = b""
            if not data:
                self._post(_EOF)
                return
            buffer += data
            if len(buffer) == self.frame_bytes:
                self._post(bytes(buffer))
                buffer.clear()

    def _post(self, frame: bytes) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            loop.call_soon_threadsafe(self._deliver, frame)

    def _deliver(self, frame: bytes) -> None:
        """On the loop thread: queue a frame for the consumer or drop it."""
        assert self._queue is not None
        if not frame:
            self._eof = True
            self._queue.put_nowait(_EOF)
            return
        if not self._listening:
            return
        if self._queue.qsize() >= self._max_frames:
            self._queue.get_nowait()  # a stalled consumer loses the oldest audio
        self._queue.put_nowait(frame)

    def listen(self) -> None:
        """Start delivering frames; no-op if already listening.

        Audio read while not listening has been dropped; call this before a
        prompt starts to keep what the caller says over it (barge-in).
        """
        if self._queue is None:
            raise RuntimeError("EagiAudioSource.start() has not been called")
        if self._listening:
            return
        while not self._queue.empty():
            if not self._queue.get_nowait():  # keep an end-of-file marker
                self._queue.put_nowait(_EOF)
                break
        self._listening = True

    def pause(self) -> None:
        """Stop delivering frames; audio keeps being read and dropped."""
        self._listening = False

    async def next_frame(self, timeout: float | None = None) -> bytes | None:
        """The next frame; ``b""`` at end of file, None if none came within ``timeout`` s."""
        if self._queue is None:
            raise RuntimeError("EagiAudioSource.start() has not been called")
        if self._eof and self._queue.empty():
            return _EOF
        if not self._queue.empty():
            return self._queue.get_nowait()
        try:
            async with asyncio.timeout(timeout):
                return await self._queue.get()
        except TimeoutError:
            # Frames the reader thread posted just as the timer expired (a starved
            # process) are not a silent gap: let their callbacks run first.
            for _ in range(3):
                await asyncio.sleep(0)
                if not self._queue.empty():
                    return self._queue.get_nowait()
            return None

    def stop(self) -> None:
        """Stop the reader (it exits at its next read; the thread is a daemon)."""
        self._stopped.set()
        self._listening = False
        if self._close_fd:
            with contextlib.suppress(OSError):
                os.close(self.fd)


async def recognize_eagi(
    source: EagiAudioSource, session: RecognitionSession, *, gap_fill_ms: int = 200
) -> Recognition:
    """Feed EAGI audio to a session until it ends; EOF on the fd means ``hangup``.

    Listens from now on unless the source already listens (see
    :meth:`EagiAudioSource.listen`) and pauses it at the end. A pause of
    ``gap_fill_ms`` without audio is fed as silence so the session's timers
    keep running.
    """
    gap_pcm = b"\0" * ms_to_bytes(gap_fill_ms, session.sample_rate)
    source.listen()
    try:
        while not session.done:
            frame = await source.next_frame(timeout=gap_fill_ms / 1000)
            if frame is None:
                await session.feed(gap_pcm)
            elif frame == _EOF:
                return await session.finish("hangup")
            else:
                await session.feed(frame)
        return await session.finish("final")
    except BaseException:
        session.close()
        raise
    finally:
        source.pause()


def recognize_eagi_sync(
    registry_models: Mapping[str, str],
    lang: str,
    choices: Mapping[str, Sequence[str]] | Grammar | None,
    *,
    fd: int = EAGI_FD,
    **options: Any,
) -> Recognition:
    """One-shot recognition for a synchronous process AGI script.

    Builds a registry and a one-slot pool, listens on ``fd`` and returns the
    result. ``choices`` is a ``{choice: [phrases]}`` menu, a prepared
    :class:`Grammar`, or None for free speech; ``options`` go to
    :meth:`RecognizerPool.open`.
    """
    grammar = choices if isinstance(choices, Grammar) or choices is None else build_grammar(choices)

    async def run() -> Recognition:
        pool = RecognizerPool(ModelRegistry(registry_models, probe=False), max_concurrent=1)  # one call: no probe
        source = EagiAudioSource(fd)
        source.start()
        try:
            return await recognize_eagi(source, pool.open(lang, grammar, **options))
        finally:
            source.stop()
            pool.close()

    return asyncio.run(run())
