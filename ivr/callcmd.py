"""``ivr call``: a call in the terminal, or through a running server (``--agi``)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any, AsyncIterator

from aiohttp import web

from ivr.engine import Engine
from ivr.flow.loader import FlowLoadError
from ivr.flow.registry import FlowRegistry
from ivr.lookup import LookupRunner
from ivr.session import CallDriver
from ivr.sim import SimFace, parse_keys
from ivr.store import TrailStore

DEFAULT_DB = "sqlite:///var/ivr.db"


@contextlib.asynccontextmanager
async def demo_backend() -> AsyncIterator[str]:
    """Run the demo business backend on a free local port; yield its base URL."""
    from ivr.demo_backend import create_demo_backend

    runner = web.AppRunner(create_demo_backend(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _clock(at: str | None):
    if not at:
        return None
    when = dt.datetime.fromisoformat(at)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone(dt.timedelta(hours=8)))
    return lambda: when


def print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        json.dump(result, sys.stdout, ensure_ascii=False, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(f"outcome: {result['outcome']} at {result['node']}")
        print(f"summary: {result['summary']}")
        if result.get("reason"):
            print(f"reason:  {result['reason']}")


def _speech_answers(args: argparse.Namespace) -> list[str]:
    """``--say`` / ``--audio`` as ``say:`` / ``wav:`` tokens, in the order given."""
    return list(getattr(args, "spoken", None) or [])


def _sim_speech(args: argparse.Namespace):
    """The simulator's ears: models from --asr-model, else the settings' asr_models."""
    from ivr.config import ConfigError, load_config
    from ivr.speech import SimSpeech, SpeechService

    overrides: dict[str, Any] = {}
    if getattr(args, "asr_model", None):
        models = {}
        for item in args.asr_model:
            lang, sep, location = item.partition("=")
            if not sep or not lang or not location:
                raise ConfigError(f"--asr-model wants LANG=MODEL, got {item!r}")
            models[lang] = location
        overrides["asr_models"] = models
    config = load_config(getattr(args, "config", None), overrides)
    if not config.asr_models:
        return SimSpeech(None)
    service = SpeechService.from_config(config)
    return SimSpeech(service)


async def run_call(args: argparse.Namespace) -> int:
    if args.agi:
        return await _run_via_agi(args)
    from ivr.config import ConfigError

    try:
        keys = parse_keys(args.keys) if args.keys is not None else None
        spoken = _speech_answers(args)
        speech = _sim_speech(args)
    except (ConfigError, ValueError) as exc:
        print(f"ivr call: {exc}", file=sys.stderr)
        return 2
    path = Path(args.flow)
    registry = FlowRegistry(directory=path.parent, files=[]) if path.exists() else FlowRegistry()
    registry.reload()
    flow = registry.find(path.stem) if path.exists() else None
    if flow is None:
        # show the real problems of the requested file
        from ivr.flow.loader import load_flow

        try:
            flow = load_flow(path)
        except FlowLoadError as exc:
            for p in exc.problems:
                print(p, file=sys.stderr)
            return 1
    engine = Engine(registry.get)
    store = await TrailStore.open(args.database_url or DEFAULT_DB)
    lookups = LookupRunner()
    face = SimFace(keys, quiet=args.json, transfer_status=args.transfer,
                   out=sys.stderr if args.json else sys.stdout, speech=speech, spoken=spoken)
    try:
        async with contextlib.AsyncExitStack() as stack:
            backend = args.backend_url or await stack.enter_async_context(demo_backend())
            driver = CallDriver(engine, store, lookups, backend_url=backend, clock=_clock(args.at))
            result = await driver.run(face, flow, {
                "caller": args.caller, "dialed": args.dialed, "lang": args.lang, "channel": "sim",
            })
    finally:
        await lookups.close()
        await store.close()
        if speech.service is not None:
            await speech.service.close()
    print_result(result.to_dict(), args.json)
    return 0


async def _run_via_agi(args: argparse.Namespace) -> int:
    from ivr.testing.callers import SimLikeCaller
    from ivr.testing.fake_asterisk import SILENCE, FakeAsterisk

    from ivr.testing.fake_asterisk import Speak

    host, _, port = args.agi.rpartition(":")
    flow_id = Path(args.flow).stem
    script: list[Any] = []
    try:
        tokens = parse_keys(args.keys or "") + _speech_answers(args)
        for token in tokens:
            if token.startswith("say:"):
                raise ValueError("say: answers need the simulator (without --agi); use wav:FILE with --agi")
            if token.startswith("wav:"):
                script.append(Speak.wav(token[4:]))  # streamed over AudioSocket in real time
            else:
                script.append(SILENCE if token in ("-", "_", "silence") else token)
    except Exception as exc:  # a bad token or an unreadable recording
        print(f"ivr call: {exc}", file=sys.stderr)
        return 2
    query = f"?lang={args.lang}" if args.lang else ""
    fake = FakeAsterisk(host or "127.0.0.1", int(port), inputs=SimLikeCaller(script),
                        script=f"{flow_id}{query}", callerid=args.caller, dnid=args.dialed, idle_timeout=60)
    call = await fake.run()
    session_id = call.variables.get("IVR_SESSION")
    if not session_id:
        print(f"ivr call: the server did not start a session (commands: {call.commands[:5]})", file=sys.stderr)
        return 1
    store = await TrailStore.open(args.database_url or DEFAULT_DB, migrate=False)
    try:
        session = await store.get_session(session_id)
        events = await store.events(session_id)
    finally:
        await store.close()
    if session is None:
        print(f"ivr call: session {session_id} is not in {args.database_url or DEFAULT_DB}", file=sys.stderr)
        return 1
    state = session.get("state") or {}
    print_result({
        "session_id": session_id,
        "outcome": session.get("outcome"),
        "node": session.get("end_node"),
        "variables": state.get("vars", session.get("variables") or {}),
        "summary": session.get("summary"),
        "reason": session.get("reason"),
        "trail": [{"kind": e["kind"], "node": e["node"], "data": e["data"], "channel": e["channel"]} for e in events],
    }, args.json)
    return 0
