"""How long the operations figures take: analytics over N sessions, the painted
graph, a /metrics scrape, and what one call adds to the metrics.

    PYTHONPATH=. python bench/ops.py [--sessions 3000 30000] [--pg postgresql://postgres@127.0.0.1:5432/test]

Prints a table. Trails are the generated demo-hotline sessions of the analytics
tests (tests/ops_data.py), copied as often as needed (about 25 events each).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import ops_data as D  # noqa: E402

from sqlalchemy import text  # noqa: E402

from ivr import metrics  # noqa: E402
from ivr.flow.loader import load_flow  # noqa: E402
from ivr.ops.analytics import compute  # noqa: E402
from ivr.ops.graph import GraphStats, render  # noqa: E402
from ivr.store import make_engine, migrate  # noqa: E402


def scaled(n: int) -> list[D.Gen]:
    base = [g for g in D.generate() if g.archetype not in ("other", "after", "before", "live")]
    out = []
    k = 0
    while len(out) < n:
        for g in base:
            if len(out) >= n:
                break
            out.append(dataclasses.replace(g, id=f"{g.id}-{k}"))
        k += 1
    return out


async def time_analytics(url: str, n: int, options: dict) -> tuple[float, int, int]:
    engine = make_engine(url, **options)
    await migrate(engine)
    gens = scaled(n)
    await D.write(engine, gens)
    async with engine.begin() as conn:  # planner statistics, as autovacuum / a long-running database has them
        await conn.execute(text("ANALYZE"))
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        report = await compute(engine, D.FLOW, D.SINCE, D.UNTIL, fcr_days=7)
        runs.append(time.perf_counter() - t)
    events = sum(len(D.rows(g)[1]) for g in gens)
    await engine.dispose()
    assert report.sessions == n, (report.sessions, n)
    return statistics.median(runs), n, events


async def pg_schema(url: str):
    import asyncpg
    from sqlalchemy.engine import make_url

    from ivr.store import normalize_url

    dsn = make_url(normalize_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)
    schema = f"ivr_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(dsn)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    return conn, schema


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, nargs="+", default=[3000, 30000])
    ap.add_argument("--pg", help="also on this PostgreSQL (a schema is created and dropped)")
    args = ap.parse_args()
    rows: list[tuple[str, str, str]] = []

    async def run() -> None:
        for n in args.sessions:
            with tempfile.TemporaryDirectory() as tmp:
                secs, count, events = await time_analytics(f"sqlite:///{tmp}/t.db", n, {})
            rows.append((f"analytics, SQLite, {count:,} sessions / {events:,} events", f"{secs * 1000:,.0f} ms",
                         "median of 3"))
            if args.pg:
                conn, schema = await pg_schema(args.pg)
                try:
                    opts = {"connect_args": {"server_settings": {"search_path": schema}}}
                    secs, count, events = await time_analytics(args.pg, n, opts)
                finally:
                    await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
                    await conn.close()
                rows.append((f"analytics, PostgreSQL, {count:,} sessions / {events:,} events",
                             f"{secs * 1000:,.0f} ms", "median of 3"))

    asyncio.run(run())

    flow = load_flow(ROOT / "flows" / "demo_hotline.yaml")
    stats = GraphStats(nodes={k: {"entered": 100, "hung_up": i} for i, k in enumerate(flow.nodes)},
                       edges={("main", "billing"): 50}, worst="main")
    t = time.perf_counter()
    for _ in range(10):
        render(flow, "svg", stats=stats)
    rows.append(("painted demo graph (dot -Tsvg)", f"{(time.perf_counter() - t) * 100:.0f} ms", "mean of 10"))

    turnarounds = [0.0004] * 40  # a demo call sends about 40 AGI commands
    t = time.perf_counter()
    for _ in range(10000):
        metrics.observe_call("completed", turnarounds)
    rows.append(("metrics for one ended call (40 AGI commands)", f"{(time.perf_counter() - t) / 10000 * 1e6:.1f} µs",
                 "mean of 10,000"))

    class FakeApp:  # what the collector reads
        agi = None
        ami = None

        class registry:  # noqa: N801
            current = {"demo_hotline": flow}
            errors: dict = {}

        class store:  # noqa: N801
            events_written = events_dropped = batches_written = write_errors = queue_size = 0
            last_write_latency = last_write_delay = 0.001

    t = time.perf_counter()
    for _ in range(1000):
        body = metrics.render(FakeApp)
    rows.append(("/metrics body", f"{(time.perf_counter() - t):.2f} ms", f"mean of 1,000; {len(body):,} bytes"))

    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'time':>10}  note")
    for what, value, note in rows:
        print(f"{what:<{width}}  {value:>10}  {note}")


if __name__ == "__main__":
    main()
