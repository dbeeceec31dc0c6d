"""Prometheus metrics: the named metric objects every feature reports into.

Import the object and update it where the thing happens; keep it cheap (one
``inc()`` or ``observe()``, never a query per call)::

    from ivr import metrics
    metrics.SMS.labels(status="sent").inc()
    metrics.SPEECH_LATENCY.observe(seconds)

Metrics live in their own :data:`REGISTRY` (not prometheus-client's global
one), so a test or a second app in one process never clashes with another
library's metrics. Values that already exist elsewhere (calls in progress, the
trail writer's counters, the AMI link state) are read when ``/metrics`` is
scraped, by :class:`AppCollector`, rather than copied on every change.

Names (all prefixed ``ivr_``) are listed in ``docs/operations.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = [
    "AGI_COMMAND_LATENCY",
    "CALLBACKS",
    "CALLBACK_RESULTS",
    "CALLS",
    "PROMPT_CACHE",
    "PROMPT_RENDER_LATENCY",
    "REGISTRY",
    "SESSIONS",
    "SMS",
    "SPEECH_LATENCY",
    "SPEECH_RESULTS",
    "AppCollector",
    "observe_call",
    "render",
]

# No ``*_created`` series: they double the output and no dashboard reads them.
disable_created_metrics()

#: Every metric of this module is registered here (``/metrics`` renders it).
REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets: AGI round trips are milliseconds on a LAN, while commands
# that wait for the caller (WAIT FOR DIGIT, GET DATA, Queue) take seconds.
_AGI_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ASR_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)

# ---------------------------------------------------------------- calls (voice)
CALLS = Counter(
    "ivr_calls", "Voice calls ended, by session outcome (completed, transfer, hangup, failed, error ...)",
    ["outcome"], registry=REGISTRY,
)
SESSIONS = Counter(
    "ivr_sessions", "Sessions ended on any face, by face and outcome", ["channel", "outcome"], registry=REGISTRY,
)
AGI_COMMAND_LATENCY = Histogram(
    "ivr_agi_command_seconds",
    "Seconds from writing an AGI command to its complete reply (includes time the command waits for the caller)",
    buckets=_AGI_BUCKETS, registry=REGISTRY,
)

# ------------------------------------------------------- speech (wired by asr/)
SPEECH_LATENCY = Histogram(
    "ivr_speech_recognition_seconds",
    "Seconds from the end of the caller's speech to the recogniser's final result",
    buckets=_ASR_BUCKETS, registry=REGISTRY,
)
SPEECH_RESULTS = Counter(
    "ivr_speech_results", "Speech recognitions by result: match, nomatch, noinput, low_confidence, error",
    ["result"], registry=REGISTRY,
)

# ------------------------------------------------------------ prompts (TTS cache)
PROMPT_CACHE = Counter(
    "ivr_prompt_cache", "Prompt audio look-ups by result: hit (already rendered) or miss (synthesised now)",
    ["result"], registry=REGISTRY,
)
PROMPT_RENDER_LATENCY = Histogram(
    "ivr_prompt_render_seconds", "Seconds to synthesise and convert one prompt on a cache miss",
    buckets=_ASR_BUCKETS, registry=REGISTRY,
)

# --------------------------------------------------------------------------- SMS
SMS = Counter(
    "ivr_sms", "SMS messages by status: sent, refused (by policy or gateway), failed", ["status"], registry=REGISTRY,
)

# --------------------------------------------------------------------- callbacks
CALLBACKS = Gauge(
    "ivr_callbacks", "Callback requests by state (pending, dialling, done, failed ...), set by the scheduler",
    ["state"], registry=REGISTRY,
)
CALLBACK_RESULTS = Counter(
    "ivr_callback_attempts", "Callback dial attempts by result (answered, noanswer, busy, failed ...)",
    ["result"], registry=REGISTRY,
)


def observe_call(outcome: str, turnarounds: Iterable[float] = ()) -> None:
    """Count one ended voice call and its AGI round trips (called once per call, not per command)."""
    CALLS.labels(outcome=outcome or "unknown").inc()
    for seconds in turnarounds:
        AGI_COMMAND_LATENCY.observe(seconds)


class AppCollector:
    """Figures read from a running :class:`ivr.server.App` at scrape time."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        return []  # dynamic: never checked for duplicates

    def collect(self) -> Iterator[Metric]:
        app = self.app
        agi = getattr(app, "agi", None)
        yield GaugeMetricFamily("ivr_calls_in_progress", "Voice calls in progress on this server",
                                value=agi.active_calls if agi is not None else 0)
        yield CounterMetricFamily("ivr_agi_connections", "FastAGI connections accepted",
                                  value=agi.calls_total if agi is not None else 0)
        yield CounterMetricFamily("ivr_agi_connections_failed", "FastAGI connections that ended in an error",
                                  value=agi.calls_failed if agi is not None else 0)
        yield GaugeMetricFamily("ivr_flows_loaded", "Valid flows loaded", value=len(app.registry.current))
        yield GaugeMetricFamily("ivr_flow_errors", "Flow files that failed to load", value=len(app.registry.errors))

        store = app.store
        yield CounterMetricFamily("ivr_trail_events_written", "Trail events committed to the database",
                                  value=store.events_written)
        yield CounterMetricFamily("ivr_trail_events_dropped", "Trail events the database refused for good",
                                  value=store.events_dropped)
        yield CounterMetricFamily("ivr_trail_batches_written", "Trail write transactions committed",
                                  value=store.batches_written)
        yield CounterMetricFamily("ivr_trail_write_errors", "Failed trail write attempts (retried)",
                                  value=store.write_errors)
        yield GaugeMetricFamily("ivr_trail_queue_size", "Trail operations waiting to be written",
                                value=store.queue_size)
        yield GaugeMetricFamily("ivr_trail_spill_size", "Trail operations waiting in the spill file",
                                value=store.spill_size)
        yield CounterMetricFamily("ivr_trail_events_spilled",
                                  "Trail operations spilled to disk because the memory buffer was full",
                                  value=store.events_spilled)
        yield CounterMetricFamily("ivr_trail_events_replayed", "Trail operations read back from the spill file",
                                  value=store.events_replayed)
        latency = store.last_write_latency
        yield GaugeMetricFamily("ivr_trail_write_seconds", "Seconds the last trail transaction took",
                                value=latency if latency is not None else float("nan"))
        delay = store.last_write_delay
        yield GaugeMetricFamily("ivr_trail_write_delay_seconds",
                                "Seconds from append to commit of the oldest operation of the last batch",
                                value=delay if delay is not None else float("nan"))

        ami = getattr(app, "ami", None)
        state = str(ami.state) if ami is not None else "not_configured"
        states = GaugeMetricFamily("ivr_ami_state", "AMI link state (1 for the current state)", labels=["state"])
        for name in ("connected", "connecting", "disconnected", "not_configured"):
            states.add_metric([name], 1.0 if name == state else 0.0)
        yield states
        yield GaugeMetricFamily("ivr_ami_up", "1 when the AMI link is connected", value=1.0 if state == "connected" else 0.0)


def render(app: Any | None = None) -> bytes:
    """The text exposition of :data:`REGISTRY` plus, given an app, its live figures."""
    out = generate_latest(REGISTRY)
    if app is not None:
        extra = CollectorRegistry(auto_describe=False)
        extra.register(AppCollector(app))
        out += generate_latest(extra)
    return out
