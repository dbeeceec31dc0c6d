#!/usr/bin/env python3
"""Prompt rendering benchmark: cold builds, cache hits, call-time cache misses.

* cold build: the demo flow's 17 static prompts of one language rendered into
  an empty output folder with an empty cache (pyttsx3 + espeak-ng + ffmpeg,
  one worker process per prompt), with 1 job and with ``--jobs`` jobs;
* warm build: the same again, everything in place (what a re-run costs);
* cache hits: a call-time prompt already rendered (the common case), a static
  prompt checked against the build manifest, and a prompt whose cache entry
  exists but is not yet in the sounds folder (a new server, a fresh folder);
* cache misses at call time: a new amount in the balance prompt, one at a time
  (the latency one caller waits for) and 8 at once with ``prompt_workers=2``;
* where a miss goes: Python start-up, the synthesis itself, the ffmpeg
  conversion.

    .venv/bin/python bench/prompts.py [--jobs 2] [--misses 20]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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

from ivr.engine import PromptOut  # noqa: E402
from ivr.flow.loader import load_flow  # noqa: E402
from ivr.prompts.build import build  # noqa: E402
from ivr.prompts.render import PromptSettings, Renderer, publish  # noqa: E402
from ivr.prompts.runtime import PromptService  # noqa: E402

DEMO = ROOT / "flows" / "demo_hotline.yaml"
BALANCE = {"zh-CN": "张三，您的账户余额为{}元。", "en-US": "Zhang San, your balance is {} yuan."}


def machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.split()
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split()
    return (f"{os.cpu_count()} CPU ({cpu}), {mem_kb / 1048576:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, espeak-ng {espeak[3] if len(espeak) > 3 else '?'}"
            f", ffmpeg {ffmpeg[2] if len(ffmpeg) > 2 else '?'}, load average {os.getloadavg()[0]:.2f} at start")


def settings_in(tmp: Path) -> PromptSettings:
    return PromptSettings(sounds_dir=tmp / "sounds", sounds_prefix="ivr", recordings_dir=tmp / "recordings",
                          cache_dir=tmp / "cache", timeout=60.0,
                          command=(sys.executable, "-m", "ivr.prompts.worker"))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds >= 0.001 else f"{seconds * 1e6:.0f} µs"


async def cold_builds(jobs: int) -> list[tuple[str, str]]:
    rows = []
    flow = load_flow(DEMO)
    for lang in flow.languages:
        one = dataclasses.replace(flow, languages=(lang,))
        for j in sorted({1, jobs}):
            with tempfile.TemporaryDirectory() as tmp:
                s = settings_in(Path(tmp))
                t0 = time.perf_counter()
                report = await build([one], s, jobs=j)
                cold = time.perf_counter() - t0
                assert report.ok, report.failures
                n = report.stats[lang].synthesised
                t0 = time.perf_counter()
                again = await build([one], s, jobs=j)
                warm = time.perf_counter() - t0
                assert again.invocations == 0
            rows.append((f"cold build {lang}, {j} job{'s' if j > 1 else ''}",
                         f"{n} prompts in {cold:.2f} s = {n / cold:.1f} prompts/s"))
            if j == jobs:
                rows.append((f"warm build {lang} (nothing to do)", f"{warm * 1000:.0f} ms for {n} prompts "
                             f"(includes the engine probe)"))
    return rows


async def hits_and_misses(misses: int) -> list[tuple[str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        s = settings_in(Path(tmp))
        renderer = Renderer(s, concurrency=2)
        service = PromptService(s, renderer)
        await service.start()
        await renderer.engine()
        try:
            for lang in ("zh-CN", "en-US"):
                lat = []
                for i in range(misses):
                    p = PromptOut("balance", BALANCE[lang].format(f"{100 + i}.{i % 100:02d}"), lang, dynamic=True)
                    t0 = time.perf_counter()
                    await service.prompt_files(p)
                    lat.append(time.perf_counter() - t0)
                rows.append((f"call-time miss {lang}, one at a time (n={misses})",
                             f"p50 {ms(pct(lat, 0.5))}, p95 {ms(pct(lat, 0.95))}, max {ms(max(lat))}"))
            # a burst: 8 different amounts at once, 2 workers
            burst = [PromptOut("balance", BALANCE["zh-CN"].format(f"{900 + i}.50"), "zh-CN", dynamic=True)
                     for i in range(8)]

            async def one(p):
                t0 = time.perf_counter()
                await service.prompt_files(p)
                return time.perf_counter() - t0

            t0 = time.perf_counter()
            lat = await asyncio.gather(*(one(p) for p in burst))
            total = time.perf_counter() - t0
            rows.append(("call-time miss zh-CN, 8 at once, prompt_workers=2",
                         f"p50 {ms(pct(lat, 0.5))}, max {ms(max(lat))}; {8 / total:.1f} renders/s"))
            # hits
            hit = PromptOut("balance", BALANCE["zh-CN"].format("100.00"), "zh-CN", dynamic=True)
            await service.prompt_files(hit)
            n = 20000
            t0 = time.perf_counter()
            for _ in range(n):
                await service.prompt_files(hit)
            rows.append(("call-time hit (already rendered)", f"{ms((time.perf_counter() - t0) / n)} per prompt"))
            # a static prompt checked against the manifest
            flow = load_flow(DEMO)
            report = await build([dataclasses.replace(flow, languages=("zh-CN",))], s, jobs=2)
            assert report.ok
            await service.load_manifest()
            static = PromptOut("welcome", flow.prompts["welcome"].texts()["zh-CN"], "zh-CN")
            assert await service.prompt_files(static) == "ivr/zh-CN/welcome"
            t0 = time.perf_counter()
            for _ in range(n):
                await service.prompt_files(static)
            rows.append(("static prompt, built (manifest check)", f"{ms((time.perf_counter() - t0) / n)} per prompt"))
            # cache entry present, file not in the sounds folder (new process / new folder)
            fresh = PromptService(dataclasses.replace(s, sounds_dir=Path(tmp) / "fresh"), renderer)
            await fresh.start()
            lat = []
            for i in range(misses):
                p = PromptOut("balance", BALANCE["zh-CN"].format(f"{100 + i}.{i % 100:02d}"), "zh-CN", dynamic=True)
                t0 = time.perf_counter()
                await fresh.prompt_files(p)
                lat.append(time.perf_counter() - t0)
            rows.append(("call-time hit in the cache, not yet in the folder",
                         f"p50 {ms(pct(lat, 0.5))}, p95 {ms(pct(lat, 0.95))} (stat + hard link in a thread)"))
            for task in fresh._tasks:
                task.cancel()
            # the same publish step alone
            entry = next(s.cache_dir.glob("??/*.wav"))
            t0 = time.perf_counter()
            for i in range(200):
                publish(entry, Path(tmp) / "pub" / f"{i}.wav")
            rows.append(("publish one cache entry (hard link, atomic rename)", ms((time.perf_counter() - t0) / 200)))
        finally:
            await service.close()
    return rows


def breakdown() -> list[tuple[str, str]]:
    """Where a miss goes, measured in a separate process (espeak-ng is initialised once per process)."""
    code = r"""
