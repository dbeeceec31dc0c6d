"""``ivr graph`` (draw a flow) and ``ivr report`` (the dashboard's figures as CSV)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from pathlib import Path

from ivr.cli import command

FORMATS = ("svg", "png", "pdf", "dot")


def _find_flow(spec: str, flows_dir: str):
    """A flow from a file path, or by id from ``flows_dir``."""
    from ivr.flow.loader import FlowLoadError, load_flow

    path = Path(spec)
    if not path.is_file():
        for ext in (".yaml", ".yml"):
            candidate = Path(flows_dir) / f"{spec}{ext}"
            if candidate.is_file():
                path = candidate
                break
        else:
            raise SystemExit(f"ivr: no flow file {spec!r} (nor {spec}.yaml in {flows_dir})")
    known = {p.stem for p in path.parent.glob("*.y*ml")}
    try:
        return load_flow(path, known_flows=lambda fid: fid in known)
    except FlowLoadError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(f"ivr: {path} is not a valid flow") from None


@command("graph", "draw a flow with Graphviz (svg, png, pdf or dot source)")
def _graph(p: argparse.ArgumentParser):
    p.add_argument("flow", help="flow file, or flow id in --flows")
    p.add_argument("-o", "--output", help="output file; the format follows its extension (default: FLOW.svg)")
    p.add_argument("-T", "--format", choices=FORMATS, help="output format (overrides the extension)")
    p.add_argument("--lang", help="language of labels (default: the flow's default language)")
    p.add_argument("--flows", default="flows", help="folder of flow files (for a flow id)")

    def run(args: argparse.Namespace) -> int:
        from ivr.ops.graph import render

        flow = _find_flow(args.flow, args.flows)
        output = Path(args.output or f"{flow.id}.svg")
        fmt = args.format or output.suffix.lstrip(".").lower() or "svg"
        if fmt == "gv":
            fmt = "dot"
        if fmt not in FORMATS:
            print(f"ivr graph: cannot write .{fmt} files (use {', '.join(FORMATS)})", file=sys.stderr)
            return 2
        if args.lang and args.lang not in flow.languages:
            print(f"ivr graph: the flow has no language {args.lang!r} (has {', '.join(flow.languages)})",
                  file=sys.stderr)
            return 2
        try:
            data = render(flow, fmt, lang=args.lang)
        except Exception as exc:  # graphviz.ExecutableNotFound, CalledProcessError
            print(f"ivr graph: Graphviz failed: {exc} (is the 'dot' program installed? apt install graphviz)",
                  file=sys.stderr)
            return 1
        output.write_bytes(data)
        print(f"{output}: {flow.id} {flow.version}, {len(flow.nodes)} nodes ({fmt})")
        return 0

    return run


def _day(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@command("report", "containment, drop-off and the other dashboard figures of a flow, as CSV")
def _report(p: argparse.ArgumentParser):
    from ivr.ops.analytics import CSV_TABLES

    p.add_argument("flow", help="flow id")
    p.add_argument("--from", dest="since", type=_day, help="start (YYYY-MM-DD or ISO time, UTC; default: 7 days ago)")
    p.add_argument("--to", dest="until", type=_day, help="end, excluded (default: now)")
    p.add_argument("--days", type=int, default=7, help="first-contact resolution window in days (default 7)")
    p.add_argument("--database-url", default="sqlite:///var/ivr.db", help="trail database")
    p.add_argument("--table", choices=list(CSV_TABLES), default="summary",
                   help="which table to print (default: summary)")
    p.add_argument("--csv-dir", help="write every table as <dir>/<table>.csv instead")

    def run(args: argparse.Namespace) -> int:
        return asyncio.run(_run_report(args))

    return run


async def _run_report(args: argparse.Namespace) -> int:
    from ivr.ops.analytics import CSV_TABLES, compute, to_csv
    from ivr.store import make_engine

    until = args.until or dt.datetime.now(dt.UTC)
    since = args.since or until - dt.timedelta(days=7)
    from sqlalchemy.exc import DBAPIError

    engine = make_engine(args.database_url)
    try:
        report = await compute(engine, args.flow, since, until, fcr_days=args.days)
    except ValueError as exc:
        print(f"ivr report: {exc}", file=sys.stderr)
        return 2
    except DBAPIError as exc:
        cause = getattr(exc, "orig", None) or exc
        print(f"ivr report: no trail in that database ({type(cause).__name__}: {str(cause).splitlines()[0]})",
              file=sys.stderr)
        return 2
    finally:
        await engine.dispose()
    if args.csv_dir:
        out = Path(args.csv_dir)
        out.mkdir(parents=True, exist_ok=True)
        for table in CSV_TABLES:
            (out / f"{table}.csv").write_text(to_csv(report, table), encoding="utf-8")
        print(f"{out}: {', '.join(f'{t}.csv' for t in CSV_TABLES)} ({report.sessions} sessions)")
    else:
        sys.stdout.write(to_csv(report, args.table))
    return 0
