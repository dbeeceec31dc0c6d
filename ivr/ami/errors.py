"""Typed AMI errors, all under :class:`AmiError`.

Callers branch on the type, never on message text:

- :class:`AmiDisconnected`: the link is down (or went down while the action
  was in flight). The action may be retried once the client is connected
  again; ``sent`` says whether it reached Asterisk, which matters for actions
  that are not idempotent (an ``Originate`` that was sent may have placed a
  call even though its answer never arrived).
- :class:`AmiActionTimeout`: Asterisk did not answer within the timeout. The
  link is still up.
- :class:`AmiActionError`: Asterisk answered ``Response: Error`` (or another
  failure); ``message`` carries its ``Message:`` header.
- :class:`AmiProtocolError`: what the peer sent is not AMI (a block without
  ``Event``/``Response``, a repeated ``ActionID``, a message that never ends).
  The link skips such a block; a message that never ends closes the link.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from panoramisk.message import Message


class AmiError(Exception):
    """Base class of every error raised by :mod:`ivr.ami`."""


class AmiProtocolError(AmiError):
    """The peer sent something that is not a well-formed AMI message."""


class AmiDisconnected(AmiError):
    """The AMI link is down, or dropped while the action was in flight.

    ``sent`` is True when the action was written to the socket before the
    link went down: its effect on Asterisk is then unknown.
    """

    def __init__(self, message: str = "AMI link is down", *, action: str = "",
                 action_id: str = "", sent: bool = False) -> None:
        super().__init__(message)
        self.action = action
        self.action_id = action_id
        self.sent = sent


class AmiActionTimeout(AmiError):
    """Asterisk did not answer an action (or deliver its outcome) in time."""

    def __init__(self, message: str, *, action: str = "", action_id: str = "",
                 timeout: float = 0.0) -> None:
        super().__init__(message)
        self.action = action
        self.action_id = action_id
        self.timeout = timeout


class AmiActionError(AmiError):
    """Asterisk refused an action: ``Response: Error`` with a ``Message:``."""

    def __init__(self, message: str, *, action: str = "", action_id: str = "",
                 response: "Message | None" = None) -> None:
        super().__init__(f"{action or 'AMI action'} failed: {message}")
        self.message = message
        self.action = action
        self.action_id = action_id
        self.response = response
