"""Queue() as Asterisk runs it with ``asterisk_conf/queues.conf``, for the fake peers.

:class:`QueueApp` is an ``apps={"Queue": ...}`` handler for
:class:`~ivr.testing.fake_asterisk.FakeAsterisk`. Like Asterisk with the
shipped queues:

- while the caller waits, the periodic announcement offers key 1; a caller
  who presses a key that is an extension of the queue's ``context``
  (``ivr-queue-exit``) leaves the queue: ``EXEC Queue`` returns
  ``200 result=0``, no ``QUEUESTATUS`` is set, and ``CONTEXT``/``EXTEN`` now
  point at the exit extension (app_queue's ``valid_exit`` does an
  ``ast_goto_if_exists``);
- otherwise a member answers: the fake AMI server (if given) sends the events
  of ``ami-session.txt`` for this very channel (``QueueCallerJoin``,
  ``AgentCalled``, ``AgentConnect``, ``BridgeEnter`` x2), the agent talks for
  ``talk`` seconds (or until :attr:`hangup` is set) and hangs up
  (``AgentComplete``); with option ``c`` the call continues
  (``QUEUESTATUS=CONTINUE``, ``agi-queue_continue.json``), without it the
  caller is hung up too (``agi-queue.json``);
- ``outcome="timeout"``: nobody answers (``QUEUESTATUS=TIMEOUT``).

When the member answers, the caller's channel gets ``MEMBERINTERFACE`` and
``MEMBERNAME`` (as app_queue sets them), readable with AMI ``Getvar`` even if
the events were missed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from ivr import names
from ivr.testing.fake_asterisk import AppOutcome, FakeAsterisk, InputRequest, ScriptedCaller


class QueueApp:
    def __init__(self, ami: Any = None, *, member: str = "Local/agent1@ivr-agents", member_name: str = "Agent One",
                 outcome: str = "answer", talk: float = 0.2, exit_context: str = names.CONTEXT_QUEUE_EXIT,
                 exit_keys: str = names.QUEUE_EXIT_CALLBACK_KEY, hold: float = 0.05):
        self.ami = ami
        self.member = member
        self.member_name = member_name
        self.outcome = outcome
        self.talk = talk
        self.exit_context = exit_context
        self.exit_keys = exit_keys
        self.hold = hold
        self.fake: FakeAsterisk | None = None
        self.hangup = asyncio.Event()  # set to end the agent's talk early
        self.connected = asyncio.Event()
        self.connected_at: float | None = None  # perf_counter() when AgentConnect was sent
        self.connected_wall: float | None = None  # time.time() of the same moment
        self.calls: list[str] = []

    def bind(self, fake: FakeAsterisk) -> FakeAsterisk:
        self.fake = fake
        fake.apps["queue"] = self
        return fake

    def _env(self, key: str) -> str:
        assert self.fake is not None
        for line in self.fake.env_lines:
            name, _, value = line.partition(": ")
            if name == key:
                return value
        return ""

    async def __call__(self, args: str) -> AppOutcome:
        assert self.fake is not None, "QueueApp.bind(fake) first"
        parts = args.split(",")
        queue, options = parts[0], (parts[1] if len(parts) > 1 else "")
        self.calls.append(args)
        channel, uniqueid = self._env("agi_channel"), self._env("agi_uniqueid")
        caller = self.fake.caller
        if not (isinstance(caller, ScriptedCaller) and not caller.remaining):
            key = await caller.peek(InputRequest("EXEC Queue", names.SOUND_QUEUE_CALLBACK_OFFER, self.exit_keys))
            if isinstance(key, str) and key in self.exit_keys:
                caller.take()
                await self._emit("QueueCallerLeave", channel, uniqueid, Queue=queue, Count=0, Position=1)
                return AppOutcome(0, {"CONTEXT": self.exit_context, "EXTEN": key})
        if self.outcome == "timeout":
            await asyncio.sleep(self.hold)
            return AppOutcome(0, {"QUEUESTATUS": "TIMEOUT"})
        await self._emit("QueueCallerJoin", channel, uniqueid, Queue=queue, Position=1, Count=1)
        agent_channel = f"{self.member}-{uuid.uuid4().hex[:8]}" + (";1" if self.member.lower().startswith("local/")
                                                                     else "")
        await self._emit("AgentCalled", channel, uniqueid, Queue=queue, Interface=self.member,
                         MemberName=self.member_name, DestChannel=agent_channel)
        await asyncio.sleep(self.hold)
        self.connected_at = time.perf_counter()
        self.connected_wall = time.time()
        if self.ami is not None:  # app_queue sets these on the caller's channel when a member answers
            self.ami.add_channel(channel, MEMBERINTERFACE=self.member, MEMBERNAME=self.member_name)
        await self._emit("AgentConnect", channel, uniqueid, DestChannel=agent_channel,
                         DestUniqueid=f"{uniqueid}.a", Queue=queue, Interface=self.member,
                         MemberName=self.member_name, HoldTime=int(self.hold), RingTime=0, _privilege="agent,all")
        self.connected.set()
        bridge = str(uuid.uuid4())
        await self._emit("BridgeEnter", agent_channel, f"{uniqueid}.a", BridgeUniqueid=bridge, BridgeNumChannels=1)
        await self._emit("BridgeEnter", channel, uniqueid, BridgeUniqueid=bridge, BridgeNumChannels=2)
        try:
            await asyncio.wait_for(self.hangup.wait(), self.talk)
        except TimeoutError:
            pass
        await self._emit("AgentComplete", channel, uniqueid, Queue=queue, Interface=self.member,
                         MemberName=self.member_name, TalkTime=int(self.talk), Reason="agent",
                         _privilege="agent,all")
        if "c" in options:
            return AppOutcome(0, {"QUEUESTATUS": "CONTINUE", "ANSWEREDTIME": str(max(1, int(self.talk)))})
        return AppOutcome(-1, hangup=True, hangup_notice=False)

    async def _emit(self, name: str, channel: str, uniqueid: str, _privilege: str = "call,all", **fields: Any) -> None:
        if self.ami is None:
            return
        event: dict[str, Any] = {"Event": name, "Privilege": _privilege, "Channel": channel, "ChannelState": 6,
                                 "ChannelStateDesc": "Up", "CallerIDNum": self._env("agi_callerid"),
                                 "CallerIDName": "<unknown>", "Context": self._env("agi_context"),
                                 "Exten": self._env("agi_extension"), "Priority": 4, "Uniqueid": uniqueid,
                                 "Linkedid": uniqueid}
        event.update(fields)
        await self.ami.emit(event)
