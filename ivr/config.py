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
    # ---- visual IVR (visual_ivr/): links texted to callers, the H5 pages, SMS
    visual_link_ttl: int = Field(900, ge=60, le=86400, description="seconds a texted link stays valid")
    visual_service_number: str = Field("95598", description="service number shown on the visual IVR's pages")
    visual_timezone: str = Field("Asia/Shanghai", description="time zone of callback slots on the pages")
    visual_callback_hours: str = Field("08:00-22:00", description="HH:MM-HH:MM when callback slots are offered")
    visual_hold_poll: float = Field(2.0, gt=0, le=10, description="seconds between checks of the page while "
                                                                   "the call holds")
    desk_token: str | None = Field(None, description="bearer token of the agent push API until agent "
                                                     "accounts exist (ivr.auth)")
    sms_gateway: str = Field("outbox", pattern=r"^(outbox|http|smpp)$", description="outbox, http or smpp")
    sms_sender: str = Field("95598", description="sender id / source address of text messages")
    sms_http_url: str | None = Field(None, description="http gateway: URL the JSON webhook is POSTed to")
    sms_http_secret: str | None = Field(None, description="http gateway: HMAC-SHA256 key of the signature header")
    sms_smpp_host: str | None = None
    sms_smpp_port: int = 2775
    sms_smpp_system_id: str = ""
    sms_smpp_password: str = ""
    sms_limit_per_number: int = Field(3, ge=0, description="texts one number may get per hour")
    sms_limit_per_session: int = Field(2, ge=0, description="texts one session may send")
    sms_limit_per_hour: int = Field(500, ge=0, description="texts the whole server may send per hour")


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
