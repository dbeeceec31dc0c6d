"""Typed results of the AMI helpers, parsed from messages.

Field names follow the events in ``tests/fixtures/asterisk/ami-*.txt``. Each
result keeps the message it came from in ``raw`` for anything not mapped.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from .wire import AmiMessage

UNKNOWN = "<unknown>"


def _text(message: AmiMessage, name: str) -> str:
    value = message.get(name, "")
    return value[-1] if isinstance(value, list) else str(value)


def _optional(message: AmiMessage, name: str) -> str | None:
    value = _text(message, name)
    return None if value in ("", UNKNOWN) else value


def _int(message: AmiMessage, name: str, default: int = 0) -> int:
    try:
        return int(_text(message, name))
    except ValueError:
        return default


def _float(message: AmiMessage, name: str, default: float = 0.0) -> float:
    try:
        return float(_text(message, name))
    except ValueError:
        return default


class OriginateReason(enum.IntEnum):
    """``Reason:`` of ``OriginateResponse`` (Asterisk's control frame codes)."""

    FAILED = 0        # no such extension, channel unavailable, ...
    HANGUP = 1        # hung up before answering
    RING_TIMEOUT = 3  # rang until the Originate timeout: no answer
    ANSWERED = 4
    BUSY = 5
    CONGESTION = 8


_OUTCOMES = {
    OriginateReason.ANSWERED: "answered",
    OriginateReason.BUSY: "busy",
    OriginateReason.RING_TIMEOUT: "noanswer",
    OriginateReason.CONGESTION: "congestion",
    OriginateReason.HANGUP: "hangup",
}


@dataclass(frozen=True)
class OriginateResult:
    """Outcome of an ``Originate``, from its ``OriginateResponse`` event.

    Seen in the captures: ``Success``/4 answered, ``Failure``/5 busy,
    ``Failure``/3 no answer before the timeout.
    """

    response: str               # "Success" or "Failure"
    reason: int                 # see OriginateReason
    channel: str
    uniqueid: str | None        # None when Asterisk says "<unknown>"
    action_id: str = ""
    raw: AmiMessage | None = field(default=None, compare=False, repr=False)

    @property
    def answered(self) -> bool:
        return self.response == "Success"

    @property
    def outcome(self) -> str:
        """``answered``, ``busy``, ``noanswer``, ``congestion``, ``hangup`` or ``failed``."""
        if self.answered:
            return "answered"
        try:
            return _OUTCOMES.get(OriginateReason(self.reason), "failed")
        except ValueError:
            return "failed"

    @classmethod
    def from_event(cls, event: AmiMessage) -> "OriginateResult":
        return cls(response=_text(event, "Response"), reason=_int(event, "Reason"),
                   channel=_text(event, "Channel"), uniqueid=_optional(event, "Uniqueid"),
                   action_id=_text(event, "ActionID"), raw=event)


@dataclass(frozen=True)
class QueueParams:
    """``QueueParams``: the queue's counters."""

    queue: str
    strategy: str
    max: int
    calls: int
    holdtime: int
    talktime: int
    completed: int
    abandoned: int
    service_level: int
    service_level_perf: float
    weight: int
    raw: AmiMessage | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_event(cls, event: AmiMessage) -> "QueueParams":
        return cls(queue=_text(event, "Queue"), strategy=_text(event, "Strategy"),
                   max=_int(event, "Max"), calls=_int(event, "Calls"),
                   holdtime=_int(event, "Holdtime"), talktime=_int(event, "TalkTime"),
                   completed=_int(event, "Completed"), abandoned=_int(event, "Abandoned"),
                   service_level=_int(event, "ServiceLevel"),
                   service_level_perf=_float(event, "ServicelevelPerf"),
                   weight=_int(event, "Weight"), raw=event)


@dataclass(frozen=True)
class QueueMember:
    """``QueueMember``: one agent interface of the queue."""

    queue: str
    name: str
    location: str               # the interface that is dialled
    state_interface: str
    membership: str             # static / dynamic / realtime
    penalty: int
    calls_taken: int
    last_call: int
    in_call: bool
    status: int                 # device state: 1 not in use, 2 in use, 6 ringing ...
    paused: bool
    paused_reason: str
    raw: AmiMessage | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_event(cls, event: AmiMessage) -> "QueueMember":
        return cls(queue=_text(event, "Queue"), name=_text(event, "Name"),
                   location=_text(event, "Location"),
                   state_interface=_text(event, "StateInterface"),
                   membership=_text(event, "Membership"), penalty=_int(event, "Penalty"),
                   calls_taken=_int(event, "CallsTaken"), last_call=_int(event, "LastCall"),
                   in_call=_int(event, "InCall") != 0, status=_int(event, "Status"),
                   paused=_int(event, "Paused") != 0,
                   paused_reason=_text(event, "PausedReason"), raw=event)


@dataclass(frozen=True)
class QueueEntry:
    """``QueueEntry``: one caller waiting in the queue."""

    queue: str
    position: int               # 1 is next
    channel: str
    uniqueid: str
    caller_id_num: str | None
    caller_id_name: str | None
    wait: int                   # seconds in the queue so far
    priority: int
    raw: AmiMessage | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_event(cls, event: AmiMessage) -> "QueueEntry":
        return cls(queue=_text(event, "Queue"), position=_int(event, "Position"),
                   channel=_text(event, "Channel"), uniqueid=_text(event, "Uniqueid"),
                   caller_id_num=_optional(event, "CallerIDNum"),
                   caller_id_name=_optional(event, "CallerIDName"),
                   wait=_int(event, "Wait"), priority=_int(event, "Priority"), raw=event)


@dataclass(frozen=True)
class QueueStatus:
    """Everything ``QueueStatus`` reported for one queue."""

    queue: str
    params: QueueParams | None
    members: list[QueueMember]
    entries: list[QueueEntry]   # ordered by position

    @classmethod
    def from_messages(cls, queue: str, messages: Iterable[AmiMessage]) -> "QueueStatus":
        """Collect the ``QueueParams``/``QueueMember``/``QueueEntry`` events of
        ``queue`` (a ``QueueStatus`` list, or any message stream)."""
        params: QueueParams | None = None
        members: list[QueueMember] = []
        entries: list[QueueEntry] = []
        for message in messages:
            if _text(message, "Queue") != queue:
                continue
            name = _text(message, "Event")
            if name == "QueueParams":
                params = QueueParams.from_event(message)
            elif name == "QueueMember":
                members.append(QueueMember.from_event(message))
            elif name == "QueueEntry":
                entries.append(QueueEntry.from_event(message))
        entries.sort(key=lambda entry: entry.position)
        return cls(queue=queue, params=params, members=members, entries=entries)


@dataclass(frozen=True)
class QueueSummary:
    """``QueueSummary`` for one queue."""

    queue: str
    logged_in: int
    available: int
    callers: int
    hold_time: int
    talk_time: int
    longest_hold_time: int
    raw: AmiMessage | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_event(cls, event: AmiMessage) -> "QueueSummary":
        return cls(queue=_text(event, "Queue"), logged_in=_int(event, "LoggedIn"),
                   available=_int(event, "Available"), callers=_int(event, "Callers"),
                   hold_time=_int(event, "HoldTime"), talk_time=_int(event, "TalkTime"),
                   longest_hold_time=_int(event, "LongestHoldTime"), raw=event)
