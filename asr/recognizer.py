"""Streaming speech recognition with Vosk, off the event loop, with admission control.

::

    pool = RecognizerPool(registry, max_concurrent=4)
    slot = pool.try_acquire()
    if slot is None:
        ...                                   # all recognisers busy: take keys only
    session = pool.open("ko", grammar, slot=slot)
    for frame in frames:                      # 20 ms of 8 kHz s16le each
        if await session.feed(frame):         # True once the utterance has ended
            break
    result = await session.finish()           # Recognition(choice=..., reason="final", ...)

Each session owns one ``KaldiRecognizer`` (words enabled). Audio is batched
into ``chunk_ms`` pieces before it is handed to Vosk in a worker thread (Vosk
releases the GIL while decoding), so the per-frame cost on the event loop is a
buffer append and an RMS.

End of the utterance, whichever comes first, measured in audio time (so
accelerated tests behave like real time):

* ``final``: speech was heard and then ``end_silence_ms`` passed with neither a
  voiced frame (RMS over ``speech_rms``) nor a change in Vosk's partial
  result; or Vosk's own endpoint fired (``vosk_endpoint=True``); or a non-empty
  partial result stayed the same for ``stable_partial_ms`` (noisy lines, where
  the energy never drops);
* ``maxtime``: speech went on for ``max_speech_ms``;
* ``silence``: no speech within ``no_input_ms``;
* ``dtmf``: :meth:`RecognitionSession.dtmf` was called;
* ``hangup`` (or any reason the caller passes to :meth:`finish`) otherwise.

``busy`` and ``unavailable`` sessions are born finished: no slot was free, or
the language has no usable model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, get_args

from ._audio import bytes_to_ms, frame_bytes, ms_to_bytes, rms
from .grammar import Grammar, match
from .models import UNK, LoadedModel, ModelRegistry, ModelStatus

log = logging.getLogger(__name__)

__all__ = [
    "REASONS",
    "EndpointSettings",
    "Reason",
    "Recognition",
    "RecognitionSession",
    "RecognizerPool",
    "Slot",
    "Word",
]

Reason = Literal["final", "silence", "maxtime", "hangup", "dtmf", "busy", "unavailable"]
REASONS: tuple[str, ...] = get_args(Reason)
#: Reasons after which the recognised text is matched against the grammar.
_MATCHING_REASONS = frozenset({"final", "maxtime"})
#: Reasons after which Vosk is not asked for a final result.
#: ("silence" means neither energy nor Vosk's partial result ever showed speech.)
_NO_DECODE_REASONS = frozenset({"silence", "dtmf", "hangup", "busy", "unavailable"})


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word with Vosk's timing (seconds from the start) and confidence."""

    word: str
    start: float
    end: float
    conf: float


