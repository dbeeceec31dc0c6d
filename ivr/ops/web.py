"""The operations pages of ``ivr serve``: ``/ops`` (dashboard), its CSV and
JSON exports, the painted flow graph, and ``/metrics`` for Prometheus.

Everything under ``/ops`` needs a signed-in supervisor (:mod:`ivr.auth`);
``/metrics`` is open, like ``/healthz``, and meant for the internal network
(keep the HTTP port off the Internet, or put a proxy with its own rule in
front).

Query parameters of every ``/ops`` page: ``flow`` (flow id; default: the
first loaded flow), ``from`` and ``to`` (``YYYY-MM-DD``, both days included,
in ``ops_timezone``; or ISO date-times; default: the last 7 days), ``days``
(first-contact resolution window, default ``fcr_days``). A bad value is a
400 with a message saying which, never a traceback.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from aiohttp import web

from ivr import metrics
from ivr.auth import render, require_role
from ivr.ops import analytics
from ivr.ops.graph import GraphStats, inline_svg, render_async

log = logging.getLogger("ivr.ops")

MAX_RANGE_DAYS = 400
DEFAULT_RANGE_DAYS = 7
#: Seconds a computed report is reused for the same query (the page, then its
#: CSV exports, do not each scan the trail again).
REPORT_TTL = 20.0
_CACHE: web.AppKey[dict] = web.AppKey("ivr_ops_cache", dict)

_TEMPLATES = jinja2.Environment(
    loader=jinja2.ChoiceLoader([
        jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
        jinja2.FileSystemLoader(str(Path(__file__).parents[1] / "templates")),  # base.html of ivr.auth
    ]),
    autoescape=jinja2.select_autoescape(["html", "xml"], default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _pct(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.1f}%"


_TEMPLATES.filters["pct"] = _pct
_TEMPLATES.filters["num"] = lambda v: f"{v:,}" if isinstance(v, int) else v
_TEMPLATES.filters["secs"] = lambda v: f"{v:.1f} s" if v else "–"


class BadQuery(web.HTTPBadRequest):
    def __init__(self, message: str) -> None:
        super().__init__(text=message + "\n", content_type="text/plain")


def _zone(app: Any) -> ZoneInfo:
    name = getattr(app.config, "ops_timezone", None) or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _moment(text: str, zone: ZoneInfo, *, end: bool, name: str) -> dt.datetime:
    """``YYYY-MM-DD`` (a whole day; the end of the range is the next midnight) or an ISO date-time."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            moment = dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time(), zone)
        else:
            moment = dt.datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone)
    except ValueError:
        raise BadQuery(f"{name}: {text[:40]!r} is not a date (YYYY-MM-DD) or an ISO date-time") from None
    return moment.astimezone(dt.UTC)


class OpsQuery:
    """The validated query of an ``/ops`` request."""

    def __init__(self, request: web.Request, app: Any) -> None:
        q = request.query
        flows = sorted(app.registry.current)
        given = q.get("flow")
        if given is not None and (not given.strip() or len(given) > 128 or any(ord(ch) < 32 for ch in given)):
            raise BadQuery("flow: not a flow id")
        self.flow_id = (given or (flows[0] if flows else "")).strip()
        if not self.flow_id:
            raise BadQuery("flow: no flow is loaded; name one with ?flow=<id>")
        self.flow = app.registry.current.get(self.flow_id)
        zone = _zone(app)
        # "now", to the next whole minute: reloads within a minute ask the same question
        now = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
        self.until = _moment(q["to"], zone, end=True, name="to") if q.get("to") else now
        self.since = (_moment(q["from"], zone, end=False, name="from") if q.get("from")
                      else self.until - dt.timedelta(days=DEFAULT_RANGE_DAYS))
        if self.until <= self.since:
            raise BadQuery("to: the end of the range must come after its start")
        if self.until - self.since > dt.timedelta(days=MAX_RANGE_DAYS):
            raise BadQuery(f"the range is longer than {MAX_RANGE_DAYS} days")
        try:
            self.days = int(q.get("days") or app.config.fcr_days)
        except ValueError:
            raise BadQuery("days: not a whole number") from None
        if not 1 <= self.days <= 90:
            raise BadQuery("days: must be between 1 and 90")
        self.zone = zone
        self.flows = flows if self.flow_id in flows else [*flows, self.flow_id]

    def params(self) -> str:
        from urllib.parse import urlencode

        return urlencode({"flow": self.flow_id, "from": self.since.isoformat(), "to": self.until.isoformat(),
                          "days": self.days})

    def local(self, moment: dt.datetime) -> str:
        return moment.astimezone(self.zone).strftime("%Y-%m-%d %H:%M")

    def form_dates(self) -> tuple[str, str]:
        """The range as the date fields show it (the ``to`` day is included)."""
        end = self.until.astimezone(self.zone)
        last = end.date() - dt.timedelta(days=1) if end.time() == dt.time() else end.date()
        return self.since.astimezone(self.zone).date().isoformat(), last.isoformat()


