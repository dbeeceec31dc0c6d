"""What ``ivr prompts build`` put in the sounds folder: ``<sounds_dir>/.prompts.json``.

One entry per ``<lang>/<prompt-id>``: the cache key of the audio, where it
came from (``tts`` or ``recording``), a digest of the text, the language whose
voice spoke it and the flow. Builds use it to skip prompts that are already
in place; the server uses it to tell an up-to-date file from a stale one (a
flow edited and hot-reloaded since the last build) and renders stale ones at
call time instead of playing old audio.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Iterator

MANIFEST_NAME = ".prompts.json"
LOCK_NAME = ".prompts.lock"
VERSION = 1


def manifest_path(sounds_dir: Path) -> Path:
    return sounds_dir / MANIFEST_NAME


def read_manifest(sounds_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(manifest_path(sounds_dir).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


@contextlib.contextmanager
def locked(sounds_dir: Path) -> Iterator[None]:
    """Serialise read-merge-write of the manifest between processes."""
    sounds_dir.mkdir(parents=True, exist_ok=True)
    with open(sounds_dir / LOCK_NAME, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def update_manifest(sounds_dir: Path, entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merge ``entries`` into the manifest (atomically) and return the result."""
    with locked(sounds_dir):
        merged = read_manifest(sounds_dir)
        merged.update(entries)
        path = manifest_path(sounds_dir)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": VERSION, "entries": dict(sorted(merged.items()))},
                                  ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    return merged
