"""The synthesis worker: one process per job, so a stuck engine can be killed.

pyttsx3 keeps one engine per process and is known to hang on repeated
``runAndWait`` / ``save_to_file``; espeak-ng itself cannot be initialised
twice in a process. So every synthesis (and every conversion of a recording)
runs here, in a fresh process that does exactly one job and exits; the parent
(:class:`ivr.prompts.render.Renderer`) kills its process group when it
overruns ``prompt_synth_timeout``.

    python -m ivr.prompts.worker info
    python -m ivr.prompts.worker synth --voice cmn --rate 150 --out OUT.wav   < text (UTF-8)
    python -m ivr.prompts.worker convert --src recording.any --out OUT.wav

``synth`` runs pyttsx3's espeak driver (``save_to_file`` + ``runAndWait``,
which writes 22.05 kHz mono 16-bit PCM), then converts the result with pydub
to 8 kHz mono 16-bit. The text comes on standard input, never on the command
line. Exit status 0 on success; otherwise one line on standard error says why.
Everything pyttsx3 prints goes to standard error.

pyttsx3 (2.99) does every synthesis; nothing falls back to the espeak-ng
command line. Two of its flaws are worked around here (details at the code
and in docs/prompts.md): the rate it sets races its own start-up rate in
espeak-ng's asynchronous queue, so the rate also goes into the text as an
espeak-ng embedded command; and ``runAndWait`` returns before the file is
written, so we wait for its ``finished-utterance`` notification. With both,
the output equals ``espeak-ng -v <voice> -s <rate>`` byte for byte.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import unicodedata
from pathlib import Path

# Voice names people write that espeak-ng's SetVoiceByName does not know.
VOICE_ALIASES = {"zh": "cmn", "zh-cn": "cmn", "zh-cmn": "cmn", "mandarin": "cmn", "cantonese": "yue",
                 "zh-hk": "yue", "zh-yue": "yue"}


class WorkerError(Exception):
    pass


def _engine():
    try:
        import pyttsx3
    except Exception as exc:  # noqa: BLE001 - pyttsx3 raises plain Exceptions when libespeak-ng is missing
        raise WorkerError(f"pyttsx3 is not usable: {exc}") from None
    try:
        engine = pyttsx3.init("espeak")
    except Exception as exc:  # noqa: BLE001
        raise WorkerError(f"pyttsx3 cannot start its espeak-ng driver (is libespeak-ng installed?): {exc}") from None
    errors: list[BaseException] = []
    engine.connect("error", lambda exception=None, **_: errors.append(exception))
    return engine, errors


def _voices(engine) -> dict[str, str]:
    """Every name a voice answers to (identifier, its last part, its language) -> identifier."""
    names: dict[str, str] = {}
    for voice in engine.getProperty("voices"):
        vid = voice.id.lower()
        for name in [vid, vid.rsplit("/", 1)[-1], *[str(lang).lower() for lang in voice.languages or ()]]:
            names.setdefault(name, vid)
    return names


def resolve_voice(engine, wanted: str) -> str:
    names = _voices(engine)
    key = wanted.strip().lower()
    key = VOICE_ALIASES.get(key, key) if key not in names else key
    if key not in names:
        close = sorted(n for n in names if "/" not in n and (n.startswith(key[:2]) or key.startswith(n)))[:8]
        hint = f" (espeak-ng voices like it: {', '.join(close)})" if close else ""
        raise WorkerError(f"espeak-ng has no voice {wanted!r}{hint}")
    return names[key]


def engine_info() -> dict[str, object]:
    import ctypes
    import importlib.metadata

    engine, _ = _engine()
    from pyttsx3.drivers import _espeak

    path = ctypes.c_char_p()
    version = _espeak.Info(ctypes.addressof(path)) or b"?"
    data = (path.value or b"").decode("utf-8", "replace")
    phondata = Path(data, "phondata")
    return {
        "pyttsx3": importlib.metadata.version("pyttsx3"),
        "espeak_ng": version.decode("utf-8", "replace"),
        "data": data,
        # a distribution update of the voice data changes this even when the version does not
        "phondata_size": phondata.stat().st_size if phondata.is_file() else 0,
        "voices": sorted({v.rsplit("/", 1)[-1] for v in _voices(engine).values()}),
    }


def clean_text(text: str) -> str:
    """Text as espeak-ng should read it: no control characters (``\\x01`` starts an
    espeak-ng embedded command, and dynamic prompts carry look-up data)."""
    return "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text).strip()


def synthesise(text: str, voice: str, rate: int, out: Path, *, wait: float = 300.0) -> None:
    from ivr.prompts.audio import to_telephony

    text = clean_text(text)
    if not text:
        raise WorkerError("nothing to say: the text is empty")
    engine, errors = _engine()
    voice_id = resolve_voice(engine, voice)
    done = threading.Event()
    engine.connect("finished-utterance", lambda name=None, completed=True, **_: done.set())
    # SetVoiceByName takes the file name ("cmn"), not the identifier ("sit/cmn")
    engine.setProperty("voice", voice_id.rsplit("/", 1)[-1])
    engine.setProperty("rate", int(rate))
    with tempfile.TemporaryDirectory(prefix="ivr-tts-", dir=out.parent) as tmp:
        raw = Path(tmp, "raw.wav")
        # pyttsx3's espeak driver runs espeak-ng in its asynchronous mode: the
        # rate it sets on start-up (200) and ours race in espeak-ng's command
        # queue (about one run in ten speaks at 200), so the rate also goes into
        # the text as an espeak-ng embedded command, which applies in-stream.
        engine.save_to_file(f"\x01{int(rate)}S {text}", str(raw))
        engine.runAndWait()
        # ... and runAndWait returns as soon as the job is queued, before the
        # file is written: wait for the driver's own "finished" notification.
        if not done.wait(wait):
            raise WorkerError("pyttsx3 did not finish")
        if errors:
            raise WorkerError(f"pyttsx3 failed (voice {voice!r}, rate {rate}): {errors[0]}")
        if engine.getProperty("voice") != voice_id:
            raise WorkerError(f"pyttsx3 did not switch to voice {voice_id!r} (it used {engine.getProperty('voice')!r})")
        if not raw.is_file() or raw.stat().st_size <= 44:
            raise WorkerError("pyttsx3 produced no audio")
        to_telephony(raw, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivr.prompts.worker")
    sub = parser.add_subparsers(dest="job", required=True)
    sub.add_parser("info")
    s = sub.add_parser("synth")
    s.add_argument("--voice", required=True)
    s.add_argument("--rate", type=int, required=True)
    s.add_argument("--out", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--src", required=True)
    c.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from ivr.prompts.audio import AudioError, to_telephony

    real_stdout = sys.stdout
    try:
        # pyttsx3 prints ("Audio saved to ..."): keep standard output for our answer
        with contextlib.redirect_stdout(sys.stderr):
            if args.job == "info":
                answer = json.dumps(engine_info())
            elif args.job == "synth":
                text = sys.stdin.buffer.read().decode("utf-8")
                synthesise(text, args.voice, args.rate, Path(args.out))
                answer = "ok"
            else:
                to_telephony(args.src, args.out)
                answer = "ok"
    except (WorkerError, AudioError) as exc:
        print(str(exc), file=sys.stderr)
        return 3
    real_stdout.write(answer + "\n")
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # espeak-ng's atexit teardown asserts now and then (see pyttsx3's driver):
    # the job is done, leave without it.
    os._exit(code)