@dataclass(frozen=True, slots=True)
class Recognition:
    """The outcome of one recognition session.

    Attributes:
        choice: grammar choice key the utterance matched, else None.
        text: what Vosk heard (``[unk]`` for words outside the grammar).
        confidence: mean Vosk word confidence, 0.0 when no word was heard.
        words: the words with timing and confidence.
        reason: why the session ended (see :data:`Reason`).
        dtmf: the key that ended the session when ``reason == "dtmf"``.
        latency_ms: wall time from the end of the audio to the final result.
        audio_ms: duration of the audio the session consumed.
    """

    choice: str | None
    text: str
    confidence: float
    words: list[Word]
    reason: Reason
    dtmf: str | None = None
    latency_ms: float = 0.0
    audio_ms: float = 0.0

    @property
    def matched(self) -> bool:
        """True when the utterance selected a grammar choice."""
        return self.choice is not None

    @classmethod
    def empty(cls, reason: Reason, *, dtmf: str | None = None, audio_ms: float = 0.0) -> Recognition:
        """A result with nothing recognised."""
        return cls(None, "", 0.0, [], reason, dtmf=dtmf, audio_ms=audio_ms)


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    """End-of-utterance detection; all times in milliseconds of audio."""

    end_silence_ms: int = 800
    max_speech_ms: int = 8000
    no_input_ms: int = 5000
    #: Frame RMS (0-32767) above which a 20 ms frame counts as voice (300 ≈ -41 dBFS).
    speech_rms: int = 300
    #: Voiced audio needed before speech counts as started (ignores clicks).
    min_speech_ms: int = 60
    #: A non-empty partial result unchanged this long ends the utterance.
    stable_partial_ms: int = 1500
    #: End as soon as Vosk's own endpointer finalises a non-empty result.
    vosk_endpoint: bool = True
    #: Audio is handed to Vosk in chunks of about this size.
    chunk_ms: int = 160

    def __post_init__(self) -> None:
        for name in ("end_silence_ms", "max_speech_ms", "no_input_ms", "chunk_ms", "stable_partial_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.min_speech_ms < 0 or self.speech_rms < 0:
            raise ValueError("min_speech_ms and speech_rms must not be negative")


class Slot:
    """Permission to run one recogniser; release it exactly once (idempotent)."""

    def __init__(self, pool: RecognizerPool) -> None:
        self._pool: RecognizerPool | None = pool

    @property
    def released(self) -> bool:
        return self._pool is None

    def release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._release()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RecognizerPool:
    """Runs recognition sessions in worker threads, at most ``max_concurrent`` at once.

    Args:
        registry: where models come from.
        max_concurrent: recognisers allowed at the same time; further requests
            get no slot (``try_acquire()`` returns None, ``open()`` a ``busy``
            session) so the caller can fall back to keys.
        executor: where Vosk runs; by default a private ThreadPoolExecutor
            with ``max_concurrent`` threads (closed by :meth:`close`).
    """

    def __init__(self, registry: ModelRegistry, *, max_concurrent: int, executor: Executor | None = None) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.registry = registry
        self.max_concurrent = max_concurrent
        self._own_executor = executor is None
        self.executor: Executor = executor or ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="asr")
        self._lock = threading.Lock()
        self._in_use = 0

    @property
    def in_use(self) -> int:
        """Slots currently held."""
        with self._lock:
            return self._in_use

    def try_acquire(self) -> Slot | None:
        """A slot, or None when all recognisers are busy. Never blocks."""
        with self._lock:
            if self._in_use >= self.max_concurrent:
                return None
            self._in_use += 1
        return Slot(self)

    @contextmanager
    def slot(self) -> Iterator[Slot | None]:
        """``with pool.slot() as slot:`` — slot is None when busy; released on exit."""
        slot = self.try_acquire()
        try:
            yield slot
        finally:
            if slot is not None:
                slot.release()

    def _release(self) -> None:
        with self._lock:
            self._in_use -= 1

    async def warm_up(self, langs: list[str] | None = None) -> dict[str, bool]:
        """Load models in a worker thread now rather than on the first call."""
        langs = langs or self.registry.languages
        loop = asyncio.get_running_loop()
        models = await asyncio.gather(*(loop.run_in_executor(self.executor, self.registry.get, lang) for lang in langs))
        return {lang: model is not None for lang, model in zip(langs, models, strict=True)}

    def open(
        self,
        lang: str,
        grammar: Grammar | str | None = None,
        *,
        sample_rate: int = 8000,
        end_silence_ms: int = 800,
        max_speech_ms: int = 8000,
        no_input_ms: int = 5000,
        min_confidence: float = 0.0,
        slot: Slot | None = None,
        settings: EndpointSettings | None = None,
    ) -> RecognitionSession:
        """Start a streaming recognition session.

        Args:
            lang: language code; its model is loaded on first use.
            grammar: a :class:`Grammar` (the session then reports a
                ``choice``), a raw Vosk grammar JSON string, or None for free
                speech with the model's whole vocabulary.
            sample_rate: of the PCM passed to :meth:`RecognitionSession.feed`.
            end_silence_ms, max_speech_ms, no_input_ms: endpointing; ignored
                when ``settings`` is given.
            min_confidence: a match whose mean word confidence is lower is
                reported as no match (``choice=None``).
            slot: a slot from :meth:`try_acquire`, handed over to the session
                (released by :meth:`RecognitionSession.finish`). Without one the
                session acquires its own or is born ``busy``.
            settings: full endpointing settings.

        Never raises for a missing model or a full pool: the session is then
        already finished with reason ``unavailable`` or ``busy``.
        """
        if settings is None:
            settings = EndpointSettings(
                end_silence_ms=end_silence_ms, max_speech_ms=max_speech_ms, no_input_ms=no_input_ms
            )
        status = self.registry.status(lang)
        if status in (ModelStatus.NOT_CONFIGURED, ModelStatus.UNAVAILABLE):
            if slot is not None:
                slot.release()
            if status is ModelStatus.NOT_CONFIGURED:
                log.debug("no speech model configured for %r", lang)
            return RecognitionSession(self, lang, grammar, settings, sample_rate, min_confidence, None, "unavailable")
        if slot is None:
            slot = self.try_acquire()
            if slot is None:
                return RecognitionSession(self, lang, grammar, settings, sample_rate, min_confidence, None, "busy")
        return RecognitionSession(self, lang, grammar, settings, sample_rate, min_confidence, slot, None)

    async def recognize_pcm(
        self, lang: str, grammar: Grammar | str | None, pcm: bytes, *, sample_rate: int = 8000, **options: Any
    ) -> Recognition:
        """Recognise a whole utterance held in memory (simulator, tests).

        The audio is fed in 20 ms frames; if it ends before an endpoint is
        detected the result is finalised with reason ``final``.
        """
        session = self.open(lang, grammar, sample_rate=sample_rate, **options)
        step = frame_bytes(sample_rate)
        try:
            for i in range(0, len(pcm), step):
                if await session.feed(pcm[i : i + step]):
                    break
            return await session.finish("final")
        except BaseException:
            session.close()
            raise

    def close(self) -> None:
        """Shut down the executor if the pool created it."""
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)


