"""Speech for the product: Vosk recognition (:mod:`asr`) wired to the faces.

* :class:`SpeechService` — the models (loaded once per process, shared), the
  recogniser pool with admission control, endpointing defaults, recognition
  of in-memory audio and transcription of recordings.
* :class:`AudioSocketPort` — the FastAGI voice face listens through the
  AudioSocket server (``EXEC AudioSocket <uuid>,<host:port>``).
* :class:`EagiPort` — process AGI listens on EAGI's fd 3.
* :class:`SimSpeech` — ``ivr call``: ``say:`` text and ``wav:`` recordings.
* the ``ivr serve`` extension (the ``record`` action itself is in :mod:`ivr.hearing`).

No model configured, or none that loads: the server starts, logs one warning,
and every menu takes keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asr.audiosocket import AudioSocketServer, recognize_stream
from asr.eagi import EagiAudioSource, recognize_eagi
from asr.grammar import Grammar, build_grammar, normalize
from asr.models import ModelRegistry, ModelStatus
from asr.recognizer import EndpointSettings, Recognition, RecognitionSession, RecognizerPool
from asr.wav import AudioLoadError, load_pcm
from ivr.engine.types import Listen
from ivr.hearing import Heard, heard_text

if TYPE_CHECKING:  # pragma: no cover
    from ivr.config import Config
    from ivr.server import App

log = logging.getLogger("ivr.speech")

__all__ = ["AudioSocketPort", "EagiPort", "SimSpeech", "SpeechService", "speech_extension"]

#: Transcription feeds whole recordings: endpointing must not cut them short.
_TRANSCRIBE = EndpointSettings(end_silence_ms=10**9, max_speech_ms=10**9, no_input_ms=10**9,
                               stable_partial_ms=10**9, vosk_endpoint=False, chunk_ms=1000)
DOCS_HINT = "see docs/speech.md"
#: Audio handed to Vosk per trip to a worker thread. 320 ms rather than asr's
#: 160 ms default: half the thread hand-offs (bench/asr.py: less CPU over a
#: bare Vosk loop) with no measurable change in end-of-speech-to-result latency,
#: since the end of speech is detected per 20 ms frame.
CHUNK_MS = 320


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """Hold back a logger's warnings (they are summed up in one warning instead)."""
    held: list[logging.LogRecord] = []

    class Hold(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            held.append(record)
            return False

    logger, hold = logging.getLogger(logger_name), Hold()
    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


class SpeechService:
    """Models, recognisers and endpointing defaults for one process.

    Args:
        models: language → model location (directory or ``package:<module>``).
        pool_size: recognitions at the same time; further callers get keys.
        end_silence_ms, max_speech_ms: endpointing defaults (a node may override).
        connect_timeout: seconds to wait for Asterisk's AudioSocket connection.
        probe_models: try each model in a child process first (see :class:`asr.models.ModelRegistry`).
    """

    def __init__(self, models: Mapping[str, str], *, pool_size: int = 8, end_silence_ms: int = 800,
                 max_speech_ms: int = 8000, connect_timeout: float = 3.0, probe_models: bool = True) -> None:
        self.registry = ModelRegistry(models, probe=probe_models)
        self.pool = RecognizerPool(self.registry, max_concurrent=pool_size)
        self.end_silence_ms = end_silence_ms
        self.max_speech_ms = max_speech_ms
        self.connect_timeout = connect_timeout
        self.audiosocket: AudioSocketServer | None = None
        self._grammars: dict[tuple[tuple[str, tuple[str, ...]], ...], Grammar | None] = {}

    @classmethod
    def from_config(cls, config: Config, *, probe_models: bool = True) -> SpeechService:
        return cls(config.asr_models, pool_size=config.asr_pool_size, end_silence_ms=config.asr_end_silence_ms,
                   max_speech_ms=config.asr_max_speech_ms, connect_timeout=config.asr_connect_timeout,
                   probe_models=probe_models)

    # -- models ------------------------------------------------------------------------

    async def load(self) -> dict[str, bool]:
        """Load every configured model now (off the event loop); log one warning for what is missing."""
        if not self.registry.languages:
            log.warning("speech recognition is off: no Vosk model is configured (asr_models); "
                        "menus with speech: true take keys only (%s)", DOCS_HINT)
            return {}
        with _quiet("asr.models"):
            loaded = await self.pool.warm_up()
        missing = {lang: self.registry.unavailable_reason(lang) for lang, ok in loaded.items() if not ok}
        if missing:
            what = "; ".join(f"{lang}: {why}" for lang, why in missing.items())
            state = "off" if len(missing) == len(loaded) else "off for " + ", ".join(missing)
            log.warning("speech recognition is %s (%s); those menus take keys only (%s)", state, what, DOCS_HINT)
        ready = [lang for lang, ok in loaded.items() if ok]
        if ready:
            log.info("speech recognition ready for %s (%d recognisers)", ", ".join(ready), self.pool.max_concurrent)
        return loaded

    @property
    def any_available(self) -> bool:
        return any(self.available(lang) for lang in self.registry.languages)

    def available(self, lang: str) -> bool:
        """A model is loaded (or still loadable) for ``lang``."""
        return self.registry.status(lang) in (ModelStatus.LOADED, ModelStatus.NOT_LOADED)

    def why_unavailable(self, lang: str) -> str | None:
        """Why a configured model cannot serve ``lang`` (None when it can, or when none is configured)."""
        if not self.registry.languages or self.registry.status(lang) is not ModelStatus.UNAVAILABLE:
            return None
        return self.registry.unavailable_reason(lang)

    async def close(self) -> None:
        if self.audiosocket is not None:
            await self.audiosocket.stop()
            self.audiosocket = None
        self.pool.close()

    # -- recognition ---------------------------------------------------------------------

    def grammar(self, listen: Listen) -> Grammar | None:
        """The Vosk grammar of a question (None for free speech); cached per phrase set."""
        if listen.free:
            return None
        if listen.grammar not in self._grammars:
            try:
                self._grammars[listen.grammar] = build_grammar({v: list(p) for v, p in listen.grammar})
            except ValueError as exc:
                log.error("cannot build a speech grammar from %s: %s", listen.grammar, exc)
                self._grammars[listen.grammar] = None
        return self._grammars[listen.grammar]

    def settings(self, listen: Listen) -> EndpointSettings:
        return EndpointSettings(
            end_silence_ms=listen.end_silence_ms or self.end_silence_ms,
            max_speech_ms=listen.max_speech_ms or self.max_speech_ms,
            no_input_ms=listen.no_input_ms or 5000,
            chunk_ms=CHUNK_MS,
        )

    def open_session(self, listen: Listen) -> RecognitionSession | str:
        """A streaming session holding a recogniser slot, or ``busy`` / ``unavailable``."""
        if not self.available(listen.lang):
            return "unavailable"
        grammar = self.grammar(listen)
        if grammar is None and not listen.free:
            return "unavailable"
        slot = self.pool.try_acquire()
        if slot is None:
            return "busy"
        return self.pool.open(listen.lang, grammar, slot=slot, settings=self.settings(listen))

    def heard(self, result: Recognition, listen: Listen, source: str) -> Heard:
        """A recognition result as the faces see it."""
        text = result.text
        if listen.free:
            value = text if text and normalize(text) not in ("", "[unk]") else None
            hits: tuple[str, ...] = ()
        else:
            value = result.choice
            hits = _hits(text, self.grammar(listen))
        return Heard(result.reason, value, text, result.confidence, result.dtmf, hits,
                     round(result.latency_ms, 1), round(result.audio_ms), source)

    async def recognize_pcm(self, listen: Listen, pcm: bytes, *, source: str = "wav") -> Heard:
        """Recognise a whole utterance held in memory (the simulator's ``wav:`` answers)."""
        session = self.open_session(listen)
        if isinstance(session, str):
            return Heard(session, source=source)
        step = 320
        try:
            for i in range(0, len(pcm), step):
                if await session.feed(pcm[i:i + step]):
                    break
            result = await session.finish("final")
        except BaseException:
            session.close()
            raise
        return self.heard(result, listen, source)

    async def transcribe(self, path: str, lang: str, *, wait_s: float = 10.0) -> dict[str, Any]:
        """Free recognition of a recorded message; waits up to ``wait_s`` for a free recogniser."""
        if not self.available(lang):
            return {"transcript": None, "reason": f"no speech model for {lang}"}
        try:
            pcm = await asyncio.to_thread(load_pcm, path)
        except AudioLoadError as exc:
            return {"transcript": None, "reason": str(exc)}
        deadline = time.monotonic() + wait_s
        slot = self.pool.try_acquire()
        while slot is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            slot = self.pool.try_acquire()
        if slot is None:
            return {"transcript": None, "reason": "all recognisers busy"}
        started = time.monotonic()
        session = self.pool.open(lang, None, slot=slot, settings=_TRANSCRIBE)
        try:
            step = 16000  # 1 s of audio per call: the session batches it for Vosk
            for i in range(0, len(pcm), step):
                await session.feed(pcm[i:i + step])
            result = await session.finish("final")
        except BaseException:
            session.close()
            raise
        if result.reason == "unavailable":
            return {"transcript": None, "reason": f"no speech model for {lang}"}
        return {"transcript": result.text, "confidence": result.confidence,
                "transcribe_ms": round((time.monotonic() - started) * 1000)}


def _hits(text: str, grammar: Grammar | None) -> tuple[str, ...]:
    """Grammar phrases found, word-aligned, in the recognised text."""
    if grammar is None or not text:
        return ()
    words = normalize(text).split()
    found = []
    for phrase in grammar.phrases:
        p = phrase.split()
        if any(words[i:i + len(p)] == p for i in range(len(words) - len(p) + 1)):
            found.append(phrase)
    return tuple(found)


# -- ports for the voice face ------------------------------------------------------------


class _AudioSocketTurn:
    transport = "audiosocket"

    def __init__(self, service: SpeechService, listen: Listen, session: RecognitionSession) -> None:
        assert service.audiosocket is not None
        self._service = service
        self._listen = listen
        self._session = session
        self._stream = service.audiosocket.expect(uuid.uuid4())
        self.exec_argument: str | None = self._stream.exec_argument

    @property
    def connected(self) -> bool:
        return self._stream.connected

    async def run(self) -> Heard:
        result = await recognize_stream(self._stream, self._session, connect_timeout=self._service.connect_timeout)
        if result.reason == "unavailable" and not self._stream.connected:
            return Heard("no_audio", source="audiosocket")
        return self._service.heard(result, self._listen, "audiosocket")

    def dtmf(self, key: str) -> None:
        self._session.dtmf(key)

    async def close(self) -> None:
        self._session.close()
        await self._stream.close()


class AudioSocketPort:
    """FastAGI: listen through the AudioSocket server."""

    def __init__(self, service: SpeechService) -> None:
        self.service = service
        self.connect_timeout = service.connect_timeout

    def open(self, listen: Listen) -> _AudioSocketTurn | str:
        if self.service.audiosocket is None:
            return "unavailable"
        session = self.service.open_session(listen)
        if isinstance(session, str):
            return session
        return _AudioSocketTurn(self.service, listen, session)

    def why_unavailable(self, lang: str) -> str | None:
        """Why :meth:`open` says ``unavailable`` although speech is configured (for the trail)."""
        why = self.service.why_unavailable(lang)
        if why is None and self.service.audiosocket is None and self.service.available(lang) \
                and self.service.registry.languages:
            why = "the AudioSocket server is not listening"
        return why

    async def transcribe(self, path: str, lang: str) -> dict[str, Any]:
        return await self.service.transcribe(path, lang)


class _EagiTurn:
    transport = "eagi"
    exec_argument = None
    connected = True

    def __init__(self, service: SpeechService, listen: Listen, session: RecognitionSession,
                 source: EagiAudioSource) -> None:
        self._service, self._listen, self._session, self._source = service, listen, session, source

    async def run(self) -> Heard:
        result = await recognize_eagi(self._source, self._session)
        return self._service.heard(result, self._listen, "eagi")

    def dtmf(self, key: str) -> None:
        self._session.dtmf(key)

    async def close(self) -> None:
        self._session.close()


class EagiPort:
    """Process AGI under ``EAGI()``: listen on the caller's audio on fd 3."""

    def __init__(self, service: SpeechService, source: EagiAudioSource) -> None:
        self.service = service
        self.source = source
        self.connect_timeout = 0.0

    def open(self, listen: Listen) -> _EagiTurn | str:
        if self.source.eof:
            return "unavailable"
        session = self.service.open_session(listen)
        if isinstance(session, str):
            return session
        return _EagiTurn(self.service, listen, session, self.source)

    def why_unavailable(self, lang: str) -> str | None:
        """Why :meth:`open` says ``unavailable`` although speech is configured (for the trail)."""
        return self.service.why_unavailable(lang)

    async def transcribe(self, path: str, lang: str) -> dict[str, Any]:
        return await self.service.transcribe(path, lang)


class TranscribeOnlyPort:
    """Plain process AGI (no audio channel): questions take keys, recordings are transcribed."""

    def __init__(self, service: SpeechService) -> None:
        self.service = service
        self.connect_timeout = 0.0

    def open(self, listen: Listen) -> str:
        return "unavailable"

    async def transcribe(self, path: str, lang: str) -> dict[str, Any]:
        return await self.service.transcribe(path, lang)


class SimSpeech:
    """The simulator's ears: typed text (``say:``) and recordings (``wav:``)."""

    def __init__(self, service: SpeechService | None) -> None:
        self.service = service

    def hear_text(self, listen: Listen, text: str) -> Heard:
        """Text matched against the grammar like a recognition result, confidence 1.0."""
        grammar = self.service.grammar(listen) if self.service else None
        if grammar is None:
            return heard_text(listen, text)
        from asr.grammar import match

        norm = normalize(text)
        if not norm:
            return Heard("silence", source="say")
        return Heard("final", match(norm, grammar.phrase_to_choice), norm, 1.0, hits=_hits(norm, grammar),
                     source="say")

    def why_not(self, lang: str) -> str | None:
        """Why a recording cannot be recognised in ``lang`` (None when it can)."""
        if self.service is None or not self.service.registry.languages:
            return "no Vosk model is configured (asr_models, --asr-model LANG=PATH)"
        if self.service.registry.get(lang) is None:
            return self.service.registry.unavailable_reason(lang) or f"no Vosk model for {lang}"
        return None

    async def hear_audio(self, listen: Listen, path: str) -> Heard:
        """A real recording run through the recogniser, heard as on a call: after 0.3 s of
        quiet (the end of the prompt) and followed by silence until the answer ends.

        Raises:
            ValueError: the file cannot be read as audio.
        """
        assert self.service is not None
        try:
            pcm = await asyncio.to_thread(load_pcm, path)
        except AudioLoadError as exc:
            raise ValueError(str(exc)) from None
        return await self.service.recognize_pcm(listen, bytes(4800) + pcm + bytes(32000), source="wav")

    async def transcribe(self, path: str, lang: str) -> dict[str, Any]:
        if self.service is None:
            return {"transcript": None, "reason": "speech recognition is off"}
        return await self.service.transcribe(path, lang)


def agi_hooks(config: Config, *, source: EagiAudioSource | None = None) -> tuple[dict[str, Any], SpeechService]:
    """Voice-face hooks for a process-AGI script: EAGI audio on fd 3 when ``source`` is given.

    Models load on first use (a process AGI script lives for one call), without
    the child-process probe: it would double the load time of every call, and a
    model that crashes Kaldi ends only this call's script, not a server.
    """
    service = SpeechService.from_config(config, probe_models=False)
    port: Any = EagiPort(service, source) if source is not None else TranscribeOnlyPort(service)
    return {"speech": port, "record_dir": str(Path(config.record_dir).resolve())}, service


# -- ivr serve ---------------------------------------------------------------------------


async def speech_extension(app: App) -> None:
    """Load the models, start the AudioSocket server, give the voice face ears."""
    config = app.config
    record_dir = Path(config.record_dir).resolve()
    record_dir.mkdir(parents=True, exist_ok=True)
    app.voice_hooks["record_dir"] = str(record_dir)
    service = SpeechService.from_config(config)
    app.cleanups.append(service.close)
    await service.load()
    if service.any_available:
        server = AudioSocketServer(config.audiosocket_host, config.audiosocket_port,
                                   advertise_host=config.audiosocket_advertise_host)
        try:
            await server.start()
        except OSError as exc:
            log.error("AudioSocket server cannot listen on %s:%d (%s): speech is off, menus take keys",
                      config.audiosocket_host, config.audiosocket_port, exc)
        else:
            service.audiosocket = server
            config.audiosocket_port = server.port
            log.info("AudioSocket server on %s", server.address)
    app.voice_hooks["speech"] = AudioSocketPort(service)


def _register() -> None:
    from ivr.server import EXTENSIONS

    if speech_extension not in EXTENSIONS:
        EXTENSIONS.append(speech_extension)


_register()