async def build_report(app: Any, query: OpsQuery, cache: dict | None = None) -> analytics.Report:
    key = (query.flow_id, query.flow.version if query.flow else None, query.since, query.until, query.days)
    if cache is not None:
        hit = cache.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
    types: dict[str, str] = {}
    labels: dict[str, str] = {}
    if query.flow is not None:
        flow = query.flow
        for node_id, node in flow.nodes.items():
            types[node_id] = node.type
            if node.label:
                labels[node_id] = flow.text(node.label, flow.default_language)
    await app.store.flush()  # include what this server queued a moment ago
    report = await analytics.compute(app.store.engine, query.flow_id, query.since, query.until,
                                     fcr_days=query.days, node_types=types, node_labels=labels)
    if cache is not None:
        now = time.monotonic()
        for old in [k for k, (expires, _) in cache.items() if expires <= now]:
            del cache[old]
        cache[key] = (now + REPORT_TTL, report)
    return report


def graph_stats(report: analytics.Report) -> GraphStats:
    return GraphStats(
        nodes={name: {"entered": fig.entered, "hung_up": fig.hung_up} for name, fig in report.nodes.items()},
        edges=dict(report.edges),
        worst=report.worst_node,
    )


def _app(request: web.Request) -> Any:
    from ivr.server import APP_KEY

    return request.app[APP_KEY]


# --------------------------------------------------------------------------- handlers


@require_role("supervisor")
async def dashboard(request: web.Request) -> web.Response:
    app = _app(request)
    query = OpsQuery(request, app)
    report = await build_report(app, query, request.app[_CACHE])
    svg = None
    if query.flow is not None:
        try:
            svg = inline_svg(await render_async(query.flow, "svg", stats=graph_stats(report)))
        except Exception:  # noqa: BLE001 - dot missing or failing must not take the page down
            log.exception("could not draw flow %s", query.flow_id)
    nodes = sorted(report.nodes.values(), key=lambda n: (-n.hung_up, -n.entered, n.node))
    date_from, date_to = query.form_dates()
    context = {
        "q": query,
        "r": report,
        "s": report.summary(),
        "nodes": nodes,
        "svg": svg,
        "date_from": date_from,
        "date_to": date_to,
        "params": query.params(),
        "tables": list(analytics.CSV_TABLES),
        "confidence_labels": analytics.CONFIDENCE_LABELS,
        "max_hung": max((n.hung_up for n in nodes), default=0),
    }
    return render(request, "ops.html", context, env=_TEMPLATES)


@require_role("supervisor")
async def export_csv(request: web.Request) -> web.Response:
    table = request.match_info["table"]
    if table not in analytics.CSV_TABLES:
        raise web.HTTPNotFound(text=f"no table {table!r}; have: {', '.join(analytics.CSV_TABLES)}\n")
    app = _app(request)
    query = OpsQuery(request, app)
    report = await build_report(app, query, request.app[_CACHE])
    stamp = query.since.astimezone(query.zone).strftime("%Y%m%d")
    name = f"ivr-{query.flow_id}-{stamp}-{table}.csv"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    # a BOM so that spreadsheet programs read the Chinese labels as UTF-8
    body = "\ufeff" + analytics.to_csv(report, table)
    return web.Response(body=body.encode("utf-8"), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{safe}"',
                                 "Cache-Control": "no-store"})


@require_role("supervisor")
async def report_json(request: web.Request) -> web.Response:
    app = _app(request)
    query = OpsQuery(request, app)
    report = await build_report(app, query, request.app[_CACHE])
    return web.json_response(report.to_dict(), headers={"Cache-Control": "no-store"})


@require_role("supervisor")
async def graph_svg(request: web.Request) -> web.Response:
    app = _app(request)
    query = OpsQuery(request, app)
    if query.flow is None:
        raise web.HTTPNotFound(text=f"flow {query.flow_id!r} is not loaded\n")
    report = await build_report(app, query, request.app[_CACHE])
    svg = await render_async(query.flow, "svg", stats=graph_stats(report))
    return web.Response(body=svg, content_type="image/svg+xml", headers={"Cache-Control": "no-store"})


async def metrics_handler(request: web.Request) -> web.Response:
    body = metrics.render(_app(request))
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def add_routes(webapp: web.Application) -> None:
    webapp[_CACHE] = {}
    webapp.router.add_get("/ops", dashboard)
    webapp.router.add_get("/ops/report.json", report_json)
    webapp.router.add_get("/ops/graph.svg", graph_svg)
    webapp.router.add_get("/ops/export/{table}.csv", export_csv)
    webapp.router.add_get("/metrics", metrics_handler)


async def _extension(app: Any) -> None:
    add_routes(app.web)


def _register() -> None:
    from ivr import server

    if _extension not in server.EXTENSIONS:
        server.EXTENSIONS.append(_extension)


_register()
