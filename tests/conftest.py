"""Shared fixtures: an in-process server on free ports with its own database."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

pytest_plugins = ["tests.reliability.plugin"]

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
# 11:00 in Shanghai on a Wednesday: the demo's agents are in.
OFFICE_HOURS = dt.datetime(2026, 11, 25, 3, 0, tzinfo=dt.timezone.utc)


def free_port() -> int:
    """A local TCP port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_url() -> str:
    return os.environ.get("IVR_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def flows_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped flows (tests may edit it)."""
    target = tmp_path / "flows"
    shutil.copytree(ROOT / "flows", target)
    return target


@pytest.fixture(scope="session")
def prompt_cache(tmp_path_factory) -> Path:
    """One prompt cache for the test session, outside the working tree: call-time
    renders of the demo's dynamic prompts are then synthesised once."""
    return tmp_path_factory.mktemp("prompt-cache")


@contextlib.asynccontextmanager
async def running_server(tmp_path: Path, flows_dir: Path, prompt_cache: Path, *,
                         clock: Callable[[], dt.datetime] = lambda: OFFICE_HOURS, **settings):
    """A running server (FastAGI + web) on free ports with a fresh SQLite trail;
    ``clock`` is the server's clock (office hours by default), ``settings``
    override the test defaults (any setting of ivr.config)."""
    from ivr.config import load_config
    from ivr.server import build_app, start_app, stop_app

    config = load_config(None, {
        "flows_dir": str(flows_dir), "database_url": f"sqlite:///{tmp_path / 'trail.db'}",
        "agi_port": 0, "http_port": 0, "reload_interval": 0, "shutdown_grace": 5,
        "sounds_dir": str(tmp_path / "sounds"), "prompt_cache_dir": str(prompt_cache), **settings,
    }, env={})
    app = await build_app(config, clock=clock)
    runner, _ = await start_app(app)
    try:
        yield app
    finally:
        await stop_app(app, runner)


@pytest.fixture
async def server(tmp_path: Path, flows_dir: Path, prompt_cache: Path):
    """A running server (FastAGI + web) on free ports with a fresh SQLite trail."""
    async with running_server(tmp_path, flows_dir, prompt_cache) as app:
        yield app
