"""Prompt audio during calls: the server extension behind the voice face's hooks.

* ``voice_hooks["prompt_files"]``: the file ``STREAM FILE`` plays for a
  prompt. A static prompt plays the file ``ivr prompts build`` made
  (``ivr/<lang>/<prompt-id>``) unless the build manifest shows that file is
  stale (the flow was edited and hot-reloaded since); a prompt with variables
  (and a stale one) is rendered now, through the same cache, under the name
  :func:`ivr.agi.voice.prompt_file_name` gives it (``<prompt-id>-<sha12>``).
* ``voice_hooks["on_missing"]``: Asterisk answered ``200 result=-1 endpos=0``
  (no such file): synthesise the text under its content name and play that,
  never silence.

Rendering runs in worker processes (at most ``prompt_workers`` at once) and
never blocks the event loop; a render that fails or overruns is remembered for
a while so a call does not wait for it twice. Call-time renders unused for
``prompt_render_ttl`` hours are deleted from the sounds folder and the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

from ivr import names
from ivr.agi.voice import prompt_file_name
from ivr.engine import PromptOut
from ivr.prompts.manifest import manifest_path, read_manifest
from ivr.prompts.render import PromptSettings, Renderer, RenderError, publish
from ivr.server import EXTENSIONS

log = logging.getLogger("ivr.prompts")

# <prompt-id>-<12 hex digits>.wav: a call-time render (see prompt_file_name)
RENDERED_RE = re.compile(r"^(?P<id>.+)-[0-9a-f]{12}\.wav$")
MEMO_SIZE = 20_000
FAILURE_MEMORY = 30.0  # seconds a failed render is not retried
MANIFEST_CHECK = 2.0  # seconds between looks at the build manifest
#: Characters of one call-time render at the most (about a minute of speech):
#: a prompt filled with caller or back-end text could otherwise keep a worker
#: busy past its timeout while the caller hears nothing.
MAX_RENDER_CHARS = 1000


def clip_spoken(text: str, limit: int = MAX_RENDER_CHARS) -> str:
    """``text`` cut to ``limit`` characters, at a space when there is one near the end."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return cut[:space] if space > limit * 0.8 else cut


