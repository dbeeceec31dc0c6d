"""Server settings: defaults, then a TOML file, then ``IVR_*`` environment
variables, then command-line flags (each overriding the one before)."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    # Speech recognition (docs/speech.md). No model: menus take keys.
    asr_models: dict[str, str] = Field(
        default_factory=dict,
        description='Vosk model per language: {"zh-CN" = "/opt/vosk/vosk-model-small-cn-0.22"} or '
                    '"package:<module>"; env: IVR_ASR_MODELS="zh-CN=/path,en-US=/path" (or JSON)')
    asr_pool_size: int = Field(8, ge=1, le=256, description="recognitions at the same time; more callers get keys")
    asr_end_silence_ms: int = Field(800, ge=100, le=10_000, description="silence that ends a spoken answer")
    asr_max_speech_ms: int = Field(8000, ge=500, le=120_000, description="longest spoken answer")
    asr_connect_timeout: float = Field(3.0, gt=0, le=30, description="seconds to wait for the AudioSocket connection")
    audiosocket_advertise_host: str | None = Field(
        None, description="host Asterisk dials for AudioSocket when audiosocket_host is a wildcard address")
    record_dir: str = Field("var/recordings", description="where RECORD FILE writes messages (Asterisk writes, "
                            "the server reads them: same host or shared storage)")

    @field_validator("asr_models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> Any:
        """``zh-CN=/path,en-US=package:mod`` or a JSON object (environment variables are strings)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return {}
        if text.startswith("{"):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON object: {exc}") from None
        out: dict[str, str] = {}
        for item in text.split(","):
            lang, sep, location = item.partition("=")
            if not sep or not lang.strip() or not location.strip():
                raise ValueError(f"expected LANG=MODEL pairs separated by commas, got {item.strip()!r}")
            out[lang.strip()] = location.strip()
        return out


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
