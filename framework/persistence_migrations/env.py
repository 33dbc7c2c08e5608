"""Alembic environment of the flow persistence's migrations (see keramos.framework.migrations)."""

from keramos.framework.migrations import run_environment

run_environment()
