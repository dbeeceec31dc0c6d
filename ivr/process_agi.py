"""Process AGI: the same flows for deployments that cannot reach a FastAGI server.

Asterisk starts ``agi_scripts/ivr_agi.py`` per call (``AGI(ivr_agi.py,<flow>,k=v)``)
and talks to it over standard input and output. We use pyst2 where it works —
reading the AGI environment and catching Asterisk's SIGHUP — and our own
:class:`~ivr.agi.channel.AgiChannel` for the commands, because pyst2 (0.5.1)
mis-handles replies that real Asterisk sends (see the captures):

* the unsolicited ``HANGUP`` line before ``511`` is parsed as an unknown code;
* ``200 result=-1 endpos=0`` (a missing sound file) and a hang-up both raise
  ``AGIAppError``, so a missing prompt would end the call;
* ``GET DATA`` drops the ``(timeout)`` flag, so ``#`` and silence look alike;
* ``SET VARIABLE`` quotes values without escaping quotes or newlines, so caller
  text could inject AGI commands.

The flow, the engine, the trail and the voice face are exactly those of the
FastAGI server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from typing import Any, BinaryIO

from ivr import names
from ivr.agi.channel import AgiChannel
from ivr.agi.protocol import AgiError
from ivr.agi.voice import VoiceFace, call_context
from ivr.config import load_config
from ivr.engine import Engine
from ivr.flow.registry import FlowRegistry
from ivr.lookup import LookupRunner
from ivr.session import CallDriver
from ivr.store import TrailStore

log = logging.getLogger("ivr.process_agi")


def read_env_with_pyst2(stdin: Any) -> tuple[dict[str, str], Any]:
    """The AGI environment, read by pyst2 (which also installs its SIGHUP handler)."""
    from asterisk.agi import AGI

    devnull = open(os.devnull, "w")  # pyst2 writes debugging chatter to stderr
    agi = AGI(stdin=stdin, stdout=sys.stdout, stderr=devnull)
    return dict(agi.env), agi


def env_to_context(env: dict[str, str]) -> dict[str, str]:
    """``AGI(ivr_agi.py,demo_hotline,lang=zh)`` -> the FastAGI-style script path."""
    flow = env.get("agi_arg_1", "")
    params = [env[k] for k in sorted((k for k in env if k.startswith("agi_arg_") and k != "agi_arg_1"),
                                     key=lambda k: int(k.rsplit("_", 1)[1]) if k.rsplit("_", 1)[1].isdigit() else 0)]
    query = "&".join(p for p in params if "=" in p)
    env = dict(env)
    env["agi_network_script"] = f"{flow}?{query}" if query else flow
    return env


async def _pipe_streams(stdin: BinaryIO, stdout: BinaryIO) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    # A StreamReaderProtocol (not the bare FlowControlMixin of the usual recipe)
    # so that StreamWriter.wait_closed() works on the pipe.
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), stdout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def run_process_agi(env: dict[str, str], stdin: BinaryIO, stdout: BinaryIO, *,
                          config_path: str | None = None, voice_hooks: dict[str, Any] | None = None) -> str:
    """Run one call over stdin/stdout; return its outcome.

    ``voice_hooks`` go to the voice face (``speech``, ``record_dir`` ...); by
    default recordings are written under ``record_dir`` and transcribed when
    a speech model is configured, and questions take keys.
    """
    config = load_config(config_path or os.environ.get("IVR_CONFIG"))
    service = None
    if voice_hooks is None:
        from ivr.speech import agi_hooks

        voice_hooks, service = agi_hooks(config)
    try:
        return await _run(env, stdin, stdout, config, voice_hooks)
    finally:
        if service is not None:
            await service.close()


async def _run(env: dict[str, str], stdin: BinaryIO, stdout: BinaryIO, config: Any,
               voice_hooks: dict[str, Any]) -> str:
    registry = FlowRegistry(config.flows_dir)
    registry.reload()
    reader, writer = await _pipe_streams(stdin, stdout)
    chan = AgiChannel(reader, writer, command_timeout=config.command_timeout, env=env_to_context(env))
    flow_name, context = call_context(chan.env)
    flow = registry.find(flow_name)
    if flow is None:
        log.error("flow %r is not loaded from %s: %s", flow_name, config.flows_dir, registry.errors)
        try:
            await chan.set_variable(names.VAR_RESULT, "noflow")
        except AgiError:
            pass
        await chan.close()
        return "noflow"
    store = await TrailStore.open(config.database_url)
    lookups = LookupRunner()
    backend = config.backend_url or f"http://127.0.0.1:{config.http_port}/demo-api"
    driver = CallDriver(Engine(registry.get), store, lookups, backend_url=backend)
    context["session_id"] = uuid.uuid4().hex
    context["channel"] = "voice"
    try:
        try:
            await chan.answer()
            await chan.set_variable(names.INHERIT + names.VAR_SESSION, context["session_id"])
        except AgiError:
            await chan.close()
            return "hangup"
        face = VoiceFace(chan, sounds_prefix=config.sounds_prefix, **voice_hooks)
        result = await driver.run(face, flow, context)
        return result.outcome
    finally:
        await lookups.close()
        await store.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="ivr_agi[%(process)d] %(levelname)s %(name)s: %(message)s")
    env, _agi = read_env_with_pyst2(sys.stdin)
    outcome = asyncio.run(run_process_agi(env, sys.stdin.buffer, sys.stdout.buffer))
    log.info("call %s ended: %s", env.get("agi_uniqueid"), outcome)
    return 0
