"""The FastAGI server: one asyncio task per call; no call can take the server down."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from ivr.agi.channel import AgiChannel
from ivr.agi.protocol import AgiError, AgiHangup

log = logging.getLogger("ivr.agi")

#: Seconds calls cancelled at the end of the shutdown grace get to hand the
#: caller back (set IVR_RESULT) and write the end of their trail.
HANDBACK_WAIT = 10.0

CallHandler = Callable[[AgiChannel], Awaitable[None]]


class FastAgiServer:
    def __init__(self, handler: CallHandler, host: str = "127.0.0.1", port: int = 4573, *,
                 command_timeout: float = 30.0, env_timeout: float = 10.0):
        self.handler = handler
        self.host = host
        self.port = port
        self.command_timeout = command_timeout
        self.env_timeout = env_timeout
        self._server: asyncio.base_events.Server | None = None
        self._calls: set[asyncio.Task] = set()
        self.accepting = False
        self.calls_total = 0
        self.calls_failed = 0

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, limit=64 * 1024, backlog=1024)
        self.accepting = True
        log.info("FastAGI listening on %s:%d", self.host, self.bound_port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if not self.accepting:
            writer.close()
            return
        self._calls.add(task)
        self.calls_total += 1
        started = time.monotonic()
        chan: AgiChannel | None = None
        try:
            chan = await AgiChannel.accept(reader, writer, env_timeout=self.env_timeout,
                                           command_timeout=self.command_timeout)
            await self.handler(chan)
        except AgiHangup:
            pass  # a probe that connected and left, or a hang-up before the flow began
        except AgiError as exc:
            self.calls_failed += 1
            log.warning("AGI connection from %s dropped: %s", writer.get_extra_info("peername"), exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.calls_failed += 1
            log.exception("call %s failed", chan.uniqueid if chan else "?")
        finally:
            self._calls.discard(task)
            if chan is not None:
                await chan.close()
            else:
                writer.close()
            log.debug("call ended after %.1f s", time.monotonic() - started)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting (new connections are refused); let calls in progress
        finish for ``grace`` seconds; then hand the rest back.

        A call still running after the grace is cancelled: its session ends
        ``error`` with reason ``shutdown`` (trail complete) and the voice face
        sets ``IVR_RESULT=error``, which sends the caller to the dialplan's
        fallback (a person) instead of cutting the call.
        """
        self.accepting = False
        if self._server is not None:
            # close() stops listening at once; wait_closed() (which on Python
            # 3.12+ also waits for every connection) only after the calls
            self._server.close()
        if self._calls:
            log.info("waiting up to %.0f s for %d calls to finish", grace, len(self._calls))
            done, pending = await asyncio.wait(set(self._calls), timeout=grace)
            if pending:
                log.warning("%d calls still running after %.0f s: handing them back to the dialplan", len(pending), grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=HANDBACK_WAIT)
        if self._server is not None:
            try:
                async with asyncio.timeout(HANDBACK_WAIT):
                    await self._server.wait_closed()
            except TimeoutError:
                pass
