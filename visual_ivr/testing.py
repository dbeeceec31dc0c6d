"""Test helpers: a fake caller who stays on the line while on screen."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from ivr.testing.fake_asterisk import CALLER_HANGUP, SILENCE, Caller, Input, InputRequest, ScriptedCaller


class HoldingCaller(Caller):
    """Presses the scripted keys, then waits on the line like a person would:
    ``WAIT FOR DIGIT n`` takes up to n ms of real time. Meanwhile a test may
    :meth:`press` a key, :meth:`hang_up`, or set :attr:`moved` (an AMI
    Redirect took the channel away: the pending command returns -1, as in
    ``agi-redirect.json``)."""

    def __init__(self, keys: Iterable[str] = ()):
        self.script = ScriptedCaller(list(keys))
        self._extra: asyncio.Queue[Input] = asyncio.Queue()
        self.moved = asyncio.Event()
        self.waits: list[InputRequest] = []
        self._pending: Input | None = None

    def press(self, key: str) -> None:
        self._extra.put_nowait(key)

    def hang_up(self) -> None:
        self._extra.put_nowait(CALLER_HANGUP)

    async def peek(self, request: InputRequest) -> Input | None:
        if self._pending is not None:
            return self._pending
        if not self._extra.empty():
            self._pending = self._extra.get_nowait()
            return self._pending
        if self.script.remaining:
            return await self.script.peek(request)
        if self.moved.is_set():
            self._pending = CALLER_HANGUP
            return self._pending
        if request.command not in ("WAIT FOR DIGIT", "GET DATA") or not request.timeout_ms:
            return None  # prompts play to the end
        self.waits.append(request)
        get = asyncio.ensure_future(self._extra.get())
        moved = asyncio.ensure_future(self.moved.wait())
        done, _ = await asyncio.wait({get, moved}, timeout=request.timeout_ms / 1000,
                                     return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            moved.cancel()
            self._pending = get.result()
            return self._pending
        get.cancel()
        if moved in done:
            self._pending = CALLER_HANGUP
            return self._pending
        moved.cancel()
        self._pending = SILENCE
        return self._pending

    def take(self) -> None:
        if self._pending is not None:
            self._pending = None
            return
        self.script.take()


class _Seq:
    """What smpplib's PDU classes ask of a "client" when they are built."""

    def __init__(self) -> None:
        self.sequence = 0

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence


class FakeSmsc:
    """A small SMPP 3.4 server (an operator's SMS centre) on a real socket,
    built from smpplib's own PDU classes: answers ``bind_transmitter``
    (checking the password), ``submit_sm`` (recording each part), ``enquire_link``
    and ``unbind``. ``refuse_submit`` answers submits with an error status."""

    def __init__(self, system_id: str = "ivr", password: str = "secret"):
        import socket
        import threading

        self.system_id, self.password = system_id, password
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.binds: list[dict[str, str]] = []
        self.submits: list[dict[str, object]] = []
        self.unbinds = 0
        self.refuse_submit = False
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import threading

        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn, size: int) -> bytes:
        data = b""
        while len(data) < size:
            part = conn.recv(size - len(data))
            if not part:
                raise ConnectionError
            data += part
        return data

    def _session(self, conn) -> None:
        import struct

        import smpplib.consts as c
        import smpplib.smpp

        seq = _Seq()
        bound = False
        try:
            while True:
                head = self._read(conn, 4)
                (length,) = struct.unpack(">L", head)
                raw = head + self._read(conn, length - 4)
                pdu = smpplib.smpp.parse_pdu(raw, client=seq, allow_unknown_opt_params=True)
                (number,) = struct.unpack(">L", raw[12:16])  # the request's sequence_number

                def reply(name: str, **kw: object) -> None:
                    resp = smpplib.smpp.make_pdu(name, client=seq, **kw)
                    resp.sequence = number
                    conn.sendall(resp.generate())

                def text(value: object) -> str:
                    return value.decode() if isinstance(value, bytes) else str(value)

                if pdu.command == "bind_transmitter":
                    ok = text(pdu.password) == self.password and text(pdu.system_id) == self.system_id
                    self.binds.append({"system_id": text(pdu.system_id), "ok": str(ok)})
                    bound = ok
                    reply("bind_transmitter_resp", system_id="fakesmsc",
                          status=c.SMPP_ESME_ROK if ok else c.SMPP_ESME_RINVPASWD)
                elif pdu.command == "submit_sm":
                    if not bound or self.refuse_submit:
                        reply("submit_sm_resp", message_id="", status=c.SMPP_ESME_RSUBMITFAIL)
                        continue
                    self.submits.append({
                        "source": text(pdu.source_addr), "destination": text(pdu.destination_addr),
                        "data_coding": pdu.data_coding, "esm_class": pdu.esm_class, "payload": pdu.short_message,
                    })
                    reply("submit_sm_resp", message_id=f"m{len(self.submits)}")
                elif pdu.command == "enquire_link":
                    reply("enquire_link_resp")
                elif pdu.command == "unbind":
                    self.unbinds += 1
                    reply("unbind_resp")
                    return
        except (ConnectionError, OSError):
            return
        finally:
            conn.close()

    def texts(self) -> list[str]:
        """The submitted messages, long ones joined from their UDH parts (UCS-2 or GSM)."""
        out: list[str] = []
        parts: list[str] = []
        for sub in self.submits:
            payload = sub["payload"]
            assert isinstance(payload, bytes)
            udh = bool(int(sub["esm_class"]) & 0x40)  # type: ignore[arg-type]
            body = payload[payload[0] + 1:] if udh else payload
            text = body.decode("utf-16-be") if sub["data_coding"] == 8 else body.decode("latin-1")
            if udh:
                parts.append(text)
                total, index = payload[-len(body) - 2], payload[-len(body) - 1]
                if index == total:
                    out.append("".join(parts))
                    parts = []
            else:
                out.append(text)
        return out

    def close(self) -> None:
        import socket

        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.sock.close()
