"""The set of live flows, reloaded when their files change.

New calls get the newest valid version; calls in progress keep theirs (old
versions stay resolvable); a broken edit is refused with its errors and the
old version stays live.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from ivr.engine.context import EngineError
from ivr.flow.loader import FlowLoadError, load_flow
from ivr.flow.model import Flow

log = logging.getLogger("ivr.flows")
KEEP_VERSIONS = 20


@dataclass
class _FileState:
    mtime_ns: int
    size: int
    flow_id: str | None
    errors: list[str]


class FlowRegistry:
    def __init__(self, directory: str | Path | None = None, files: list[str | Path] | None = None):
        self.directory = Path(directory) if directory else None
        self.files = [Path(f) for f in files or []]
        self.current: dict[str, Flow] = {}
        self.versions: dict[str, dict[str, Flow]] = {}
        self.aliases: dict[str, str] = {}  # file stem -> flow id
        self._files: dict[Path, _FileState] = {}
        self._task: asyncio.Task | None = None

    # ---- lookup
    def get(self, flow_id: str, version: str | None = None) -> Flow:
        fid = self.aliases.get(flow_id, flow_id)
        if version is None:
            try:
                return self.current[fid]
            except KeyError:
                raise EngineError(f"unknown flow {flow_id!r}") from None
        try:
            return self.versions[fid][version]
        except KeyError:
            raise EngineError(f"flow {flow_id!r} version {version} is not loaded") from None

    __call__ = get

    def find(self, name: str) -> Flow | None:
        try:
            return self.get(name)
        except EngineError:
            return None

    @property
    def errors(self) -> dict[str, list[str]]:
        return {str(p): s.errors for p, s in self._files.items() if s.errors}

    # ---- loading
    def _paths(self) -> list[Path]:
        paths = list(self.files)
        if self.directory and self.directory.is_dir():
            paths += sorted(p for p in self.directory.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))
        return paths

    def reload(self) -> list[Flow]:
        """Load new and changed files; return the flows that changed."""
        changed: list[Flow] = []
        paths = self._paths()
        known_ids = {p.stem for p in paths} | set(self.current)
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue
            prev = self._files.get(path)
            if prev and prev.mtime_ns == st.st_mtime_ns and prev.size == st.st_size:
                continue
            try:
                flow = load_flow(path, known_flows=lambda fid: fid in known_ids or fid in self.aliases)
            except FlowLoadError as exc:
                errors = [str(p) for p in exc.problems if p.severity == "error"]
                self._files[path] = _FileState(st.st_mtime_ns, st.st_size, prev.flow_id if prev else None, errors)
                live = self.current.get(prev.flow_id) if prev and prev.flow_id else None
                log.error("flow file %s refused (%d problems)%s:\n  %s", path, len(errors),
                          f"; version {live.version} stays live" if live else "", "\n  ".join(errors))
                continue
            self._files[path] = _FileState(st.st_mtime_ns, st.st_size, flow.id, [])
            old = self.current.get(flow.id)
            if old and old.version == flow.version:
                continue
            self.current[flow.id] = flow
            versions = self.versions.setdefault(flow.id, {})
            versions[flow.version] = flow
            while len(versions) > KEEP_VERSIONS:
                versions.pop(next(iter(versions)))
            self.aliases[path.stem] = flow.id
            for w in flow.warnings:
                log.warning("%s", w)
            log.info("flow %s version %s loaded from %s%s", flow.id, flow.version, path,
                     f" (replaces {old.version})" if old else "")
            changed.append(flow)
        return changed

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.reload)
            except Exception:  # never let the watcher die
                log.exception("flow reload failed")

    def start_watching(self, interval: float) -> None:
        if interval > 0 and self._task is None:
            self._task = asyncio.create_task(self.watch(interval), name="flow-watch")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
