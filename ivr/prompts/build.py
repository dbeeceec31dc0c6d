"""Render every prompt of some flows, in every language they declare.

For each flow, language and prompt (inline prompts included, named
``<node>.<field>``): a text with template markup is *dynamic* and rendered at
call time; otherwise the output is ``<sounds_dir>/<lang>/<prompt-id>.wav``,
made from the human recording ``recordings/<lang>/<recording-or-prompt-id>.wav``
when there is one, else synthesised. A prompt whose text is missing in a
language uses the default language's text (as the engine does) and that
language's voice.

Outputs are hard links to (or copies of) cache entries; a prompt already in
place with the same cache key is not touched, so a second build does nothing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ivr.flow import expr
from ivr.flow.model import Flow
from ivr.prompts.manifest import read_manifest, update_manifest
from ivr.prompts.render import PromptSettings, Renderer, RenderError, publish, sha256_file, text_digest

STATUSES = ("recorded", "synthesised", "cached", "failed")


@dataclass(frozen=True)
class PromptJob:
    flow: str
    lang: str
    prompt_id: str
    text: str
    text_lang: str  # whose voice speaks it (differs from lang when the text fell back)
    recording: Path | None

    @property
    def name(self) -> str:
        return f"{self.lang}/{self.prompt_id}"


@dataclass
class Outcome:
    job: PromptJob
    status: str  # one of STATUSES
    message: str = ""


@dataclass
class LangStats:
    recorded: int = 0
    synthesised: int = 0
    cached: int = 0
    failed: int = 0
    dynamic: int = 0

    @property
    def total(self) -> int:
        return self.recorded + self.synthesised + self.cached + self.failed


@dataclass
class BuildReport:
    out_dir: Path
    stats: dict[str, LangStats] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    invocations: int = 0  # worker processes started (syntheses + conversions)
    seconds: float = 0.0
    engine: str | None = None

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failures

    def lang(self, lang: str) -> LangStats:
        return self.stats.setdefault(lang, LangStats())

    def table(self) -> str:
        rows = [("language", "recorded", "synthesised", "cached", "failed", "dynamic")]
        for lang, st in self.stats.items():
            rows.append((lang, str(st.recorded), str(st.synthesised), str(st.cached), str(st.failed), str(st.dynamic)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                         for r in rows)


def plan(flows: Iterable[Flow], settings: PromptSettings) -> tuple[list[PromptJob], dict[str, int], list[str]]:
    """(static prompt jobs, dynamic prompt count per language, warnings)."""
    jobs: list[PromptJob] = []
    dynamic: dict[str, int] = defaultdict(int)
    warnings: list[str] = []
    for flow in flows:
        for lang in flow.languages:
            for pid, pdef in flow.prompts.items():
                texts = pdef.texts()
                text_lang = lang if texts.get(lang) else flow.default_language
                text = texts.get(lang) or texts.get(flow.default_language) or ""
                if text and expr.is_template(text):
                    dynamic[lang] += 1
                    continue
                recording = settings.recording_for(lang, pdef.recording or pid)
                if recording is None and pdef.recording and pdef.recording != pid:
                    recording = settings.recording_for(lang, pid)
                    if recording is None:
                        warnings.append(f"{flow.id}: prompt {pid} names recording {pdef.recording!r}, but there is "
                                        f"no {settings.recordings_dir / lang / pdef.recording}.wav: synthesised")
                jobs.append(PromptJob(flow.id, lang, pid, text, text_lang, recording))
    return jobs, dict(dynamic), warnings


Progress = Callable[[Outcome, int, int], None]


async def build(flows: Iterable[Flow], settings: PromptSettings, *, jobs: int | None = None,
                progress: Progress | None = None, renderer: Renderer | None = None) -> BuildReport:
    """Render the static prompts of ``flows`` into ``settings.sounds_dir``."""
    started = time.monotonic()
    flows = list(flows)
    work, dynamic, warnings = plan(flows, settings)
    report = BuildReport(settings.sounds_dir, warnings=warnings)
    for flow in flows:
        for lang in flow.languages:
            report.lang(lang)
    for lang, n in dynamic.items():
        report.lang(lang).dynamic += n
    renderer = renderer or Renderer(settings, concurrency=jobs or os.cpu_count() or 1)
    engine_error: str | None = None
    if any(j.recording is None for j in work):
        try:
            report.engine = await renderer.engine()
        except RenderError as exc:
            engine_error = str(exc)

    # one output per <lang>/<prompt-id>: the same id in two flows must mean the same audio
    by_name: dict[str, PromptJob] = {}
    outcomes: list[Outcome] = []
    unique: list[PromptJob] = []
    keys: dict[PromptJob, str] = {}
    sources: dict[PromptJob, str] = {}
    shas: dict[PromptJob, str] = {}

    async def key_of(job: PromptJob) -> str:
        if job.recording is not None:
            sources[job] = "recording"
            shas[job] = await asyncio.to_thread(sha256_file, job.recording)
            return renderer.recording_key(shas[job])
        sources[job] = "tts"
        if engine_error:
            raise RenderError(engine_error)
        if not job.text.strip():
            raise RenderError("no text in any language and no recording")
        return renderer.tts_key(report.engine or "", job.text, job.text_lang)

    for job in work:
        try:
            keys[job] = await key_of(job)
        except (RenderError, OSError) as exc:
            outcomes.append(Outcome(job, "failed", str(exc)))
            continue
        other = by_name.get(job.name)
        if other is None:
            by_name[job.name] = job
            unique.append(job)
        elif keys[other] != keys[job]:
            outcomes.append(Outcome(job, "failed", f"flows {other.flow} and {job.flow} both have prompt "
                                                   f"{job.prompt_id} ({job.lang}) with different audio; both "
                                                   f"would play as {settings.sounds_prefix}/{job.name}: rename one"))
    total = len(outcomes) + len(unique)
    done = 0

    def tick(outcome: Outcome) -> None:
        nonlocal done
        done += 1
        report.outcomes.append(outcome)
        if progress:
            progress(outcome, done, total)

    for outcome in outcomes:
        tick(outcome)

    manifest = await asyncio.to_thread(read_manifest, settings.sounds_dir)
    new_entries: dict[str, dict] = {}

    async def render(job: PromptJob) -> None:
        key = keys[job]
        source = sources[job]
        target = settings.output_path(job.lang, job.prompt_id)
        entry = {"key": key, "source": source, "text": text_digest(job.text), "voice_lang": job.text_lang,
                 "flow": job.flow}
        if job.recording is not None:
            entry["recording"] = str(job.recording)
        try:
            known = manifest.get(job.name)
            if known and known.get("key") == key and await asyncio.to_thread(target.is_file):
                status = "recorded" if source == "recording" else "cached"
            else:
                if job.recording is not None:
                    rendered = await renderer.convert(job.recording, content_sha=shas[job])
                    status = "recorded"
                else:
                    rendered = await renderer.synthesise(job.text, job.text_lang, key=key)
                    status = "synthesised" if rendered.made else "cached"
                await asyncio.to_thread(publish, rendered.entry, target)
                new_entries[job.name] = entry
            tick(Outcome(job, status))
        except (RenderError, OSError) as exc:
            tick(Outcome(job, "failed", str(exc)))

    try:
        await asyncio.gather(*(render(j) for j in unique))
    finally:
        if new_entries:
            await asyncio.to_thread(update_manifest, settings.sounds_dir, new_entries)
    for o in report.outcomes:
        st = report.lang(o.job.lang)
        setattr(st, o.status, getattr(st, o.status) + 1)
    report.invocations = renderer.invocations
    report.seconds = time.monotonic() - started
    return report
