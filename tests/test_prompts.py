"""Prompt audio: real pyttsx3 on espeak-ng, real ffmpeg through pydub, real worker processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import wave
from dataclasses import replace
from pathlib import Path

import pytest

from ivr.engine import PromptOut
from ivr.flow.loader import load_flow
from ivr.prompts.audio import to_telephony, wav_info
from ivr.prompts.build import build
from ivr.prompts.manifest import read_manifest
from ivr.prompts.render import Renderer, RenderError, RenderTimeout
from ivr.prompts.runtime import PromptService, prune

from .prompt_helpers import TINY_FLOW, alive, counting_worker, make_settings, worker_runs, write_flow

pytestmark = pytest.mark.timeout(120)


def header(path: Path) -> tuple[int, int, int, int]:
    """(format tag, channels, rate, bits) straight from the RIFF header, and ``wave`` agrees."""
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE" and raw[12:16] == b"fmt "
    fmt = (int.from_bytes(raw[20:22], "little"), int.from_bytes(raw[22:24], "little"),
           int.from_bytes(raw[24:28], "little"), int.from_bytes(raw[34:36], "little"))
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth() * 8) == fmt[1:]
        assert w.getnframes() > 0
    return fmt


def espeak_reference(tmp: Path, voice: str, rate: int, text: str) -> bytes:
    """What the espeak-ng command line says for the same voice and rate, converted the same way."""
    raw, out = tmp / f"ref-{voice}.raw.wav", tmp / f"ref-{voice}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(raw), text], check=True)
    to_telephony(raw, out)
    return out.read_bytes()


async def test_synthesis_is_8k_mono_16bit_in_the_language_voice(tmp_path):
    settings = make_settings(tmp_path, rates={"en-US": 170})
    renderer = Renderer(settings, concurrency=2)
    zh_text, en_text = "您好，欢迎致电示例公司客服热线。", "Hello, and thank you for calling."
    zh, en = await asyncio.gather(renderer.synthesise(zh_text, "zh-CN"), renderer.synthesise(en_text, "en-US"))
    for r in (zh, en):
        assert r.made and r.entry.is_file()
        assert header(r.entry) == (1, 1, 8000, 16)  # PCM, mono, 8 kHz, 16-bit
    assert 2.0 < wav_info(zh.entry).seconds < 10.0
    # pyttsx3 really spoke with the Mandarin voice at 150 wpm and the US English one at 170:
    # the audio is identical to espeak-ng's own with those settings
    assert zh.entry.read_bytes() == espeak_reference(tmp_path, "cmn", 150, zh_text)
    assert en.entry.read_bytes() == espeak_reference(tmp_path, "en-us", 170, en_text)
    assert zh.entry.read_bytes() != espeak_reference(tmp_path, "en-us", 150, zh_text)
    assert renderer.invocations == 2


async def test_voice_and_rate_are_configurable_and_part_of_the_key(tmp_path):
    base = make_settings(tmp_path)
    engine = await Renderer(base).engine()
    assert "pyttsx3" in engine and "espeak-ng 1." in engine
    keys = {Renderer(s).tts_key(engine, "你好", "zh-CN") for s in (
        base, replace(base, voices={"zh-CN": "yue"}), replace(base, rate=180), replace(base, rates={"zh": 120}))}
    assert len(keys) == 4
    assert base.voice_for("zh-CN") == "cmn" and base.voice_for("en-US") == "en-us" and base.voice_for("ko") == "ko"
    assert replace(base, voices={"zh": "yue"}).voice_for("zh-CN") == "yue"
    assert replace(base, rates={"zh": 120}).rate_for("zh-CN") == 120
    bad = Renderer(replace(base, voices={"en-US": "klingon"}))
    with pytest.raises(RenderError, match="no voice 'klingon'"):
        await bad.synthesise("Hello", "en-US")


async def test_recordings_win_and_are_converted(tmp_path):
    flow = load_flow(write_flow(tmp_path / "flows" / "tiny.yaml"))
    rec = tmp_path / "recordings"
    (rec / "en-US").mkdir(parents=True)
    (rec / "zh-CN").mkdir(parents=True)
    # hello names recording greeting_v2: a FLAC in zh-CN; en-US has only hello.wav (by prompt id)
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(rec / "en-US" / "hello.wav"),
                    "synth", "2.0", "sine", "440"], check=True)
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", str(rec / "zh-CN" / "greeting_v2.flac"),
                    "synth", "1.0", "sine", "660"], check=True)
    src = wav_info(rec / "en-US" / "hello.wav")
    assert (src.rate, src.channels, src.sample_width) == (44100, 2, 2)
    command, log = counting_worker(tmp_path)
    settings = make_settings(tmp_path, command=command)
    report = await build([flow], settings, jobs=2)
    assert report.ok, report.failures
    status = {o.job.name: o.status for o in report.outcomes}
    assert status["en-US/hello"] == status["zh-CN/hello"] == "recorded"
    assert status["en-US/bye"] == status["zh-CN/thanks.prompt"] == "synthesised"
    assert report.stats["zh-CN"].recorded == 1 and report.stats["zh-CN"].synthesised == 2
    assert report.stats["zh-CN"].dynamic == 1
    en, zh = settings.sounds_dir / "en-US" / "hello.wav", settings.sounds_dir / "zh-CN" / "hello.wav"
    assert header(en) == header(zh) == (1, 1, 8000, 16)
    assert abs(wav_info(en).seconds - 2.0) < 0.01 and abs(wav_info(zh).seconds - 1.0) < 0.01
    assert read_manifest(settings.sounds_dir)["zh-CN/hello"]["source"] == "recording"
    # a new take of the recording replaces the file at the next build; nothing is synthesised
    synths = len(worker_runs(log))
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "1", str(rec / "en-US" / "hello.wav"),
                    "synth", "3.0", "sine", "500"], check=True)
    again = await build([flow], settings, jobs=2)
    assert again.ok and len(worker_runs(log)) == synths and len(worker_runs(log, "convert")) == 3
    assert abs(wav_info(en).seconds - 3.0) < 0.01
    # not audio at all: a clear failure for that prompt only
    (rec / "en-US" / "hello.wav").write_text("not audio")
    broken = await build([flow], settings, jobs=2)
    [failed] = broken.failures
    assert failed.job.name == "en-US/hello" and "cannot decode" in failed.message


async def test_cache_hits_do_no_synthesis_and_a_changed_text_renders_only_itself(tmp_path):
    path = write_flow(tmp_path / "flows" / "tiny.yaml")
    command, log = counting_worker(tmp_path)
    settings = make_settings(tmp_path, command=command)
    first = await build([load_flow(path)], settings, jobs=2)
    assert first.ok and len(worker_runs(log)) == 6  # hello, bye, thanks.prompt x 2 languages
    files = sorted(settings.sounds_dir.glob("*/*.wav"))
    assert len(files) == 6
    inodes = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}

    second = await build([load_flow(path)], settings, jobs=2)
    assert second.ok and len(worker_runs(log)) == 6, "a second build must not synthesise"
    assert {lang: st.cached for lang, st in second.stats.items()} == {"zh-CN": 3, "en-US": 3}
    assert second.invocations == 0
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files} == inodes

    path.write_text(path.read_text().replace("Goodbye.", "Goodbye, and thanks."), encoding="utf-8")
    third = await build([load_flow(path)], settings, jobs=2)
    assert third.ok and len(worker_runs(log)) == 7
    changed = {f for f in files if (f.stat().st_ino, f.stat().st_mtime_ns) != inodes[f]}
    assert changed == {settings.sounds_dir / "en-US" / "bye.wav"}
    assert [o.job.name for o in third.outcomes if o.status == "synthesised"] == ["en-US/bye"]

    # another output folder sharing the cache: everything is a cache hit
    elsewhere = await build([load_flow(path)], replace(settings, sounds_dir=tmp_path / "other"), jobs=2)
    assert elsewhere.ok and len(worker_runs(log)) == 7
    assert sum(st.cached for st in elsewhere.stats.values()) == 6


async def test_a_hanging_synthesiser_is_killed_and_does_not_stall_others(tmp_path):
    command, log = counting_worker(tmp_path)
    # 3 s: far more than a synthesis takes even on a loaded machine, and the test stays short
    settings = make_settings(tmp_path, command=command, timeout=3.0)
    renderer = Renderer(settings, concurrency=2)
    await renderer.engine()
    t0 = time.monotonic()
    finished: dict[str, float] = {}

    async def timed(label, coro):
        try:
            return await coro
        finally:
            finished[label] = time.monotonic() - t0

    hung, fine = await asyncio.gather(timed("hung", renderer.synthesise("HANG please", "en-US")),
                                      timed("fine", renderer.synthesise("All is well.", "en-US")),
                                      return_exceptions=True)
    assert isinstance(hung, RenderTimeout) and "longer than 3 s" in str(hung)
    assert 3.0 <= finished["hung"] < 5.0, finished
    assert not isinstance(fine, BaseException) and fine.made and header(fine.entry)[2] == 8000
    assert finished["fine"] < finished["hung"]
    # the worker and the process it was waiting for are gone, and nothing half-written is left
    pids = [int(line.split()[0]) for line in log.read_text().splitlines()]
    assert len(pids) == 4  # wrapper(hang), sleep, wrapper(fine), and the engine probe's "info" wrapper
    assert not [pid for pid in pids if alive(pid)]
    assert not list((settings.cache_dir / "tmp").iterdir())
    assert renderer.timeouts == 1

    # through a build: that prompt fails, the others are rendered, the report says why
    flow = load_flow(write_flow(tmp_path / "flows" / "tiny.yaml", TINY_FLOW.replace("Goodbye.", "HANG forever.")))
    report = await build([flow], settings, jobs=2)
    assert [(o.job.name, o.status) for o in report.failures] == [("en-US/bye", "failed")]
    assert "killed" in report.failures[0].message
    assert report.stats["zh-CN"].failed == 0 and report.stats["en-US"].synthesised + report.stats["en-US"].cached == 2


async def test_call_time_render_is_shared_cached_and_off_the_event_loop(tmp_path):
    command, log = counting_worker(tmp_path)
    settings = make_settings(tmp_path, command=command)
    service = PromptService(settings, Renderer(settings, concurrency=2))
    await service.start()
    try:
        prompt = PromptOut("balance", "您的账户余额为268.50元。", "zh-CN", dynamic=True)
        lags: list[float] = []
        stop = asyncio.Event()

        async def ticker():
            while not stop.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - t - 0.005)

        tick = asyncio.create_task(ticker())
        t0 = time.perf_counter()
        names = await asyncio.gather(*(service.prompt_files(prompt) for _ in range(5)))
        miss = time.perf_counter() - t0
        stop.set()
        await tick
        assert len(set(names)) == 1
        name = names[0]
        assert name.startswith("ivr/zh-CN/balance-") and len(name.rsplit("-", 1)[1]) == 12
        assert len(worker_runs(log)) == 1, "five calls wanting the same text share one synthesis"
        assert max(lags) < 0.15, f"event loop stalled {max(lags):.3f} s during a {miss:.2f} s render"
        target = settings.sounds_dir / "zh-CN" / f"{name.rsplit('/', 1)[1]}.wav"
        assert header(target) == (1, 1, 8000, 16)
        t1 = time.perf_counter()
        assert await service.prompt_files(prompt) == name
        assert time.perf_counter() - t1 < 0.05 and service.hits == 1 and len(worker_runs(log)) == 1
        # another amount is another file; empty text plays silence rather than failing
        other = await service.prompt_files(replace(prompt, text="您的账户余额为0.00元。"))
        assert other != name and len(worker_runs(log)) == 2
        assert await service.prompt_files(replace(prompt, text="  ")) == "silence/1"
    finally:
        await service.close()


async def test_built_static_prompts_play_as_built_until_their_text_changes(tmp_path):
    path = write_flow(tmp_path / "flows" / "tiny.yaml")
    command, log = counting_worker(tmp_path)
    settings = make_settings(tmp_path, command=command)
    assert (await build([load_flow(path)], settings, jobs=2)).ok
    service = PromptService(settings, Renderer(settings))
    await service.start()
    try:
        bye = PromptOut("bye", "再见。", "zh-CN")
        assert await service.prompt_files(bye) == "ivr/zh-CN/bye"
        runs = len(worker_runs(log))
        # the flow was edited and hot-reloaded, the build not re-run: do not play the old audio
        edited = replace(bye, text="再见，祝您愉快。")
        name = await service.prompt_files(edited)
        assert name.startswith("ivr/zh-CN/bye-") and len(worker_runs(log)) == runs + 1
        assert (settings.sounds_dir / "zh-CN" / f"{name.rsplit('/', 1)[1]}.wav").is_file()
        # a prompt the build never saw: its static name, on_missing covers a missing file
        assert await service.prompt_files(PromptOut("new_one", "新的。", "zh-CN")) == "ivr/zh-CN/new_one"
        fallback = await service.on_missing(PromptOut("new_one", "新的。", "zh-CN"))
        assert fallback.startswith("ivr/zh-CN/new_one-") and service.fallbacks == 1
        assert header(settings.sounds_dir / "zh-CN" / f"{fallback.rsplit('/', 1)[1]}.wav")[2] == 8000
    finally:
        await service.close()


async def test_failed_render_falls_back_quickly_and_is_not_retried_at_once(tmp_path):
    settings = make_settings(tmp_path, voices={"en-US": "klingon"})
    service = PromptService(settings, Renderer(settings))
    await service.start()
    try:
        prompt = PromptOut("total", "Total 5 yuan.", "en-US", dynamic=True)
        name = await service.prompt_files(prompt)  # logged, and the call goes on
        assert name.startswith("ivr/en-US/total-")
        t0 = time.perf_counter()
        assert await service.on_missing(prompt) is None
        assert time.perf_counter() - t0 < 0.05  # remembered failure: no second wait
    finally:
        await service.close()


async def test_without_a_usable_engine_recordings_still_build_and_calls_go_on(tmp_path, caplog):
    flow = load_flow(write_flow(tmp_path / "flows" / "tiny.yaml"))
    (tmp_path / "recordings" / "zh-CN").mkdir(parents=True)
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(tmp_path / "recordings" / "zh-CN" / "bye.wav"),
                    "synth", "0.5", "sine", "300"], check=True)
    broken = make_settings(tmp_path, command=(str(tmp_path / "no-such-worker"),))
    report = await build([flow], broken, jobs=2)
    assert {o.job.name: o.status for o in report.outcomes if o.status != "failed"} == {}
    assert report.stats["zh-CN"].failed == 3  # recordings are converted by the worker too
    assert "cannot start the synthesis worker" in report.failures[0].message
    # the real worker for conversions, a broken engine: the recording is built, the rest fails clearly
    settings = make_settings(tmp_path, voices={"zh-CN": "klingon", "en-US": "klingon"})
    report = await build([flow], settings, jobs=2)
    status = {o.job.name: o.status for o in report.outcomes}
    assert status["zh-CN/bye"] == "recorded" and status["zh-CN/hello"] == "failed"
    service = PromptService(broken, Renderer(broken))
    caplog.set_level("WARNING", logger="ivr.prompts")
    await service.start()
    try:
        await asyncio.sleep(0.2)
        assert any("cannot be synthesised" in r.getMessage() for r in caplog.records)
        prompt = PromptOut("amount", "余额5元。", "zh-CN", dynamic=True)
        t0 = time.perf_counter()
        assert (await service.prompt_files(prompt)).startswith("ivr/zh-CN/amount-")
        assert await service.on_missing(prompt) is None
        assert time.perf_counter() - t0 < 0.05  # the failed probe is remembered, not repeated per prompt
    finally:
        await service.close()


async def test_prune_removes_old_call_time_renders_only(tmp_path):
    path = write_flow(tmp_path / "flows" / "tiny.yaml")
    settings = make_settings(tmp_path)
    assert (await build([load_flow(path)], settings, jobs=2)).ok
    service = PromptService(settings, Renderer(settings))
    await service.start()
    try:
        old = await service.prompt_files(PromptOut("amount", "余额5元。", "zh-CN", dynamic=True))
        new = await service.prompt_files(PromptOut("amount", "余额6元。", "zh-CN", dynamic=True))
    finally:
        await service.close()
    old_file = settings.sounds_dir / "zh-CN" / f"{old.rsplit('/', 1)[1]}.wav"
    new_file = settings.sounds_dir / "zh-CN" / f"{new.rsplit('/', 1)[1]}.wav"
    week_ago = time.time() - 7 * 86400
    os.utime(old_file, (week_ago, week_ago))  # hard link: the cache entry is as old
    for f in settings.sounds_dir.glob("*/*.wav"):
        if "-" not in f.stem:
            os.utime(f, (week_ago, week_ago))  # built prompts are never pruned, however old
    cache_before = len(list(settings.cache_dir.glob("??/*.wav")))
    removed, entries = prune(settings, 24 * 3600, set(read_manifest(settings.sounds_dir)))
    assert removed == [old] and entries == 1
    assert not old_file.exists() and new_file.exists()
    assert len(list(settings.cache_dir.glob("??/*.wav"))) == cache_before - 1
    assert len([f for f in settings.sounds_dir.glob("*/*.wav") if "-" not in f.stem]) == 6


def test_settings_from_config_and_environment(tmp_path):
    from ivr.config import load_config
    from ivr.prompts.render import PromptSettings

    config = load_config(None, {"sounds_dir": str(tmp_path / "s")}, env={
        "IVR_PROMPT_VOICES": "zh-CN=yue, en-US=en-us-nyc", "IVR_PROMPT_RATES": '{"en": 175}',
        "IVR_PROMPT_SYNTH_TIMEOUT": "5"})
    s = PromptSettings.from_config(config)
    assert s.sounds_dir == tmp_path / "s" and s.cache_dir.is_absolute()
    assert (s.voice_for("zh-CN"), s.voice_for("en-US"), s.rate_for("en-US"), s.rate_for("zh-CN")) == \
        ("yue", "en-us-nyc", 175, 150)
    assert s.timeout == 5.0 and s.command[1:] == ("-m", "ivr.prompts.worker")
    with pytest.raises(RenderError):
        s.output_path("zh-CN", "../../etc/passwd")


async def test_a_huge_call_time_prompt_is_cut_to_about_a_minute_of_speech(tmp_path, caplog):
    from ivr.prompts.runtime import MAX_RENDER_CHARS, clip_spoken

    settings = make_settings(tmp_path)
    service = PromptService(settings, Renderer(settings, concurrency=1))
    await service.start()
    try:
        text = "one two three four five six seven eight nine ten " * 200  # 10,000 characters
        name = await service.prompt_files(PromptOut("echo", text, "en-US", dynamic=True))
        seconds = wav_info(settings.sounds_dir / "en-US" / f"{name.rsplit('/', 1)[1]}.wav").seconds
        assert 20 < seconds < 120, seconds  # the whole text would be several minutes
        assert any("only the first 1000 are spoken" in r.getMessage() for r in caplog.records)
    finally:
        await service.close()
    cut = clip_spoken(text)
    assert len(cut) <= MAX_RENDER_CHARS and text.startswith(cut) and not cut.endswith(" ")
    assert clip_spoken("x" * 1500) == "x" * MAX_RENDER_CHARS and clip_spoken("short") == "short"
