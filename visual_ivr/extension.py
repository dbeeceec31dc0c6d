"""Plugs the visual IVR into ``ivr serve`` (listed in ``ivr.server.EXTENSION_MODULES``)."""

from __future__ import annotations

from ivr.server import EXTENSIONS, App
from visual_ivr.hub import VisualHub
from visual_ivr.web import add_routes


async def visual_extension(app: App) -> None:
    hub = VisualHub(app)
    app.driver.visual_hub = hub  # type: ignore[attr-defined]  (the visual_* actions find it here)
    assert app.web is not None
    add_routes(app.web, hub)
    app.cleanups.append(hub.close)


if visual_extension not in EXTENSIONS:
    EXTENSIONS.append(visual_extension)
