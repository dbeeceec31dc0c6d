"""FastAGI protocol layer: reply/env parsing against real Asterisk 22 traffic, escaping."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.agi.protocol import (
    MAX_COMMAND_BYTES,
    AgiArgumentError,
    AgiError,
    AgiHangup,
    AgiInvalidCommand,
    AgiProtocolError,
    AgiResult,
    AgiUsageError,
    ReplyFramer,
    build_command,
    check_digits,
    check_name,
    encode_command,
    parse_env,
    parse_reply,
    quote,
    sanitize,
    token,
)
from ivr.testing.fake_asterisk import parse_args

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
CAPTURES = sorted(FIXTURES.glob("agi-*.json")) + sorted(FIXTURES.glob("process-*.json"))


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def captured_exchanges() -> list:
    params = []
    for path in CAPTURES:
        data = json.loads(path.read_text(encoding="utf-8"))
        for index, exchange in enumerate(data["exchanges"]):
            params.append(pytest.param(exchange["send"], exchange["recv"], id=f"{path.stem}-{index}"))
    return params


def test_fixtures_present() -> None:
    assert len(CAPTURES) == 11
    assert len(captured_exchanges()) > 50


# ---------------------------------------------------------------------------
# Every reply in every capture


@pytest.mark.parametrize("send, recv", captured_exchanges())
def test_every_captured_reply(send: str, recv: list[str]) -> None:
    notice = "HANGUP" in recv
    body = [line for line in recv if line != "HANGUP"]
    code = body[0][:3]
    if code == "200":
        result = parse_reply(recv)
        assert result.code == 200
        assert result.raw == body[-1]
        assert result.hangup_notice is notice
        assert body[-1] == f"200 result={result.result}" + body[-1][len(f"200 result={result.result}") :]
    elif code == "510":
        with pytest.raises(AgiInvalidCommand):
            parse_reply(recv)
    elif code == "511":
        with pytest.raises(AgiHangup) as info:
            parse_reply(recv)
        assert info.value.reason == ("HANGUP" if notice else "511")
    elif code == "520":
        with pytest.raises(AgiUsageError) as info:
            parse_reply(recv)
        assert info.value.usage == "\n".join(body[1:-1])
        assert "PLAYBACKSTATUS" in info.value.usage
    else:  # pragma: no cover - the captures hold no other codes
        pytest.fail(f"unexpected code in capture: {recv}")


@pytest.mark.parametrize("send, recv", captured_exchanges())
def test_framer_completes_on_the_last_line(send: str, recv: list[str]) -> None:
    framer = ReplyFramer()
    done = [framer.feed(line + "\n") for line in recv]
    assert done == [False] * (len(recv) - 1) + [True]
    assert framer.lines == recv
    assert framer.saw_hangup is ("HANGUP" in recv)


@pytest.mark.parametrize(
    "line, result, value, data, endpos",
    [
        ("200 result=50 endpos=9760", "50", 50, None, 9760),
        ("200 result= (timeout)", "", None, "timeout", None),
        ("200 result=12 (timeout)", "12", 12, "timeout", None),
        ("200 result=123", "123", 123, None, None),
        ('200 result=1 (menu>balance 中文 "quoted")', "1", 1, 'menu>balance 中文 "quoted"', None),
        ("200 result=1 (13800138000 )", "1", 1, "13800138000 ", None),
        ("200 result=1 (Local/s@ivr-in-00000005;2)", "1", 1, "Local/s@ivr-in-00000005;2", None),
        ("200 result=1 (a (nested) value) and more)", "1", 1, "a (nested) value) and more", None),
        ("200 result=1 (x) endpos=5) endpos=7", "1", 1, "x) endpos=5", 7),
        ("200 result=1 ()", "1", 1, "", None),
        ("200 result=0 (timeout) endpos=0", "0", 0, "timeout", 0),
        ("200 result=0", "0", 0, None, None),
        ("200 result=-1 endpos=0", "-1", -1, None, 0),
        ("200 result=-1 endpos=12000", "-1", -1, None, 12000),
        ("200 result=-1", "-1", -1, None, None),
        ("200 result=-2", "-2", -2, None, None),
        ("200 result=", "", None, None, None),
        ("200 result=0\r\n", "0", 0, None, None),
    ],
)
def test_reply_forms(line: str, result: str, value: int | None, data: str | None, endpos: int | None) -> None:
    parsed = parse_reply([line])
    assert (parsed.result, parsed.value, parsed.data, parsed.endpos) == (result, value, data, endpos)
    assert parsed.raw == line.rstrip("\r\n")


def test_reply_extra_pairs_and_notices() -> None:
    parsed = parse_reply(["100 result=0 Trying...", "200 result=1 (speech) endpos=800 score0=990"])
    assert parsed.data == "speech" and parsed.endpos == 800 and parsed.extra == {"score0": "990"}
    assert not parsed.hangup_notice
    parsed = parse_reply(["HANGUP", "200 result=1"])
    assert parsed.hangup_notice and parsed.value == 1


def test_value_is_ascii_integers_only() -> None:
    assert AgiResult(200, "١٢").value is None
    assert AgiResult(200, "1_0").value is None
    assert AgiResult(200, " 1").value is None
    assert AgiResult(200, "-7").value == -7


def test_typed_errors() -> None:
    with pytest.raises(AgiInvalidCommand):
        parse_reply(["510 Invalid or unknown command"])
    with pytest.raises(AgiHangup) as info:
        parse_reply(["511 Command Not Permitted on a dead channel or intercept routine"])
    assert info.value.reason == "511"
    with pytest.raises(AgiUsageError) as usage:
        parse_reply(["520 Invalid command syntax.  Proper usage not available."])
    assert usage.value.usage == ""


@pytest.mark.parametrize(
    "lines",
    [
        [],
        ["HANGUP"],
        ["100 Trying"],
        [""],
        ["garbage"],
        ["200"],
        ["200 foo=1"],
        ["200result=1"],
        ["200 result=1 (unterminated"],
        ["200 result=1 endpos=x"],
        ["200 result=1 endpos=\uff11"],  # a full-width digit
        ["999 what"],
        ["20 result=1"],
        ["510-partial"],
        ["520-Invalid command syntax.", "usage text"],
        ["520-a", "520 end", "200 result=0"],
        ["200 result=0", "200 result=1"],
        ["200 result=0\nHANGUP"],
        ["200 result=" + "1" * 70_000],
        [None],
        [b"200 result=0"],
        "200 result=0",
        b"200 result=0",
        None,
        42,
    ],
)
def test_bad_replies_raise_protocol_errors(lines: object) -> None:
    with pytest.raises(AgiProtocolError):
        parse_reply(lines)  # type: ignore[arg-type]


_REPLYISH = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\A[0-9]{3}[ -][^\n]{0,30}\Z"),
    st.builds(
        lambda r, d, e: f"200 result={r} ({d}) endpos={e}",
        st.text(max_size=5),
        st.text(max_size=10),
        st.text(max_size=5),
    ),
    st.builds(lambda r, t: f"200 result={r}{t}", st.text(max_size=5), st.text(max_size=15)),
    st.sampled_from(["HANGUP", "100 Trying", "520-x", "520 End of proper usage.", "511 x", "510 x", "200 result=1 (x"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_REPLYISH, max_size=6))
def test_parse_reply_raises_only_typed_errors(lines: list[str]) -> None:
    try:
        result = parse_reply(lines)
    except AgiError:
        return
    assert result.code == 200


@settings(max_examples=300, deadline=None)
@given(st.lists(_REPLYISH, max_size=8))
def test_framer_raises_only_typed_errors(lines: list[str]) -> None:
    framer = ReplyFramer()
    with contextlib.suppress(AgiError):
        for line in lines:
            if framer.feed(line):
                break


# ---------------------------------------------------------------------------
# Environment


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_env_of_every_capture(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    env = parse_env([*data["env"], "", "ignored: after the block"])
    assert list(env) == [line.split(":", 1)[0] for line in data["env"]]
    assert env["agi_accountcode"] == ""
    assert env["agi_version"] == "22.10.1"
    if path.stem.startswith("agi-"):
        scenario = path.stem.removeprefix("agi-")
        assert env["agi_network_script"] == f"{scenario}?lang=zh&x=1"
        assert env["agi_request"] == f"agi://127.0.0.1:4573/{scenario}?lang=zh&x=1"
    else:
        assert env["agi_arg_1"] == "arg1"


def test_env_values_kept_as_sent() -> None:
    env = parse_env(["agi_calleridname: Zhang San ", "agi_x:", "agi_y:z", "agi_request: agi://h/p?a=1&b=c: d\r\n"])
    assert env == {"agi_calleridname": "Zhang San ", "agi_x": "", "agi_y": "z", "agi_request": "agi://h/p?a=1&b=c: d"}


@pytest.mark.parametrize(
    "lines",
    [
        ["GET / HTTP/1.1"],
        ["Host: example.com"],
        ["agi_network"],
        [": value"],
        ["agi_bad key: x"],
        ["agi_x: " + "y" * 70_000],
        [f"agi_k{i}: v" for i in range(300)],
        [None],
        "agi_x: y",
    ],
)
def test_bad_env_raises_protocol_error(lines: object) -> None:
    with pytest.raises(AgiProtocolError):
        parse_env(lines)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), st.from_regex(r"\Aagi_[a-z]{1,5}:[^\n]{0,10}\Z")), max_size=6))
def test_parse_env_raises_only_typed_errors(lines: list[str]) -> None:
    with contextlib.suppress(AgiError):
        parse_env(lines)


# ---------------------------------------------------------------------------
# Escaping and command building


def test_set_variable_line_matches_capture() -> None:
    sends = [exchange["send"] for exchange in load("agi-menu.json")["exchanges"]]
    line = build_command("SET VARIABLE", "IVR_TRAIL", quote('menu>balance 中文 "quoted"'))
    assert line in sends
    assert line == 'SET VARIABLE IVR_TRAIL "menu>balance 中文 \\"quoted\\""'
    assert build_command("GET FULL VARIABLE", quote("${CALLERID(num)} ${CALLERID(name)}")) in sends
    assert build_command("VERBOSE", quote("hello from agi"), 1) in sends
    assert build_command("STREAM FILE", "demo-congrats", quote("0123456789*#")) in sends
    assert build_command("EXEC", "Queue", token("support,,,,20")) in [
        e["send"] for e in load("agi-queue.json")["exchanges"]
    ]


@pytest.mark.parametrize(
    "value, quoted",
    [
        ("", '""'),
        ("plain", '"plain"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ('\\"', '"\\\\\\""'),
        ("line\nbreak", '"line break"'),
        ("cr\r\nlf", '"cr  lf"'),
        ("nul\x00byte", '"nul byte"'),
        ("tab\there", '"tab here"'),
        ("del\x7f", '"del "'),
        ("nel\x85u2028\u2028", '"nel u2028 "'),
        ("bad\udcffbytes", '"bad\ufffdbytes"'),
        ("中文", '"中文"'),
    ],
)
def test_quote(value: str, quoted: str) -> None:
    assert quote(value) == quoted


def test_token() -> None:
    assert token("beep") == "beep"
    assert token("support,,,,20") == "support,,,,20"
    assert token("/usr/share/asterisk/sounds/en/beep") == "/usr/share/asterisk/sounds/en/beep"
    assert token("two words") == '"two words"'
    assert token("") == '""'
    assert token('a"b') == '"a\\"b"'
    assert token("a\nb") == '"a b"'


@pytest.mark.parametrize("name", ["IVR_TRAIL", "__IVR_SESSION", "_x", "A1", "QUEUESTATUS", "Queue"])
def test_check_name_accepts(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "1A", "A-B", "A B", "CALLERID(num)", "X\n", "ÄB", "a\x00", None, 1])
def test_check_name_rejects(name: object) -> None:
    with pytest.raises(ValueError):
        check_name(name)  # type: ignore[arg-type]
    with pytest.raises(AgiArgumentError):
        check_name(name)  # type: ignore[arg-type]


def test_check_digits() -> None:
    assert check_digits("0123456789*#") == "0123456789*#"
    assert check_digits("") == ""
    for bad in ("1 2", "x", '"', "1\n"):
        with pytest.raises(AgiArgumentError):
            check_digits(bad)
    with pytest.raises(AgiArgumentError):
        check_digits("", allow_empty=False)


@pytest.mark.parametrize(
    "verb, args",
    [
        ("SET VARIABLE", ("X", "two words")),
        ("SET VARIABLE", ("X", "line\nbreak")),
        ("SET VARIABLE", ("X", '"unterminated')),
        ("SET VARIABLE", ("X", 'a"b')),
        ("SET VARIABLE", ("X", "back\\")),
        ("SET VARIABLE", ("X", '"a" "b"')),
        ("SET VARIABLE", ("X", '"a\nb"')),
        ("SET VARIABLE", ("X", "")),
        ("SET VARIABLE", ("X", True)),
        ("SET VARIABLE", ("X", None)),
        ("SET VARIABLE", ("X", 1.5)),
        ("SET VARIABLE", ("X", b"bytes")),
        ("SET\nVARIABLE", ()),
        ("", ()),
        ("SET  VARIABLE", ()),
        ("STREAM FILE 1", ()),
        (None, ()),
    ],
)
def test_build_command_refuses_unsafe_arguments(verb: object, args: tuple) -> None:
    with pytest.raises(AgiArgumentError):
        build_command(verb, *args)  # type: ignore[arg-type]


def test_build_command_length_limit() -> None:
    head = 'SET VARIABLE X ""'
    fits = "x" * (MAX_COMMAND_BYTES - len(head))
    assert len(encode_command(build_command("SET VARIABLE", "X", quote(fits)))) == MAX_COMMAND_BYTES + 1
    with pytest.raises(AgiArgumentError):
        build_command("SET VARIABLE", "X", quote(fits + "x"))
    with pytest.raises(AgiArgumentError):  # multi-byte characters count as bytes
        build_command("SET VARIABLE", "X", quote("中" * 700))


def test_non_utf8_caller_data_encodes() -> None:
    caller_name = b"Zh\xe4ng\xff\xfe".decode("utf-8", "surrogateescape")
    data = encode_command(build_command("SET VARIABLE", "CALLER", quote(caller_name)))
    assert data.decode("utf-8") == 'SET VARIABLE CALLER "Zh\ufffdng\ufffd\ufffd"\n'
    assert sanitize(caller_name) == "Zh\ufffdng\ufffd\ufffd"


_DANGEROUS = st.lists(
    st.one_of(
        st.characters(),
        st.sampled_from(["\n", "\r", "\x00", '"', "\\", "\ud800", "\udfff", "\u2028", "\x85", "\t", " ", "HANGUP"]),
    ),
    max_size=60,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(_DANGEROUS)
def test_quoted_data_is_one_command_with_the_same_value(value: str) -> None:
    data = encode_command(build_command("SET VARIABLE", "X", quote(value)))
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert b"\r" not in data and b"\x00" not in data
    line = data[:-1].decode("utf-8")  # strict: always valid UTF-8
    assert parse_args(line) == ["SET", "VARIABLE", "X", sanitize(value)]


@settings(max_examples=300, deadline=None)
@given(_DANGEROUS)
def test_token_is_one_argument(value: str) -> None:
    data = encode_command(build_command("EXEC", "Playback", token(value)))
    assert data.count(b"\n") == 1
    assert parse_args(data[:-1].decode("utf-8")) == ["EXEC", "Playback", sanitize(value)]


def test_parse_args_matches_asterisk_examples() -> None:
    assert parse_args('STREAM FILE demo-congrats ""') == ["STREAM", "FILE", "demo-congrats", ""]
    assert parse_args('SET VARIABLE IVR_TRAIL "menu>balance 中文 \\"quoted\\""') == [
        "SET",
        "VARIABLE",
        "IVR_TRAIL",
        'menu>balance 中文 "quoted"',
    ]
    assert parse_args('RECORD FILE /tmp/agi-rec wav "#" 1500 0 s=1') == [
        "RECORD", "FILE", "/tmp/agi-rec", "wav", "#", "1500", "0", "s=1",
    ]  # fmt: skip
    assert parse_args("a\\ b  c") == ["a b", "c"]