class PromptService:
    """The voice face's prompt hooks for one server process."""

    def __init__(self, settings: PromptSettings, renderer: Renderer, *, ttl_hours: float = 24.0):
        self.settings = settings
        self.renderer = renderer
        self.ttl = ttl_hours * 3600.0
        self._memo: OrderedDict[str, str] = OrderedDict()  # name -> key of the audio published there
        self._failed: dict[str, float] = {}
        self._manifest: dict[str, dict[str, Any]] = {}
        self._manifest_stamp: tuple[int, int] | None = None
        self._warned: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self.hits = 0  # call-time renders already in place
        self.renders = 0  # call-time renders that had to be made or linked
        self.fallbacks = 0  # missing files replaced by synthesis

    # ---- life cycle
    async def start(self) -> None:
        await self.load_manifest()
        if not self._manifest:
            log.info("no prompts built in %s yet (run 'ivr prompts build'): files Asterisk reports missing "
                     "are synthesised during calls", self.settings.sounds_dir)
        self._tasks.append(asyncio.create_task(self._warm_up(), name="prompts-warm-up"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="prompts-housekeeping"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.renderer.close()

    async def _warm_up(self) -> None:
        try:
            engine = await self.renderer.engine()
            log.info("prompt audio: %s; %d built prompt files in %s", engine, len(self._manifest),
                     self.settings.sounds_dir)
        except RenderError as exc:
            log.warning("prompt audio cannot be synthesised, prompts without a built file will be silent: %s", exc)

    async def _housekeeping(self) -> None:
        prune_every = min(3600.0, self.ttl / 4) if self.ttl else 0.0
        next_prune = time.monotonic() + min(60.0, prune_every or 60.0)
        while True:
            await asyncio.sleep(MANIFEST_CHECK)
            try:
                await self.load_manifest()
                if prune_every and time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + prune_every
                    removed, entries = await asyncio.to_thread(prune, self.settings, self.ttl, set(self._manifest))
                    for name in removed:
                        self._memo.pop(name, None)
                    if removed or entries:
                        log.info("pruned %d call-time prompt files and %d cache entries unused for %.0f h",
                                 len(removed), entries, self.ttl / 3600)
            except Exception:  # noqa: BLE001 - housekeeping must go on
                log.exception("prompt housekeeping failed")

    async def load_manifest(self) -> None:
        """Re-read the build manifest when it changed (checked every couple of seconds anyway)."""
        path = manifest_path(self.settings.sounds_dir)

        def stamp() -> tuple[int, int] | None:
            try:
                st = path.stat()
            except FileNotFoundError:
                return None
            return st.st_mtime_ns, st.st_size

        current = await asyncio.to_thread(stamp)
        if current != self._manifest_stamp:
            self._manifest = await asyncio.to_thread(read_manifest, self.settings.sounds_dir)
            self._manifest_stamp = current

    # ---- the hooks
    def static_name(self, prompt: PromptOut) -> str:
        return prompt_file_name(replace(prompt, dynamic=False), self.settings.sounds_prefix)

    async def prompt_files(self, prompt: PromptOut) -> str:
        """``voice_hooks["prompt_files"]``: the name to play, rendering it first when needed."""
        try:
            if prompt.dynamic:
                return await self.render(prompt)
            built = self._manifest.get(f"{prompt.lang}/{prompt.id}")
            if built is None or built.get("source") == "recording":
                return self.static_name(prompt)  # a missing file comes back through on_missing
            engine = await self.renderer.engine()
            voice_lang = built.get("voice_lang") or prompt.lang
            if built.get("key") == self.renderer.tts_key(engine, prompt.text, voice_lang):
                return self.static_name(prompt)
            self._warn_once(f"stale:{prompt.lang}/{prompt.id}", "prompt %s (%s) changed since 'ivr prompts build': "
                            "rendering it during calls until the next build", prompt.id, prompt.lang)
            return await self.render(prompt, voice_lang=voice_lang)
        except Exception as exc:  # noqa: BLE001 - a prompt problem must never end a call
            self._warn_once(f"fail:{prompt.lang}/{prompt.id}", "prompt %s (%s) could not be rendered: %s",
                            prompt.id, prompt.lang, exc)
            return prompt_file_name(prompt, self.settings.sounds_prefix)

    async def on_missing(self, prompt: PromptOut) -> str | None:
        """``voice_hooks["on_missing"]``: Asterisk has no file for it: synthesise one."""
        built = self._manifest.get(f"{prompt.lang}/{prompt.id}") or {}
        try:
            name = await self.render(prompt, voice_lang=built.get("voice_lang"), force=True)
        except Exception as exc:  # noqa: BLE001
            log.warning("prompt %s (%s) has no audio and synthesis failed: %s", prompt.id, prompt.lang, exc)
            return None
        self.fallbacks += 1
        self._warn_once(f"missing:{prompt.lang}/{prompt.id}", "Asterisk has no file for prompt %s (%s): playing "
                        "synthesised %s (run 'ivr prompts build' to render it ahead of time)",
                        prompt.id, prompt.lang, name)
        return name

    async def render(self, prompt: PromptOut, *, voice_lang: str | None = None, force: bool = False) -> str:
        """Synthesise ``prompt.text`` (cache first) under its content name; return that name."""
        if not prompt.text.strip():
            return names.SILENCE_FILE
        if len(prompt.text) > MAX_RENDER_CHARS:
            self._warn_once(f"long:{prompt.lang}/{prompt.id}", "prompt %s (%s) is %d characters long: only the "
                            "first %d are spoken", prompt.id, prompt.lang, len(prompt.text), MAX_RENDER_CHARS)
            prompt = replace(prompt, text=clip_spoken(prompt.text))
        as_dynamic = replace(prompt, dynamic=True)
        name = prompt_file_name(as_dynamic, self.settings.sounds_prefix)
        lang = voice_lang or prompt.lang
        engine = await self.renderer.engine()
        key = self.renderer.tts_key(engine, prompt.text, lang)
        if not force and self._memo.get(name) == key:
            self._memo.move_to_end(name)
            self.hits += 1
            return name
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed < FAILURE_MEMORY:
            raise RenderError("it failed moments ago")
        target = self.settings.output_path(prompt.lang, name.rsplit("/", 1)[-1])
        # the wait for a free worker counts too: a call never waits much longer than one synthesis
        budget = self.settings.timeout * 2 + 5
        try:
            rendered = await asyncio.wait_for(self.renderer.synthesise(prompt.text, lang, key=key), budget)
        except (RenderError, TimeoutError) as exc:
            self._failed[key] = time.monotonic()
            if len(self._failed) > 1000:
                self._failed.clear()
            raise RenderError(str(exc) or "no worker was free in time") from None
        await asyncio.to_thread(_publish_fresh, rendered.entry, target)
        self.renders += 1
        self._memo[name] = key
        self._memo.move_to_end(name)
        while len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)
        return name

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            if len(self._warned) > 10_000:
                self._warned.clear()
            self._warned.add(key)
            log.warning(msg, *args)


def _publish_fresh(entry: Path, target: Path) -> None:
    """Publish, and mark the file used now: it is pruned when unused for the TTL
    (a new hard link carries the cache entry's old time, so always touch)."""
    publish(entry, target)
    with contextlib.suppress(FileNotFoundError):
        os.utime(target)


def prune(settings: PromptSettings, ttl: float, keep: set[str]) -> tuple[list[str], int]:
    """Delete call-time renders unused for ``ttl`` seconds, then cache entries no
    file links to that are as old. ``keep``: ``<lang>/<id>`` names from the
    build manifest. Returns (the removed names as played, cache entries removed)."""
    cutoff = time.time() - ttl
    removed: list[str] = []
    root = settings.sounds_dir
    if root.is_dir():
        for lang_dir in root.iterdir():
            if not lang_dir.is_dir() or lang_dir.name.startswith("."):
                continue
            for f in lang_dir.iterdir():
                m = RENDERED_RE.match(f.name)
                if not m or f"{lang_dir.name}/{f.name[:-4]}" in keep:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if f.stat().st_mtime < cutoff:
                        f.unlink()
                        removed.append(f"{settings.sounds_prefix}/{lang_dir.name}/{f.name[:-4]}")
    entries = 0
    cache = settings.cache_dir
    if cache.is_dir():
        for sub in cache.iterdir():
            if not sub.is_dir():
                continue
            stale_tmp = sub.name == "tmp"
            for f in sub.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    st = f.stat()
                    if stale_tmp:
                        if st.st_mtime < time.time() - 3600:
                            f.unlink()
                    elif st.st_nlink == 1 and st.st_mtime < cutoff:
                        f.unlink()
                        entries += 1
    return removed, entries


async def prompts_extension(app: Any) -> None:
    """Plug prompt audio into the voice face of ``ivr serve``."""
    config = app.config
    if not config.prompt_render_during_calls:
        log.info("prompt rendering during calls is off: prompts play from 'ivr prompts build' files only")
        return
    settings = PromptSettings.from_config(config)
    renderer = Renderer(settings, concurrency=config.prompt_workers)
    service = PromptService(settings, renderer, ttl_hours=config.prompt_render_ttl)
    await service.start()
    app.voice_hooks["prompt_files"] = service.prompt_files
    app.voice_hooks["on_missing"] = service.on_missing
    app.cleanups.append(service.close)


EXTENSIONS.append(prompts_extension)
