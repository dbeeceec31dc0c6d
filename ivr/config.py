"""Server settings: defaults, then a TOML file, then ``IVR_*`` environment
variables, then command-line flags (each overriding the one before)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ivr import names


class ConfigError(Exception):
    pass


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flows_dir: str = Field("flows", description="folder of flow YAML files")
    database_url: str = Field("sqlite:///var/ivr.db", description="sqlite:///path or postgresql://...")
    agi_host: str = "127.0.0.1"
    agi_port: int = names.DEFAULT_AGI_PORT
    http_host: str = "127.0.0.1"
    http_port: int = names.DEFAULT_HTTP_PORT
    audiosocket_host: str = "127.0.0.1"
    audiosocket_port: int = names.DEFAULT_AUDIOSOCKET_PORT
    backend_url: str | None = Field(None, description="base URL for relative look-up URLs (default: the demo backend)")
    public_url: str | None = Field(None, description="https://host the callers' phones reach (visual IVR links)")
    sounds_dir: str = Field("var/sounds", description="where rendered prompts go (Asterisk's sounds dir in production)")
    sounds_prefix: str = Field(names.SOUNDS_SUBDIR, description="how Asterisk names that folder in STREAM FILE")
    recordings_dir: str = "recordings"
    fallback_queue: str = names.FALLBACK_QUEUE
    command_timeout: float = Field(30.0, description="seconds to wait for one AGI reply")
    shutdown_grace: float = Field(30.0, description="seconds calls may take to finish on SIGTERM")
    reload_interval: float = Field(2.0, description="seconds between checks for changed flow files (0 = off)")
    ami_host: str | None = None
    ami_port: int = 5038
    ami_username: str = "ivr"
    ami_secret: str = ""
    log_json: bool = False
    log_level: str = "INFO"
    secret_key: str | None = Field(None, description="signs web tokens; generated and kept in var/ when unset")
    # ---- agent handoff: desk notifications and callbacks
    desk_bus: str = Field("auto", pattern="^(auto|local|postgres|redis)$",
                          description="how screen pops reach other servers: auto (postgres when the database is, "
                                      "else local), local (one server), postgres (LISTEN/NOTIFY), redis (pub/sub)")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for desk_bus = redis")
    bus_channel: str = Field("ivr_desk", pattern="^[a-z_][a-z0-9_]{0,62}$",
                             description="NOTIFY / pub-sub channel shared by the servers of one deployment")
    callbacks: bool = Field(True, description="run the callback scheduler (needs ami_host)")
    callback_poll_interval: float = Field(2.0, gt=0, description="seconds between looks for due callbacks")
    callback_lease: float = Field(120.0, ge=10, description="seconds a claim holds before another server may take it")
    callback_max_attempts: int = Field(3, ge=1, le=20, description="default dial attempts per request")
    callback_retry_interval: int = Field(300, ge=1, description="default seconds between attempts")
    callback_dial_timeout: float = Field(30.0, gt=0, le=300, description="seconds a callback leg may ring")
    callback_concurrency: int = Field(10, ge=1, le=500, description="callbacks one server dials at once")
    callback_caller_id: str | None = Field(None, description="caller ID shown to customers on callbacks")


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None,
                env: dict[str, str] | None = None) -> Config:
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data.update(tomllib.load(fh))
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    env = dict(os.environ if env is None else env)
    for name in Config.model_fields:
        key = f"IVR_{name.upper()}"
        if key in env:
            data[name] = env[key]
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"bad settings: {problems}") from None


def ensure_parent(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