import sys, time, threading, tempfile, os
t0 = time.perf_counter()
import pyttsx3
from pydub import AudioSegment
t1 = time.perf_counter()
e = pyttsx3.init("espeak"); e.setProperty("voice", "cmn")
done = threading.Event(); e.connect("finished-utterance", lambda **k: done.set())
d = tempfile.mkdtemp()
raw = os.path.join(d, "raw.wav")
e.save_to_file("\x01150S 张三，您的账户余额为268.50元。", raw); e.runAndWait(); done.wait()
t2 = time.perf_counter()
from ivr.prompts.audio import to_telephony
to_telephony(raw, os.path.join(d, "out.wav"))
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    starts, imports, synth, conv = [], [], [], []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        starts.append(time.perf_counter() - t0)
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
        a, b, c = map(float, out.stdout.split()[-3:])
        imports.append(a)
        synth.append(b)
        conv.append(c)
    med = statistics.median
    return [("  Python start-up", ms(med(starts))), ("  import pyttsx3 + pydub", ms(med(imports))),
            ("  pyttsx3/espeak-ng synthesis (3 s of speech)", ms(med(synth))),
            ("  pydub + ffmpeg conversion to 8 kHz", ms(med(conv)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--misses", type=int, default=20)
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    print(f"machine: {machine()}")
    rows = asyncio.run(cold_builds(args.jobs))
    rows += asyncio.run(hits_and_misses(args.misses))
    rows.append(("where a miss goes (median of 5):", ""))
    rows += breakdown()
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | result |")
    print(f"| {'-' * width} | --- |")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
