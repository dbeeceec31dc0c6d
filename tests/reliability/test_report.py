"""The report is generated, complete and honest."""

from __future__ import annotations

import re
from pathlib import Path

from .report import render, render_dir, row_status
from .rows import OPEN, ROWS, SOAK_ONLY

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "reliability"


def _marked_rows() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        for m in re.finditer(r"mark\.reliability\(\s*[\"']([^\"']+)[\"']", path.read_text(encoding="utf-8")):
            found.setdefault(m.group(1), []).append(path.name)
    return found


def test_every_row_has_tests_and_every_marker_a_row() -> None:
    marked = _marked_rows()
    assert set(ROWS) - set(marked) == set(), "rows without a test"
    assert set(marked) - set(ROWS) == set(), "markers naming no row"
    assert set(OPEN) <= set(ROWS) and SOAK_ONLY <= set(ROWS)


def test_committed_report_is_rendered_from_the_committed_results() -> None:
    """Nobody edits docs/reliability.md by hand: it is exactly what the results render to."""
    assert (RESULTS / "suite.json").exists(), "run ./dev.sh reliability"
    assert (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8") == render_dir(RESULTS)


def test_committed_results_cover_every_row() -> None:
    rendered = render_dir(RESULTS)
    assert "**not run**" not in rendered and "FAILED" not in rendered
    for row_id in ROWS:
        assert f"--row {row_id}`" in rendered or row_id in SOAK_ONLY


def _result(*outcomes: str, lost: int = 0) -> dict:
    return {"tried": 3, "lost": lost, "lost_detail": ["x"] if lost else [], "notes": [], "figures": {},
            "tests": [{"nodeid": f"t{i}", "outcome": o, "seconds": 0.1} for i, o in enumerate(outcomes)]}


def test_status_is_green_only_when_all_passed_and_nothing_lost() -> None:
    row_id = next(r for r in ROWS if r not in OPEN)
    assert row_status(row_id, _result("passed", "passed")) == "green"
    assert row_status(row_id, _result("passed", "failed")) == "FAILED"
    assert row_status(row_id, _result("passed", lost=1)) == "FAILED"
    assert row_status(row_id, _result("skipped")) == "FAILED"
    assert row_status(row_id, None) == "not run"


def test_render_shows_failures_losses_and_figures() -> None:
    first = next(iter(ROWS))
    run = {"finished": "now", "commit": "abc", "seconds": 1, "machine": "m"}
    res = _result("failed", lost=2)
    res["figures"] = {"p99": {"value": 1.5, "unit": "ms"}}
    text = render({"suite": {"run": run, "rows": {first: res}}})
    assert "**FAILED**" in text and "| first" not in text
    assert "| " + first + " | p99 | 1.50 ms |" in text
    assert "## Lost" in text and f"`{first}`: x" in text
    assert text.count("**not run**") == len(ROWS) - 1
