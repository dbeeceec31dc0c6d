"""Server extension: callback routes, the engine action, and the scheduler."""

from __future__ import annotations

import logging
from typing import Any

from ivr import server

from . import actions  # noqa: F401  (registers the engine action)
from .scheduler import CallbackScheduler
from .web import routes

log = logging.getLogger("callback")


async def callback_extension(app: Any) -> None:
    app.driver.app = app  # the engine action reaches the server's settings and scheduler
    app.web.add_routes(routes(app))
    config = app.config
    if app.ami is None or not config.callbacks:
        log.info("callback scheduler off (%s)", "no ami_host" if app.ami is None else "callbacks = false")
        return
    handoff = getattr(app, "handoff", None)
    scheduler = CallbackScheduler(
        app.store, app.ami, server_id=handoff.server_id if handoff else server_id(), handoff=handoff,
        poll_interval=config.callback_poll_interval, lease=config.callback_lease,
        concurrency=config.callback_concurrency, dial_timeout=config.callback_dial_timeout,
        caller_id=config.callback_caller_id)
    scheduler.start()
    app.callbacks = scheduler
    app.cleanups.append(scheduler.stop)


def server_id() -> str:
    import uuid

    return f"ivr-{uuid.uuid4().hex[:12]}"


if callback_extension not in server.EXTENSIONS:
    server.EXTENSIONS.append(callback_extension)
