"""Server settings: defaults, then a TOML file, then ``IVR_*`` environment
variables, then command-line flags (each overriding the one before)."""

from __future__ import annotations

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
    # prompt audio (ivr.prompts, docs/prompts.md)
    prompt_cache_dir: str = Field("var/prompt-cache", description="content-addressed cache of rendered prompt audio")
    prompt_voices: dict[str, str] = Field({}, description="espeak-ng voice per language or primary language, e.g. "
                                                          "zh-CN=cmn,en-US=en-us (defaults: cmn for Chinese, en-us "
                                                          "for English, else the language)")
    prompt_rate: int = Field(150, ge=80, le=450, description="speech rate of synthesised prompts, words per minute")
    prompt_rates: dict[str, int] = Field({}, description="speech rate per language, e.g. zh-CN=140 (overrides prompt_rate)")
    prompt_synth_timeout: float = Field(20.0, gt=0, le=600, description="seconds one synthesis may run before it is killed")
    prompt_jobs: int = Field(0, ge=0, le=64, description="parallel syntheses in 'ivr prompts build' (0: one per CPU)")
    prompt_workers: int = Field(2, ge=1, le=64, description="syntheses at once during calls (dynamic prompts, fallbacks)")
    prompt_render_ttl: float = Field(24.0, ge=0, description="hours call-time renders stay on disk unused (0: forever)")
    prompt_synth_command: list[str] | None = Field(
        None, description="argv of the synthesis worker (default: this Python running ivr.prompts.worker)")

    @field_validator("prompt_voices", "prompt_rates", "prompt_synth_command", mode="before")
    @classmethod
    def _from_env_text(cls, value: Any, info: Any) -> Any:
        """From the environment: IVR_PROMPT_VOICES='zh-CN=cmn,en-US=en-us' or JSON;
        IVR_PROMPT_SYNTH_COMMAND='/path/to/worker --flag' (shell words) or JSON."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith(("{", "[")):
            import json

            try:
                return json.loads(text)
            except ValueError:
                return value
        if info.field_name == "prompt_synth_command":
            import shlex

            return shlex.split(text)
        return dict(part.strip().split("=", 1) for part in text.replace(";", ",").split(",") if "=" in part)


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
