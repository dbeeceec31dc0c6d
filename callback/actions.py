"""The engine action ``callback`` (from the ``callback`` node), for every face."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ivr.session import register_action

from .api import CallbackError, request_callback


@dataclass
class _StoreOnly:
    """What request_callback needs when no server is around (``ivr call``)."""

    store: Any
    config: Any = None
    callbacks: Any = None


@register_action("callback")
async def callback_action(driver: Any, face: Any, info: Any, params: dict[str, Any]) -> dict[str, Any]:
    app = getattr(driver, "app", None) or _StoreOnly(driver.store)
    if app.store is None:
        return {"ok": False, "error": "callbacks need the trail database"}
    try:
        result = await request_callback(
            app, info.id, number=params["number"], when=params.get("when") or "asap", queue=params["queue"],
            language=params.get("language") or "", reason=params.get("reason"), channel=face.channel,
            mode=params.get("mode") or "customer_first", priority=int(params.get("priority") or 0),
            max_attempts=params.get("max_attempts"), retry_interval=params.get("retry_interval"),
            node=params.get("node"))
    except CallbackError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, **result}
