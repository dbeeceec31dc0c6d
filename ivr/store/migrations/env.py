"""Alembic environment of the trail store.

Run it through :func:`ivr.store.migrations.migrate` (online, on a connection the
caller already opened) or, to print SQL, through alembic's offline mode with
``sqlalchemy.url`` set on the config built by
:func:`ivr.store.migrations.alembic_config`. No ``alembic.ini`` is needed.
"""

from __future__ import annotations

from alembic import context

from ivr.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "the trail store migrations run on a given connection: use ivr.store.migrate(engine)"
        )
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
