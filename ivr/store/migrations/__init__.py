"""Schema migrations of the trail store, run from code.

``await migrate(engine)`` upgrades the database behind an async engine to the
newest revision, in one transaction; it is idempotent and safe when several
servers start at once (PostgreSQL: a transaction-level advisory lock serialises
them; SQLite: the write lock, taken with ``BEGIN IMMEDIATE``).

No ``alembic.ini`` is needed. To create a new revision while developing::

    from alembic import command
    from ivr.store.migrations import alembic_config
    command.revision(alembic_config("sqlite:///var/ivr.db"), "add something")
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ..engine import WRITE_OPTION

__all__ = ["SCRIPT_LOCATION", "alembic_config", "current_revisions", "head_revisions", "migrate"]

#: The directory holding ``env.py`` and ``versions/`` (inside the installed package).
SCRIPT_LOCATION = Path(__file__).resolve().parent

# pg_advisory_xact_lock key: any constant shared by every server of the deployment.
_PG_MIGRATION_LOCK = 0x1F7_57_0E  # "IVR store"


def alembic_config(url: str | None = None) -> Config:
    """An alembic ``Config`` built in code, pointing at the packaged scripts."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revisions() -> set[str]:
    """The newest revision of each migration branch shipped with this package.

    Features add their tables on branches of their own from the initial
    revision, so there may be several heads; all are applied.
    """
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "heads")


async def migrate(engine: AsyncEngine) -> None:
    """Upgrade the database of ``engine`` to the head revision (idempotent)."""
    # A writing transaction: on SQLite it holds the write lock from the start,
    # which serialises concurrent migrations just like the advisory lock on PG.
    async with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        await conn.run_sync(_upgrade)


async def current_revisions(engine: AsyncEngine) -> set[str]:
    """The revisions the database is at (empty before the first migration)."""
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync_conn: set(MigrationContext.configure(sync_conn).get_current_heads())
        )
