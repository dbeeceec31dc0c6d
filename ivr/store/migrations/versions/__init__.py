"""Alembic revisions of the trail store (alembic skips this file)."""
