"""The one place the visual IVR calls the callback API (branch issue-4).

``callback.api.request_callback(app, session_id, *, number, when, queue,
language, reason, channel) -> dict`` and ``cancel_callback(app, request_id, *,
by) -> bool`` are used when that module exists. Until it is merged, a stand-in
with the same signature records the request on the session's trail
(``callback_requested`` / ``callback_cancelled`` events) and keeps it in
memory, so the pages work end to end. Either way the result is
``{"id", "number" (masked), "when", "queue", "status"}`` and the request's
trail is the session's trail in the store; a refused request (the real API
raises ``CallbackError``, a ``ValueError``) is shown to the caller.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from ivr.engine import Event
from ivr.flow import expr

try:  # pragma: no cover - depends on the merge of the callback feature
    from callback.api import cancel_callback as _real_cancel  # type: ignore[import-not-found]
    from callback.api import request_callback as _real_request  # type: ignore[import-not-found]
except ImportError:
    _real_request = None
    _real_cancel = None

#: Requests taken by the stand-in, by id (inspected by tests and the desk API).
STAND_IN_REQUESTS: dict[str, dict[str, Any]] = {}


def using_stand_in() -> bool:
    return _real_request is None


async def request_callback(app: Any, session_id: str, *, number: str, when: "str | dt.datetime", queue: str,
                           language: str, reason: str | None, channel: str) -> dict[str, Any]:
    if _real_request is not None:  # pragma: no cover
        return await _real_request(app, session_id, number=number, when=when, queue=queue, language=language,
                                   reason=reason, channel=channel)
    slot = when if isinstance(when, str) else when.isoformat()
    request = {"id": uuid.uuid4().hex, "number": expr.mask(number), "when": slot, "queue": queue,
               "status": "pending"}
    app.store.append(session_id, [Event("callback_requested", None, {
        "id": request["id"], "slot": slot, "queue": queue, "number": expr.mask(number), "channel": channel,
        "reason": reason})], channel)
    STAND_IN_REQUESTS[request["id"]] = {**request, "session_id": session_id, "language": language,
                                        "reason": reason, "channel": channel}
    return request


async def cancel_callback(app: Any, request_id: str, *, by: str) -> bool:
    if _real_cancel is not None:  # pragma: no cover
        return await _real_cancel(app, request_id, by=by)
    request = STAND_IN_REQUESTS.get(request_id)
    if request is None or request["status"] != "pending":
        return False
    request["status"] = "cancelled"
    app.store.append(request["session_id"], [Event("callback_result", None, {
        "id": request_id, "outcome": "cancelled", "reason": f"cancelled by {by}"})], request["channel"])
    return True
