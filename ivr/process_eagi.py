"""Process AGI with speech: ``EAGI(ivr_eagi.py,<flow>,k=v)`` runs a flow whose
questions can be answered by voice, the caller's audio arriving on fd 3.

The same flows, engine, trail and voice face as the FastAGI server
(:mod:`ivr.process_agi` explains why only pyst2's environment reading is
used). Listening works as over AudioSocket, except that the audio comes from
fd 3 and keys are caught by short ``WAIT FOR DIGIT`` commands, which also keep
Asterisk writing audio to fd 3. The Vosk model loads once per call (a script
lives for one call), in the background while the first prompts play; for
many calls prefer FastAGI + AudioSocket, where the model stays loaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, BinaryIO

from asr.eagi import EAGI_FD, EagiAudioSource
from ivr.config import load_config
from ivr.process_agi import read_env_with_pyst2, run_process_agi
from ivr.speech import agi_hooks

log = logging.getLogger("ivr.process_eagi")


def _has_audio(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def run_eagi(env: dict[str, str], stdin: BinaryIO, stdout: BinaryIO, *, audio_fd: int = EAGI_FD,
                   config_path: str | None = None) -> str:
    """Run one call with the caller's audio on ``audio_fd``; return its outcome."""
    config = load_config(config_path or os.environ.get("IVR_CONFIG"))
    source = None
    if _has_audio(audio_fd):
        source = EagiAudioSource(audio_fd)
        source.start()
    else:
        log.warning("no audio on fd %d (started with AGI() rather than EAGI()?): questions take keys", audio_fd)
    hooks, service = agi_hooks(config, source=source)
    loading: asyncio.Task[Any] = asyncio.create_task(service.load())  # while the first prompts play
    try:
        return await run_process_agi(env, stdin, stdout, config_path=config_path, voice_hooks=hooks)
    finally:
        if source is not None:
            source.stop()
        if not loading.done():
            loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await service.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="ivr_eagi[%(process)d] %(levelname)s %(name)s: %(message)s")
    env, _agi = read_env_with_pyst2(sys.stdin)
    outcome = asyncio.run(run_eagi(env, sys.stdin.buffer, sys.stdout.buffer))
    log.info("call %s ended: %s", env.get("agi_uniqueid"), outcome)
    return 0