def _word(raw: Mapping[str, Any], unk: str | None) -> Word:
    """A Word from one entry of Vosk's ``result`` list."""
    text = str(raw.get("word", ""))
    return Word(
        word=UNK if text == unk else text,
        start=float(raw.get("start", 0.0)),
        end=float(raw.get("end", 0.0)),
        conf=float(raw.get("conf", 0.0)),
    )


@dataclass(slots=True)
class _Step:
    """What one trip to the worker thread learnt."""

    unavailable: bool = False
    segment: dict[str, Any] | None = None  # a result Vosk finalised at its endpoint
    partial: str | None = None
    final: dict[str, Any] | None = None


@dataclass(slots=True)
class _Timing:
    audio_bytes: int = 0
    voiced_run_ms: float = 0.0
    speech_start_ms: float | None = None
    last_activity_ms: float = 0.0
    partial: str = ""
    partial_since_ms: float = 0.0
    segments: list[dict[str, Any]] = field(default_factory=list)


class RecognitionSession:
    """One utterance: feed 20 ms frames, then :meth:`finish`. Use from one event loop.

    Created by :meth:`RecognizerPool.open`. Also an async context manager
    that finishes (reason ``hangup`` on error) and releases the slot on exit.
    """

    def __init__(
        self,
        pool: RecognizerPool,
        lang: str,
        grammar: Grammar | str | None,
        settings: EndpointSettings,
        sample_rate: int,
        min_confidence: float,
        slot: Slot | None,
        end_reason: Reason | None,
    ) -> None:
        self.lang = lang
        self.settings = settings
        self.sample_rate = sample_rate
        self.min_confidence = min_confidence
        self._pool = pool
        self._slot = slot
        if isinstance(grammar, Grammar):
            self._grammar_json: str | None = grammar.json
            self._phrase_to_choice: Mapping[str, str] | None = grammar.phrase_to_choice
        else:
            self._grammar_json = grammar
            self._phrase_to_choice = None
        self._frame_bytes = frame_bytes(sample_rate)
        self._chunk_bytes = max(self._frame_bytes, ms_to_bytes(settings.chunk_ms, sample_rate))
        self._pending = bytearray()  # audio not yet given to Vosk
        self._frame_rest = bytearray()  # tail shorter than one frame, for the energy check
        self._t = _Timing()
        self._end_reason: Reason | None = end_reason
        self._ended_at: float | None = time.monotonic() if end_reason else None
        self._dtmf: str | None = None
        self._model: LoadedModel | None = None
        self._recognizer: Any = None
        self._lock = asyncio.Lock()
        self._result: Recognition | None = None
        if end_reason is not None:
            self._result = Recognition.empty(end_reason)

    # -- state ---------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once the utterance has ended (feeding more audio is pointless)."""
        return self._end_reason is not None

    @property
    def reason(self) -> Reason | None:
        """Why the utterance ended, if it has."""
        return self._end_reason

    @property
    def audio_ms(self) -> float:
        """Audio consumed so far."""
        return bytes_to_ms(self._t.audio_bytes, self.sample_rate)

    @property
    def speech_started(self) -> bool:
        """True once voice (energy or a partial result) has been detected."""
        return self._t.speech_start_ms is not None

    def _end(self, reason: Reason, at: float | None = None) -> None:
        if self._end_reason is None:
            self._end_reason = reason
            self._ended_at = at if at is not None else time.monotonic()

    # -- input ---------------------------------------------------------------

    async def feed(self, pcm: bytes) -> bool:
        """Add audio (mono s16le at ``sample_rate``); returns True once the utterance has ended."""
        if self._end_reason is not None:
            return True
        arrived = time.monotonic()
        self._pending += pcm
        self._scan_energy(pcm, arrived)
        if self._end_reason is None and len(self._pending) >= self._chunk_bytes:
            await self._step(finalize=False, arrived=arrived)
        return self._end_reason is not None

    def dtmf(self, key: str) -> None:
        """A key was pressed: the utterance ends with reason ``dtmf``."""
        if self._end_reason is None:
            self._dtmf = key
            self._end("dtmf")

    def _scan_energy(self, pcm: bytes, arrived: float) -> None:
        """Per-frame energy VAD and the time-based end conditions."""
        s, t = self.settings, self._t
        data = bytes(self._frame_rest) + pcm if self._frame_rest else pcm
        size = self._frame_bytes
        whole = len(data) - len(data) % size
        self._frame_rest = bytearray(data[whole:])
        frame_ms = bytes_to_ms(size, self.sample_rate)
        for offset in range(0, whole, size):
            t.audio_bytes += size
            now_ms = bytes_to_ms(t.audio_bytes, self.sample_rate)
            if rms(data[offset : offset + size]) >= s.speech_rms:
                t.voiced_run_ms += frame_ms
                t.last_activity_ms = now_ms
                if t.speech_start_ms is None and t.voiced_run_ms >= max(s.min_speech_ms, frame_ms):
                    t.speech_start_ms = now_ms - t.voiced_run_ms
            else:
                t.voiced_run_ms = 0.0
            if self._check_time(now_ms, arrived):
                return

    def _check_time(self, now_ms: float, arrived: float) -> bool:
        s, t = self.settings, self._t
        if t.speech_start_ms is None:
            if now_ms >= s.no_input_ms:
                self._end("silence", arrived)
        elif now_ms - t.last_activity_ms >= s.end_silence_ms:
            self._end("final", arrived)
        elif now_ms - t.speech_start_ms >= s.max_speech_ms:
            self._end("maxtime", arrived)
        elif t.partial and now_ms - t.partial_since_ms >= s.stable_partial_ms:
            self._end("final", arrived)
        return self._end_reason is not None

    # -- Vosk (worker thread) -----------------------------------------------

    def _work(self, chunk: bytes, finalize: bool) -> _Step:
        """Runs in the executor; the only code that touches the KaldiRecognizer."""
        if self._recognizer is None:
            model = self._pool.registry.get(self.lang)
            if model is None:
                return _Step(unavailable=True)
            import vosk  # already imported by the registry's load

            self._model = model
            if self._grammar_json is not None:
                grammar = model.prepare_grammar(self._grammar_json)
                self._recognizer = vosk.KaldiRecognizer(model.model, self.sample_rate, grammar)
            else:
                self._recognizer = vosk.KaldiRecognizer(model.model, self.sample_rate)
            self._recognizer.SetWords(True)
        rec = self._recognizer
        step = _Step()
        if chunk and rec.AcceptWaveform(chunk):
            step.segment = json.loads(rec.Result())
        if finalize:
            step.final = json.loads(rec.FinalResult())
        elif step.segment is None:
            step.partial = json.loads(rec.PartialResult()).get("partial", "")
        return step

    async def _step(self, *, finalize: bool, arrived: float) -> _Step:
        async with self._lock:
            chunk, self._pending = bytes(self._pending), bytearray()
            loop = asyncio.get_running_loop()
            step = await loop.run_in_executor(self._pool.executor, self._work, chunk, finalize)
        if step.unavailable:
            self._end("unavailable", arrived)
            self._end_reason = "unavailable"  # also when finish() had already set a reason
            return step
        t, now_ms = self._t, self.audio_ms
        if step.segment is not None and step.segment.get("text"):
            t.segments.append(step.segment)
            if t.speech_start_ms is None:
                t.speech_start_ms = now_ms
            if self.settings.vosk_endpoint:
                self._end("final", arrived)
            t.last_activity_ms, t.partial = now_ms, ""
        if step.partial is not None and step.partial != t.partial:
            t.partial, t.partial_since_ms = step.partial, now_ms
            if step.partial:
                t.last_activity_ms = now_ms
                if t.speech_start_ms is None:
                    t.speech_start_ms = now_ms
        if self._end_reason is None:
            self._check_time(now_ms, arrived)
        return step

    # -- result --------------------------------------------------------------

    async def finish(self, reason: Reason = "final") -> Recognition:
        """Finalise and return the result; releases the slot. Idempotent.

        ``reason`` applies only if the session has not ended by itself (use
        ``"hangup"`` when the caller went away).
        """
        if self._result is not None:
            return self._result
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        self._end(reason)
        try:
            if self._end_reason in _NO_DECODE_REASONS:
                # Silence, a key, a hang-up or no recogniser: no need to wait for Vosk.
                self._pending.clear()
                self._result = self._build(None)
            else:
                step = await self._step(finalize=True, arrived=self._ended_at or time.monotonic())
                self._result = self._build(step.final)
        finally:
            self._release()
        return self._result

    def _build(self, final: dict[str, Any] | None) -> Recognition:
        assert self._end_reason is not None
        if self._end_reason == "unavailable":
            return Recognition.empty("unavailable", audio_ms=self.audio_ms)
        parts = [*self._t.segments, *([final] if final else [])]
        unk = self._model.unk_symbol if self._model else None
        words = [_word(w, unk) for part in parts for w in part.get("result", [])]
        texts = [part.get("text", "") for part in parts if part.get("text")]
        text = " ".join(UNK if tok == unk else tok for tok in " ".join(texts).split())
        confidence = sum(w.conf for w in words) / len(words) if words else 0.0
        choice = None
        if self._end_reason in _MATCHING_REASONS and self._phrase_to_choice is not None:
            choice = match(text, self._phrase_to_choice)
            if choice is not None and confidence < self.min_confidence:
                choice = None
        latency = (time.monotonic() - self._ended_at) * 1000 if self._ended_at else 0.0
        return Recognition(
            choice=choice,
            text=text,
            confidence=round(confidence, 4),
            words=words,
            reason=self._end_reason,
            dtmf=self._dtmf,
            latency_ms=round(latency, 2),
            audio_ms=self.audio_ms,
        )

    def _release(self) -> None:
        self._recognizer = None
        if self._slot is not None:
            self._slot.release()
            self._slot = None

    def close(self) -> None:
        """Release the slot without a result (when :meth:`finish` cannot be awaited)."""
        if self._result is None:
            self._end("hangup")
            self._result = Recognition.empty("hangup", audio_ms=self.audio_ms)
        self._release()

    async def __aenter__(self) -> RecognitionSession:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.finish("hangup" if exc_type is not None else "final")
