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
    agi_host: str = Field("127.0.0.1", description="address the FastAGI server listens on (private: FastAGI has no auth)")
    agi_port: int = Field(names.DEFAULT_AGI_PORT, description="FastAGI port (0: any free port)")
    http_host: str = Field("127.0.0.1", description="address of the web server (health, demo backend, pages)")
    http_port: int = Field(names.DEFAULT_HTTP_PORT, description="web port (0: any free port)")
    audiosocket_host: str = Field("127.0.0.1", description="address of the AudioSocket server (speech)")
    audiosocket_port: int = Field(names.DEFAULT_AUDIOSOCKET_PORT, description="AudioSocket port")
    backend_url: str | None = Field(None, description="base URL for relative look-up URLs (default: the demo backend)")
    public_url: str | None = Field(None, description="https://host the callers' phones reach (visual IVR links)")
    sounds_dir: str = Field("var/sounds", description="where rendered prompts go (Asterisk's sounds dir in production)")
    sounds_prefix: str = Field(names.SOUNDS_SUBDIR, description="how Asterisk names that folder in STREAM FILE")
    recordings_dir: str = Field("recordings", description="human recordings, <dir>/<lang>/<prompt-id>.wav")
    fallback_queue: str = Field(names.FALLBACK_QUEUE, description="queue for callers when a flow fails")
    command_timeout: float = Field(30.0, description="seconds to wait for one AGI reply (commands that wait for "
                                                     "keys add their own wait); longer than the longest prompt")
    agi_exec_timeout: float = Field(14400.0, gt=0, description="seconds EXEC Queue or Dial may take, the talk with "
                                                              "the agent included; a silent Asterisk past it is gone")
    trail_batch_size: int = Field(
        100, ge=1, le=5000,
        description="events per trail write: SQLAlchemy prepares a batch on the event loop, so big ones stall calls")
    trail_max_queue: int = Field(
        100_000, ge=1000, description="trail operations held in memory while the database is slow or away; "
                                       "beyond that they are spilled to trail_spill_path")
    trail_spill_path: str = Field(
        "", description="append-only file trail operations are spilled to when the memory buffer is full; replayed "
                        "into the database when it is back, also at the next start (empty: next to the SQLite "
                        "file, <file>-spill.jsonl, or var/trail-spill.jsonl for PostgreSQL)")
    shutdown_grace: float = Field(30.0, description="seconds calls may take to finish on SIGTERM")
    reload_interval: float = Field(2.0, description="seconds between checks for changed flow files (0: off)")
    ami_host: str | None = Field(None, description="Asterisk Manager Interface host (unset: no AMI)")
    ami_port: int = Field(5038, description="AMI port")
    ami_username: str = Field("ivr", description="AMI user (see asterisk_conf/manager.conf)")
    ami_secret: str = Field("", description="AMI secret")
    log_json: bool = Field(False, description="one JSON object per log line")
    log_trail: bool = Field(True, description="log one line per trail event (logger ivr.trail, INFO)")
    fcr_days: int = Field(7, ge=1, le=90, description="days within which a new contact counts as a repeat (ops)")
    ops_timezone: str = Field("UTC", description="time zone of the dates on the /ops dashboard, e.g. Asia/Shanghai")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    secret_key: str | None = Field(None, description="signs web tokens; generated and kept in var/ when unset")
    login_max_failures: int = Field(5, ge=1, le=1000, description="wrong passwords in a row that lock an account")
    login_lock_seconds: int = Field(900, ge=1, le=86400, description="seconds a locked account stays locked")
    login_address_failures: int = Field(20, ge=1, description="failed sign-ins one client address may make per "
                                                               "login_address_window before it must wait")
    login_address_window: int = Field(600, ge=1, le=86400, description="seconds of the per-address sign-in window")
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
    prompt_render_during_calls: bool = Field(
        True, description="render prompts with variables (and missing files) during calls; off: only files from "
                          "'ivr prompts build' play")
    prompt_render_ttl: float = Field(24.0, ge=0, description="hours call-time renders stay on disk unused (0: forever)")
    prompt_synth_command: list[str] | None = Field(
        None, description="argv of the synthesis worker (default: this Python running ivr.prompts.worker)")

    # ---- visual IVR (visual_ivr/): links texted to callers, the H5 pages, SMS
    visual_link_ttl: int = Field(900, ge=60, le=86400, description="seconds a texted link stays valid")
    visual_link_failures: int = Field(30, ge=0, description="unknown or tampered link tokens one client address "
                                                             "may try per 10 minutes before its link requests get "
                                                             "429 for a while (0: no limit)")
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
    sms_smpp_host: str | None = Field(None, description="smpp gateway: the SMS centre's host")
    sms_smpp_port: int = Field(2775, description="smpp gateway: port")
    sms_smpp_system_id: str = Field("", description="smpp gateway: system id (account)")
    sms_smpp_password: str = Field("", description="smpp gateway: password")
    sms_send_timeout: float = Field(5.0, gt=0, le=60, description="seconds a call waits for the SMS gateway")
    sms_limit_per_number: int = Field(3, ge=0, description="texts one number may get per hour")
    sms_limit_per_session: int = Field(2, ge=0, description="texts one session may send")
    sms_limit_per_hour: int = Field(500, ge=0, description="texts the whole server may send per hour")

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


def example_toml() -> str:
    """A settings file listing every setting with its default and meaning."""
    lines = ["## ivr serve --config ivr.toml", "## Every setting can also be given as IVR_<NAME> in the environment.",
             "## Remove the '# ' before a setting to change it.", ""]
    for name, field in Config.model_fields.items():
        default = field.get_default(call_default_factory=True)
        lines.append(f"## {field.description or name}")
        if default is None:
            lines.append(f"# {name} = ")
        elif isinstance(default, bool):
            lines.append(f"# {name} = {'true' if default else 'false'}")
        elif isinstance(default, (int, float)):
            lines.append(f"# {name} = {default}")
        elif isinstance(default, dict):
            lines.append(f"# {name} = {{}}")
        else:
            lines.append(f'# {name} = "{default}"')
        lines.append("")
    return "\n".join(lines)


def ensure_parent(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
