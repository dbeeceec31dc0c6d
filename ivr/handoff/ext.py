"""Server extension: the desk bus and the AMI watcher (``app.handoff``)."""

from __future__ import annotations

from typing import Any

from ivr import server

from .bus import make_bus
from .core import Handoff


async def handoff_extension(app: Any) -> None:
    handoff = Handoff(app, make_bus(app.config))
    await handoff.start()
    app.handoff = handoff
    app.cleanups.append(handoff.stop)


if handoff_extension not in server.EXTENSIONS:
    server.EXTENSIONS.append(handoff_extension)
