"""Rendering prompt audio through a content-addressed cache.

A cache entry is one 8 kHz mono 16-bit WAV named by the SHA-256 of what made
it: for synthesis the text, the voice, the rate, the engine (pyttsx3 and
espeak-ng versions, size of espeak-ng's phoneme data) and the output format;
for a human recording the SHA-256 of the recording's bytes and the output
format. Entries are written once (to a temporary name, then renamed) and never
changed, so any number of builds and servers may share a cache directory.

Every job runs in its own worker process (:mod:`ivr.prompts.worker`) under a
timeout; a worker that overruns is killed with its whole process group and the
job fails with :class:`RenderError`. Jobs wanting the same entry at the same
time share one worker. Nothing here blocks the event loop: workers are
asyncio subprocesses and file operations run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivr.prompts.audio import FORMAT_ID, AudioError, check_telephony_wav

log = logging.getLogger("ivr.prompts")

# Default espeak-ng voice per language (exact tag first, then primary subtag).
DEFAULT_VOICES = {
    "zh-CN": "cmn", "zh-SG": "cmn", "zh-TW": "cmn", "zh": "cmn", "cmn": "cmn",
    "zh-HK": "yue", "yue": "yue",
    "en-US": "en-us", "en-GB": "en", "en": "en-us",
}
PIPELINE_VERSION = "1"
ENGINE_RETRY = 60.0  # seconds before a speech engine that failed its probe is probed again


class RenderError(Exception):
    """A prompt could not be rendered (the message says why, for people)."""


class RenderTimeout(RenderError):
    pass


DEFAULT_WORKER: tuple[str, ...] = (sys.executable, "-m", "ivr.prompts.worker")


@dataclass(frozen=True)
class PromptSettings:
    """What rendering needs from :class:`ivr.config.Config`, paths resolved."""

    sounds_dir: Path
    sounds_prefix: str
    recordings_dir: Path
    cache_dir: Path
    voices: dict[str, str] = field(default_factory=dict)
    rates: dict[str, int] = field(default_factory=dict)
    rate: int = 150
    timeout: float = 20.0
    #: the synthesis worker; the default is ours (pyttsx3 on espeak-ng)
    command: tuple[str, ...] = DEFAULT_WORKER

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("PromptSettings.command: the synthesis worker command is empty")

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "PromptSettings":
        command = tuple(config.prompt_synth_command or ()) or DEFAULT_WORKER
        values = dict(
            sounds_dir=Path(config.sounds_dir).absolute(),
            sounds_prefix=config.sounds_prefix.strip("/"),
            recordings_dir=Path(config.recordings_dir).absolute(),
            cache_dir=Path(config.prompt_cache_dir).absolute(),
            voices=dict(config.prompt_voices), rates=dict(config.prompt_rates), rate=config.prompt_rate,
            timeout=config.prompt_synth_timeout, command=command,
        )
        for key, value in overrides.items():
            if value is not None:
                values[key] = Path(value).expanduser().absolute() if key.endswith("_dir") else value
        return cls(**values)

    def voice_for(self, lang: str) -> str:
        primary = lang.split("-", 1)[0]
        for table in (self.voices, DEFAULT_VOICES):
            for key in (lang, primary):
                if key in table:
                    return table[key]
        return lang.lower()

    def rate_for(self, lang: str) -> int:
        primary = lang.split("-", 1)[0]
        return int(self.rates.get(lang) or self.rates.get(primary) or self.rate)

    def output_path(self, lang: str, name: str) -> Path:
        """``<sounds_dir>/<lang>/<name>.wav``; refuses names that would leave the folder."""
        if not name or "/" in name or "\\" in name or name.startswith(".") or "/" in lang or lang.startswith("."):
            raise RenderError(f"unusable prompt file name {lang}/{name}")
        return self.sounds_dir / lang / f"{name}.wav"

    def recording_for(self, lang: str, name: str) -> Path | None:
        """``recordings/<lang>/<name>.wav`` (or another audio extension), if there is one."""
        from ivr.prompts.audio import RECORDING_EXTENSIONS

        folder = self.recordings_dir / lang
        for ext in RECORDING_EXTENSIONS:
            path = folder / f"{name}{ext}"
            if path.is_file():
                return path
        return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([PIPELINE_VERSION, FORMAT_ID, *parts], ensure_ascii=False).encode()).hexdigest()


@dataclass
class Rendered:
    key: str
    entry: Path
    made: bool  # True when a worker ran for it (False: a cache hit)


class Renderer:
    """Synthesises texts and converts recordings into the cache, one worker process per job.

    ``concurrency`` bounds the workers running at once (``ivr prompts build
    --jobs``, or ``prompt_workers`` in the server). ``invocations`` counts the
    worker processes started for jobs (not for the engine probe).
    """

    def __init__(self, settings: PromptSettings, *, concurrency: int = 2):
        self.settings = settings
        self.concurrency = max(1, concurrency)
        self._slots = asyncio.Semaphore(self.concurrency)
        self._inflight: dict[str, asyncio.Task[Rendered]] = {}
        self._procs: set[asyncio.subprocess.Process] = set()
        self._engine: str | None = None
        self._engine_info: dict[str, Any] | None = None
        self._engine_lock = asyncio.Lock()
        self._engine_error: str | None = None
        self._engine_failed_at = 0.0
        self.invocations = 0
        self.timeouts = 0
        self.closed = False

    # ---- engine identity (part of every synthesis key)
    async def engine(self) -> str:
        """``pyttsx3 2.99 / espeak-ng 1.51 (phondata 551064)``: asked of a worker once."""
        if self._engine is not None:
            return self._engine
        async with self._engine_lock:
            if self._engine is None:
                # a broken engine is asked again only after a while, not once per prompt
                if self._engine_error and time.monotonic() - self._engine_failed_at < ENGINE_RETRY:
                    raise RenderError(self._engine_error)
                try:
                    out = await self._run(["info"], b"", count=False)
                    info = json.loads(out)
                except (RenderError, ValueError) as exc:
                    self._engine_error = f"the speech engine is not usable: {exc}"
                    self._engine_failed_at = time.monotonic()
                    raise RenderError(self._engine_error) from None
                self._engine_info = info
                self._engine = (f"pyttsx3 {info.get('pyttsx3')} / espeak-ng {info.get('espeak_ng')} "
                                f"(phondata {info.get('phondata_size')})")
        return self._engine

    @property
    def engine_info(self) -> dict[str, Any] | None:
        return self._engine_info

    # ---- keys and entries
    def tts_key(self, engine: str, text: str, lang: str) -> str:
        s = self.settings
        return _key("tts", text, lang, s.voice_for(lang), s.rate_for(lang), engine)

    @staticmethod
    def recording_key(content_sha: str) -> str:
        return _key("recording", content_sha)

    def entry(self, key: str) -> Path:
        return self.settings.cache_dir / key[:2] / f"{key}.wav"

    # ---- jobs
    async def synthesise(self, text: str, lang: str, *, key: str | None = None) -> Rendered:
        """The cache entry for ``text`` spoken in ``lang``; synthesised when missing."""
        if not text.strip():
            raise RenderError("nothing to say: the text is empty")
        key = key or self.tts_key(await self.engine(), text, lang)
        s = self.settings
        args = ["synth", "--voice", s.voice_for(lang), "--rate", str(s.rate_for(lang))]
        return await self._ensure(key, args, text.encode("utf-8"))

    async def convert(self, source: Path, *, content_sha: str | None = None) -> Rendered:
        """The cache entry for a human recording (any format ffmpeg reads)."""
        content_sha = content_sha or await asyncio.to_thread(sha256_file, source)
        return await self._ensure(self.recording_key(content_sha), ["convert", "--src", str(source)], b"")

    async def _ensure(self, key: str, args: list[str], stdin: bytes) -> Rendered:
        entry = self.entry(key)
        if await asyncio.to_thread(entry.is_file):
            return Rendered(key, entry, False)
        # The job is a task of its own: a caller that gives up (hangs up) does
        # not cancel a synthesis that others wait for or that the cache keeps.
        task = self._inflight.get(key)
        first = task is None
        if task is None:
            task = asyncio.create_task(self._make(key, entry, args, stdin), name=f"prompt-render-{key[:12]}")
            self._inflight[key] = task
            task.add_done_callback(lambda t, k=key: self._job_done(k, t))
        result = await asyncio.shield(task)
        return result if first else Rendered(result.key, result.entry, False)

    def _job_done(self, key: str, task: asyncio.Task[Rendered]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved, even when every waiter gave up

    async def _make(self, key: str, entry: Path, args: list[str], stdin: bytes) -> Rendered:
        tmp_dir = self.settings.cache_dir / "tmp"
        await asyncio.to_thread(tmp_dir.mkdir, parents=True, exist_ok=True)
        tmp = tmp_dir / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.wav"
        try:
            await self._run([*args, "--out", str(tmp)], stdin)
            await asyncio.to_thread(self._commit, tmp, entry)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return Rendered(key, entry, True)

    @staticmethod
    def _commit(tmp: Path, entry: Path) -> None:
        try:
            check_telephony_wav(tmp)
        except AudioError as exc:
            raise RenderError(f"the worker wrote unusable audio: {exc}") from None
        entry.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o644)  # Asterisk reads the hard links to it
        os.replace(tmp, entry)

    async def _run(self, args: list[str], stdin: bytes, *, count: bool = True) -> str:
        if self.closed:
            raise RenderError("the renderer is shut down")
        timeout = self.settings.timeout
        async with self._slots:
            if count:
                self.invocations += 1
            started = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.settings.command, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, start_new_session=True, env=_worker_env())
            except OSError as exc:
                raise RenderError(f"cannot start the synthesis worker {self.settings.command[0]!r}: {exc}") from None
            self._procs.add(proc)
            try:
                out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
            except TimeoutError:
                self.timeouts += 1
                raise RenderTimeout(f"the synthesis worker took longer than {timeout:g} s and was killed") from None
            finally:
                if proc.returncode is None:
                    _kill_group(proc)
                    with contextlib.suppress(ProcessLookupError):
                        await asyncio.shield(proc.wait())
                self._procs.discard(proc)
            if proc.returncode != 0:
                why = err.decode("utf-8", "replace").strip().splitlines()
                raise RenderError(why[-1] if why else f"the synthesis worker exited with status {proc.returncode}")
            log.debug("worker %s done in %.3f s", args[0], time.monotonic() - started)
            return out.decode("utf-8", "replace").strip()

    async def close(self) -> None:
        """Kill the workers still running (server shut-down)."""
        self.closed = True
        for task in list(self._inflight.values()):
            task.cancel()
        for proc in list(self._procs):
            if proc.returncode is None:
                _kill_group(proc)
        for proc in list(self._procs):
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()


def _worker_env() -> dict[str, str]:
    """The worker imports the same ``ivr`` as this process, installed or not."""
    import ivr

    root = str(Path(ivr.__file__).resolve().parents[1])
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


# ---- publishing cache entries where Asterisk plays them
def publish(entry: Path, target: Path) -> bool:
    """Make ``target`` (in the sounds folder) the audio of ``entry``: a hard link
    when both are on one file system, else a copy; atomic either way. Returns
    False when ``target`` already was that audio."""
    if is_published(entry, target):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        try:
            os.link(entry, tmp)
        except OSError:
            shutil.copyfile(entry, tmp)
            os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True


def is_published(entry: Path, target: Path) -> bool:
    try:
        t = target.stat()
        e = entry.stat()
    except FileNotFoundError:
        return False
    if (t.st_dev, t.st_ino) == (e.st_dev, e.st_ino):
        return True
    if t.st_size != e.st_size:
        return False
    import filecmp

    return filecmp.cmp(entry, target, shallow=False)
