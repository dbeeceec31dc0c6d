"""The engine actions of the visual IVR, registered with the call driver.

``visual_link`` texts the caller a link; ``visual_hold`` keeps the call on
hold music while the caller is on screen. Both are carried out by the
:class:`~visual_ivr.hub.VisualHub` the server attaches to its driver
(``driver.visual_hub``); without one (``ivr call`` in a terminal, a server
without the visual IVR) the link is reported as not sent and the flow goes on.
"""

from __future__ import annotations

from typing import Any

from ivr.session import CallDriver, Face, Handover, SessionInfo, register_action


def _hub(driver: CallDriver) -> Any:
    return getattr(driver, "visual_hub", None)


@register_action("visual_link")
async def visual_link(driver: CallDriver, face: Face, info: SessionInfo, params: dict[str, Any]) -> dict[str, Any]:
    hub = _hub(driver)
    if hub is None:
        return {"kind": "link", "status": "failed", "reason": "unavailable"}
    return await hub.send_link_from_call(driver, face, info, params)


@register_action("visual_hold")
async def visual_hold(driver: CallDriver, face: Face, info: SessionInfo,
                      params: dict[str, Any]) -> "dict[str, Any] | Handover":
    hub = _hub(driver)
    if hub is None:
        return {"kind": "hold", "status": "unsupported"}
    return await hub.hold(driver, face, info, params)
