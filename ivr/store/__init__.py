"""The trail store: every session and every turn of it, in SQLite or PostgreSQL.

``TrailStore`` writes without making calls wait (see :mod:`ivr.store.store`),
``build_summary`` and ``handoff`` turn a trail into what a person reads, and
``migrate`` brings a database to the current schema.
"""

from .engine import make_engine, normalize_url
from .migrations import migrate
from .store import TrailStore, default_spill_path
from .summary import build_summary, handoff, person_reason

__all__ = [
    "TrailStore",
    "build_summary",
    "default_spill_path",
    "handoff",
    "make_engine",
    "migrate",
    "normalize_url",
    "person_reason",
]
