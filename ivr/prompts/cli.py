"""``ivr prompts build``: render every prompt of some flows into the sounds folder."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from ivr.cli import command


def _flow_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
        else:
            files.append(path)
    return files


def _load(files: list[Path]) -> tuple[list, int]:
    from ivr.flow.loader import FlowLoadError, load_flow

    known = {f.stem for f in files}
    for f in files:
        if f.is_file():
            known.update(sib.stem for sib in f.parent.glob("*.y*ml"))
    flows, bad = [], 0
    for f in files:
        try:
            flows.append(load_flow(f, known_flows=lambda fid: fid in known))
        except FlowLoadError as exc:
            bad += 1
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            print(f"{f}: invalid flow, its prompts are not rendered", file=sys.stderr)
        except OSError as exc:
            bad += 1
            print(f"{f}: {exc.strerror or exc}", file=sys.stderr)
    return flows, bad


class _Progress:
    """A tqdm bar on a terminal; plain lines otherwise (logs, CI)."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.bar = None
        self.tty = stream.isatty()

    def __call__(self, outcome, done: int, total: int) -> None:
        job = outcome.job
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                try:
                    size = os.get_terminal_size(self.stream.fileno())
                except OSError:
                    size = os.terminal_size((0, 0))
                # a terminal that reports no size (0 x 0) would make tqdm print nothing
                self.bar = tqdm(total=total, unit="prompt", file=self.stream, ncols=size.columns or 80,
                                nrows=size.lines or 24, leave=True)
            self.bar.set_postfix_str(f"{job.name} {outcome.status}", refresh=False)
            self.bar.update(1)
            if outcome.status == "failed":
                self.bar.write(f"failed: {job.name} ({job.flow}): {outcome.message}", file=self.stream)
        else:
            width = len(str(total))
            line = f"[{done:>{width}}/{total}] {outcome.status:<11} {job.name}"
            if outcome.message:
                line += f": {outcome.message}"
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@command("prompts", "prompt audio: render every prompt of the flows for Asterisk")
def _prompts(p: argparse.ArgumentParser):
    sub = p.add_subparsers(dest="prompts_command", required=True, metavar="ACTION")
    b = sub.add_parser("build", help="render recordings and synthesised prompts into the sounds folder",
                       description="Render every static prompt of the flows, in every language they declare, to "
                                   "8 kHz mono WAV files Asterisk plays. Cached: only new or changed prompts are "
                                   "synthesised. Exit status 1 when any prompt failed.")
    b.add_argument("flows", nargs="*", metavar="FLOW", help="flow files or folders (default: the flows folder)")
    b.add_argument("--out", help="output folder (default: sounds_dir, e.g. /var/lib/asterisk/sounds/ivr)")
    b.add_argument("--jobs", "-j", type=int, help="parallel syntheses (default: prompt_jobs or the CPU count)")
    b.add_argument("--config", help="TOML settings file")
    b.add_argument("--recordings", help="folder of human recordings (default: recordings_dir)")
    b.add_argument("--cache-dir", help="prompt cache folder (default: prompt_cache_dir)")
    b.add_argument("--timeout", type=float, help="seconds one synthesis may take (default: prompt_synth_timeout)")

    def run(args: argparse.Namespace) -> int:
        from ivr.config import ConfigError, load_config
        from ivr.prompts.build import build
        from ivr.prompts.render import PromptSettings

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"ivr prompts build: {exc}", file=sys.stderr)
            return 2
        if args.jobs is not None and args.jobs < 1:
            print("ivr prompts build: --jobs must be at least 1", file=sys.stderr)
            return 2
        if args.timeout is not None and args.timeout <= 0:
            print("ivr prompts build: --timeout must be positive", file=sys.stderr)
            return 2
        files = _flow_files(args.flows or [config.flows_dir])
        if not files:
            print(f"ivr prompts build: no flow files in {', '.join(args.flows or [config.flows_dir])}",
                  file=sys.stderr)
            return 2
        flows, bad = _load(files)
        settings = PromptSettings.from_config(config, sounds_dir=args.out, recordings_dir=args.recordings,
                                              cache_dir=args.cache_dir, timeout=args.timeout)
        jobs = args.jobs or config.prompt_jobs or os.cpu_count() or 1
        progress = _Progress()
        try:
            report = asyncio.run(build(flows, settings, jobs=jobs, progress=progress))
        finally:
            progress.close()
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(report.table())
        print(f"{len(flows)} flow(s), {sum(st.total for st in report.stats.values())} prompt file(s) in "
              f"{settings.sounds_dir}; {report.invocations} worker run(s) in {report.seconds:.1f} s"
              + (" (nothing to do)" if report.invocations == 0 and not report.failures else "")
              + (f"; engine: {report.engine}" if report.engine else ""))
        for o in report.failures:
            print(f"failed: {o.job.name} ({o.job.flow}): {o.message}", file=sys.stderr)
        return 1 if report.failures or bad else 0

    return run
