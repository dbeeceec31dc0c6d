"""``ivr serve``: the composition root. Wires the flow registry, engine, trail
store, look-ups, the FastAGI server and the web app, and shuts them down in
order on SIGTERM (calls in progress may finish, bounded by ``shutdown_grace``)."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import logging
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from ivr import metrics, names
from ivr.agi.channel import AgiChannel
from ivr.agi.protocol import AgiError, AgiHangup
from ivr.agi.server import FastAgiServer
from ivr.agi.voice import VoiceFace, call_context
from ivr.config import Config
from ivr.engine import Engine
from ivr.flow.model import ID_RE
from ivr.flow.registry import FlowRegistry
from ivr.logs import bind_call, setup_logging
from ivr.lookup import LookupRunner
from ivr.session import CallDriver
from ivr.store import TrailStore, default_spill_path

log = logging.getLogger("ivr.server")
#: What a flow name in an AGI URL can look like (flow ids, see ivr.flow.model.ID_RE).
_FLOW_NAME_RE = re.compile(ID_RE)

# Features add themselves to the server here (speech, desk, visual IVR,
# callbacks, metrics): each gets the App after its core parts exist.
Extension = Callable[["App"], Awaitable[None]]
EXTENSIONS: list[Extension] = []

APP_KEY: web.AppKey["App"] = web.AppKey("ivr_app")

# Modules that register extensions when imported (each appends to EXTENSIONS).
EXTENSION_MODULES: list[str] = [
    "ivr.auth",
    "ivr.handoff.ext",
    "callback.ext",
    "visual_ivr.desk",
    "ivr.speech",
    "ivr.prompts.runtime",
    "visual_ivr.extension",
    "ivr.ops.web",
]


def _extensions() -> list[Extension]:
    import importlib

    for module in EXTENSION_MODULES:
        importlib.import_module(module)
    return list(EXTENSIONS)


@dataclass
class LiveCall:
    session_id: str
    face: VoiceFace
    channel: str | None
    uniqueid: str | None
    flow_id: str


@dataclass
class App:
    config: Config
    registry: FlowRegistry
    store: TrailStore
    lookups: LookupRunner
    engine: Engine
    driver: CallDriver
    agi: FastAgiServer | None = None
    web: web.Application | None = None
    started: float = field(default_factory=time.time)
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    voice_hooks: dict[str, Any] = field(default_factory=dict)
    # The AMI link (None when no ami_host is configured).
    ami: Any = None
    # Calls in progress on this server, by session id: the web face uses this
    # to find a caller's live channel (e.g. to move it into a queue).
    live_calls: dict[str, "LiveCall"] = field(default_factory=dict)
    # Agent handoff (ivr.handoff.core.Handoff) and the callback scheduler.
    handoff: Any = None
    callbacks: Any = None

    async def handle_call(self, chan: AgiChannel) -> None:
        """One FastAGI call: pick the flow, run it, always leave the channel somewhere safe."""
        bind_call(uniqueid=chan.uniqueid, session_id=None)  # every log line of this call names it
        flow_name, context = call_context(chan.env)
        flow = self.registry.find(flow_name)
        if "agi_network_script" not in chan.env or (flow is None and not _FLOW_NAME_RE.fullmatch(flow_name)):
            # not a FastAGI request for a flow at all: the peer's fault, not a config error
            log.warning("call %s: the AGI request names no flow (agi_network_script %r)", chan.uniqueid,
                        chan.env.get("agi_network_script", "missing")[:80])
            flow = None
        elif flow is None:
            log.error("call %s asks for flow %r, which is not loaded (have: %s)", chan.uniqueid, flow_name,
                      ", ".join(sorted(self.registry.current)) or "none")
        if flow is None:
            try:
                await chan.set_variable(names.VAR_RESULT, "noflow")
            except AgiError:
                pass
            return
        context["session_id"] = uuid.uuid4().hex
        try:
            await chan.answer()
            await chan.set_variable(names.INHERIT + names.VAR_SESSION, context["session_id"])
        except AgiHangup:
            return  # gone before the flow began: nothing to record
        except AgiError as exc:  # garbage or no reply before the flow began: nothing to record either
            log.warning("call %s: AGI link lost before the flow began: %s", chan.uniqueid, exc)
            return
        face = VoiceFace(chan, sounds_prefix=self.config.sounds_prefix, exec_timeout=self.config.agi_exec_timeout,
                         **self.voice_hooks)
        face.handoff = self.handoff
        sid = context["session_id"]
        self.live_calls[sid] = LiveCall(sid, face, chan.env.get("agi_channel"), chan.uniqueid, flow.id)
        result = None
        try:
            result = await self.driver.run(face, flow, context)
        finally:
            self.live_calls.pop(sid, None)
            metrics.observe_call(result.outcome if result else "error", chan.turnarounds)


def create_web_app(app: App) -> web.Application:
    webapp = web.Application(client_max_size=256 * 1024)
    webapp[APP_KEY] = app
    from ivr.demo_backend import add_routes

    add_routes(webapp, "/demo-api")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "uptime_s": round(time.time() - app.started, 1)})

    async def readyz(request: web.Request) -> web.Response:
        problems = []
        try:
            async with asyncio.timeout(2):
                await app.store.ping()
        except Exception as exc:  # noqa: BLE001 - report any database failure
            problems.append(f"database: {type(exc).__name__}")
        if not app.registry.current:
            problems.append("no flows loaded")
        body = {
            "ready": not problems,
            "problems": problems,
            "flows": {fid: f.version for fid, f in app.registry.current.items()},
            "flow_errors": app.registry.errors,
            "calls_in_progress": app.agi.active_calls if app.agi else 0,
            # reported, not required: calls still run while the AMI link is down
            "ami": str(app.ami.state) if app.ami is not None else "not configured",
        }
        return web.json_response(body, status=200 if not problems else 503)

    webapp.router.add_get("/healthz", healthz)
    webapp.router.add_get("/readyz", readyz)
    return webapp


async def build_app(config: Config, *, clock: Callable[[], Any] | None = None) -> App:
    registry = FlowRegistry(config.flows_dir)
    registry.reload()
    store = await TrailStore.open(config.database_url, batch_size=config.trail_batch_size,
                                  max_queue=config.trail_max_queue,
                                  spill_path=config.trail_spill_path or default_spill_path(config.database_url))
    lookups = LookupRunner()
    engine = Engine(registry.get)
    backend = config.backend_url or f"http://127.0.0.1:{config.http_port}/demo-api"
    driver = CallDriver(engine, store, lookups, backend_url=backend, clock=clock)
    return App(config, registry, store, lookups, engine, driver)


async def start_app(app: App) -> tuple[web.AppRunner, web.TCPSite]:
    config = app.config
    app.web = create_web_app(app)
    if config.ami_host:  # before the extensions: handoff and callbacks use it
        from ivr.ami import AmiClient

        app.ami = AmiClient(config.ami_host, config.ami_port, config.ami_username, config.ami_secret)
        await app.ami.start()  # keeps trying in the background while Asterisk is down
        app.cleanups.insert(0, app.ami.stop)
    # Features (speech, desk, visual IVR, callbacks, metrics) add routes to
    # app.web, hooks to the voice face and clean-ups to app.cleanups here.
    for ext in _extensions():
        await ext(app)
    runner = web.AppRunner(app.web, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.http_host, config.http_port)
    await site.start()
    if config.http_port == 0:  # a free port was chosen: relative look-ups go there
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        config.http_port = port
        if not config.backend_url:
            app.driver.backend_url = f"http://127.0.0.1:{port}/demo-api"
    app.agi = FastAgiServer(app.handle_call, config.agi_host, config.agi_port, command_timeout=config.command_timeout)
    await app.agi.start()
    config.agi_port = app.agi.bound_port
    app.registry.start_watching(config.reload_interval)
    return runner, site


async def stop_app(app: App, runner: web.AppRunner) -> None:
    if app.agi:
        await app.agi.stop(app.config.shutdown_grace)
    await app.registry.stop()
    for cleanup in reversed(app.cleanups):
        try:
            await cleanup()
        except Exception:
            log.exception("clean-up failed")
    await runner.cleanup()
    await app.lookups.close()
    await app.store.close()


def _setup_logging(config: Config) -> None:
    # Lines name their call (uniqueid, session id); see ivr.logs.
    setup_logging(level=config.log_level, json_lines=config.log_json)
    if not config.log_trail:
        logging.getLogger("ivr.trail").setLevel(logging.WARNING)


def tune_gc() -> None:
    """Keep garbage collection from stalling calls.

    A full collection walks every object: measured under 300 paced calls it
    stopped the event loop for 80-100 ms, every few seconds. Flows, modules
    and templates live as long as the process, so they are frozen out of the
    scans; and collections run less often (asyncio's reference cycles are few
    and small, so the memory this costs stays bounded; see docs/benchmarks.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def serve(config: Config) -> int:
    _setup_logging(config)
    app = await build_app(config)
    if not app.registry.current:
        log.error("no valid flows in %s: %s", config.flows_dir, app.registry.errors or "folder is empty")
    runner, _ = await start_app(app)
    tune_gc()
    log.info("ready: FastAGI agi://%s:%d/<flow>  web http://%s:%d/  flows: %s", config.agi_host, config.agi_port,
             config.http_host, config.http_port, ", ".join(sorted(app.registry.current)) or "none")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: %d calls in progress", app.agi.active_calls if app.agi else 0)
    await stop_app(app, runner)
    log.info("stopped")
    return 0
