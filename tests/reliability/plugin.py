"""Pytest plugin behind ``docs/reliability.md``.

* ``@pytest.mark.reliability("row-id")`` puts a test in a row of
  :mod:`tests.reliability.rows`; an unknown id is a collection error.
* The ``rel`` fixture lets the test say what it tried: ``rel.tried(n)``,
  ``rel.lost(n, what)``, ``rel.note(text)``, ``rel.figure(name, value, unit)``.
* ``--row ID`` runs only the tests of one row (the report's "reproduce" command).
* ``--reliability-out=DIR`` writes the run's results to ``DIR/suite.json``
  (``DIR/soak.json`` with ``--soak``) and renders ``docs/reliability.md`` from
  every results file in ``DIR``.
* Every run prints the rows it touched at the end, so CI logs carry the figures.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .rows import OPEN, ROWS

ROOT = Path(__file__).resolve().parents[2]
MARKER = "reliability"


@dataclass
class RowRecord:
    tried: int = 0
    tried_reported: bool = False
    lost: int = 0
    lost_detail: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)


_records: dict[str, RowRecord] = defaultdict(RowRecord)


class Rel:
    """What one test tells the report about its row."""

    def __init__(self, row_id: str) -> None:
        self.row_id = row_id
        self._rec = _records[row_id]

    def tried(self, n: int = 1) -> None:
        self._rec.tried += n
        self._rec.tried_reported = True

    def lost(self, n: int, what: str = "") -> None:
        self._rec.lost += n
        if n and what:
            self._rec.lost_detail.append(what)

    def note(self, text: str) -> None:
        if text not in self._rec.notes:
            self._rec.notes.append(text)

    def figure(self, name: str, value: Any, unit: str = "") -> None:
        self._rec.figures[name] = {"value": value, "unit": unit.strip()}


def _row_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return None
    if len(marker.args) != 1 or marker.args[0] not in ROWS:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.reliability needs one known row id, got {marker.args!r}")
    return marker.args[0]


@pytest.fixture
def rel(request: pytest.FixtureRequest) -> Rel:
    row_id = _row_of(request.node)
    if row_id is None:
        raise pytest.UsageError(f"{request.node.nodeid}: the rel fixture needs @pytest.mark.reliability(row id)")
    return Rel(row_id)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reliability")
    group.addoption("--row", action="append", default=[], metavar="ID",
                    help="run only the tests of this reliability row (repeatable)")
    group.addoption("--reliability-out", metavar="DIR", default=None,
                    help="write this run's reliability results to DIR and render docs/reliability.md from DIR")
    group.addoption("--soak", action="store_true", default=False,
                    help="run the long soak (tests marked soak); results go to soak.json")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability(row): the test belongs to a row of docs/reliability.md")
    config.addinivalue_line("markers", "soak: the long soak, run only with --soak (./dev.sh soak)")
    config._reliability_started = time.time()  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = set(config.getoption("--row"))
    unknown = wanted - set(ROWS)
    if unknown:
        raise pytest.UsageError(f"unknown reliability row(s): {', '.join(sorted(unknown))}; see tests/reliability/rows.py")
    soak = config.getoption("--soak")
    keep, drop = [], []
    for item in items:
        row_id = _row_of(item)
        is_soak = item.get_closest_marker("soak") is not None
        if (wanted and row_id not in wanted) or (is_soak != soak and not (wanted and row_id in wanted)):
            drop.append(item)
            continue
        if row_id in OPEN:
            item.add_marker(pytest.mark.xfail(reason=f"open finding: {OPEN[row_id]}", strict=True))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    row_id = _row_of(item)
    if row_id is None:
        return
    failed_setup = report.when == "setup" and not report.passed
    if report.when == "call" or failed_setup:
        state = report.outcome
        if hasattr(report, "wasxfail"):
            state = "xfail" if report.skipped else "xpass"
        _records[row_id].tests.append({"nodeid": item.nodeid, "outcome": state,
                                       "seconds": round(report.duration, 2)})


def _machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    debian = ""
    try:
        debian = f", Debian {Path('/etc/debian_version').read_text().strip()}"
    except OSError:
        pass
    return f"{os.cpu_count()} × {cpu or platform.processor()}{mem}{debian}, Python {platform.python_version()}"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _args_without_out(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--reliability-out":
            skip = True
        elif not a.startswith("--reliability-out="):
            out.append(a)
    return out


def results(config: pytest.Config) -> dict[str, Any]:
    rows = {}
    for row_id, rec in sorted(_records.items()):
        if not rec.tests:
            continue
        rows[row_id] = {
            "tried": rec.tried if rec.tried_reported else len(rec.tests),
            "lost": rec.lost, "lost_detail": rec.lost_detail, "notes": rec.notes,
            "figures": rec.figures, "tests": rec.tests,
        }
    return {
        "run": {
            "kind": "soak" if config.getoption("--soak") else "suite",
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": round(time.time() - config._reliability_started),  # type: ignore[attr-defined]
            "machine": _machine(),
            "commit": _git_commit(),
            "args": _args_without_out(sys.argv[1:]),
        },
        "rows": rows,
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = session.config.getoption("--reliability-out")
    if not out or not _records:
        return
    from .report import render_dir

    data = results(session.config)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{data['run']['kind']}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    target = ROOT / "docs" / "reliability.md"
    target.write_text(render_dir(out_dir), encoding="utf-8")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _records:
        return
    from .report import row_status

    data = results(config)
    tr = terminalreporter
    tr.section("reliability rows")
    for row_id, r in data["rows"].items():
        status = row_status(row_id, r)
        figures = "; ".join(f"{k} {v['value']} {v['unit']}".rstrip() for k, v in r["figures"].items())
        tr.write_line(f"{status:>7}  {row_id:<36} tried {r['tried']:>6}  lost {r['lost']}"
                      + (f"  [{figures}]" if figures else ""))
    out = config.getoption("--reliability-out")
    if out:
        tr.write_line(f"results written to {out}; report rendered to docs/reliability.md")
