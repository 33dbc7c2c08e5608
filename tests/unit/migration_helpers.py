"""The schema-upgrade checks, run on SQLite (unit) and PostgreSQL (functional)."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from taskflow.persistence import models

from keramos.framework import persistence
from keramos.framework.cli import main
from keramos.framework.migrations import SchemaOutdated
from keramos.framework.records import AmphoraRecord, TaskRecord
from keramos.plugins.state_store import sqlalchemy as state_sql

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SCHEMAS = (
    (state_sql.MIGRATIONS, state_sql.METADATA),
    (persistence.MIGRATIONS, persistence.METADATA),
)


def write_config(directory: Path, url: str) -> Path:
    """A configuration keeping the state store and the flow persistence in ``url``."""
    config = directory / "keramos.conf"
    config.write_text(
        f"[DEFAULT]\nstate_path = {directory}\n"
        f"[state_store]\nconnection = {url}\n[persistence]\nconnection = {url}\n"
    )
    return config


def make_previous_release_database(url: str) -> None:
    """The tables the release before versioning made with ``create_all``, and rows in them."""
    statements = (FIXTURES / "unversioned_schema.sql").read_text()
    if sa.make_url(url).get_backend_name() == "sqlite":
        statements = statements.replace("TIMESTAMP WITH TIME ZONE", "DATETIME")
    engine = sa.create_engine(url)
    with engine.begin() as db:
        for statement in statements.split(";"):
            body = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
            if body.strip():
                db.execute(sa.text(body))
        db.execute(
            sa.text(
                "INSERT INTO keramos_tasks (request_id, event, state, result, created_at) "
                "VALUES ('req-old', 'create_amphora', 'success', :result, :at)"
            ),
            {"result": '{"amphora": {"status": "READY"}}', "at": dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)},
        )
        db.execute(sa.text("INSERT INTO keramos_amphorae (amphora_id, status) VALUES ('amp-old', 'READY')"))
    engine.dispose()
    backend = persistence.LeanSQLBackend({"connection": url})
    book = models.LogBook("create_amphora:req-running", uuid="book-old")
    flow_detail = models.FlowDetail("create_amphora", uuid="flow-old")
    flow_detail.add(models.TaskDetail("boot_amphora", uuid="atom-old"))
    book.add(flow_detail)
    with contextlib.closing(backend.get_connection()) as connection:
        connection.save_logbook(book)
    backend.close()


def schema_differences(url: str) -> list:
    """What Alembic finds between each migrated schema and the tables the code uses now."""
    engine = sa.create_engine(url)
    differences = []
    try:
        with engine.connect() as db:
            for migrations, metadata in SCHEMAS:
                context = MigrationContext.configure(
                    db,
                    opts={
                        "compare_type": True,
                        "version_table": migrations.version_table,
                        "include_name": lambda name, kind, _parent, tables=metadata.tables: (
                            kind != "table" or name in tables
                        ),
                    },
                )
                differences += compare_metadata(context, metadata)
    finally:
        engine.dispose()
    return differences


def run_keramos(capsys, config: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--config-file", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def check_previous_release_is_refused_then_upgraded(capsys, tmp_path: Path, url: str) -> None:
    """A database of the previous release: refused by the store, the persistence and the worker
    with one line naming the command; ``keramos db upgrade`` adopts it with its rows intact."""
    make_previous_release_database(url)
    config = write_config(tmp_path, url)
    conf_args = ["--config-file", str(config)]

    from keramos.framework.config import make_conf
    from keramos.framework.service import main as worker_main

    conf = make_conf(conf_args, config_files=[])
    with pytest.raises(SchemaOutdated, match="unversioned .*run keramos db upgrade"):
        state_sql.SQLAlchemyStateStore(conf)
    with pytest.raises(SchemaOutdated, match="flow persistence .*run keramos db upgrade"):
        persistence.get_backend(url)
    assert worker_main(conf_args) == 2
    refusal = capsys.readouterr().err.strip().splitlines()
    assert len(refusal) == 1 and "keramos db upgrade" in refusal[0], refusal

    code, out, _ = run_keramos(capsys, config, "db", "current")
    assert code == 1 and out.count("unversioned") == 2
    code, out, _ = run_keramos(capsys, config, "db", "upgrade")
    assert code == 0, out
    assert f"unversioned -> {state_sql.MIGRATIONS.head}" in out
    assert f"unversioned -> {persistence.MIGRATIONS.head}" in out
    code, out, _ = run_keramos(capsys, config, "db", "current")
    assert code == 0 and out.count("(the newest)") == 2

    store = state_sql.SQLAlchemyStateStore(conf)
    try:
        task = store.get(TaskRecord, "req-old")
        assert (task.state, task.result) == ("success", {"amphora": {"status": "READY"}})
        assert task.created_at == dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
        assert store.get(AmphoraRecord, "amp-old").status == "READY"
        store.save(TaskRecord(request_id="req-new", event="delete_amphora"))
    finally:
        store.close()
    backend = persistence.get_backend(url)
    try:
        with contextlib.closing(backend.get_connection()) as connection:
            flow_detail = connection.get_flow_details("flow-old")
        assert [atom.name for atom in flow_detail] == ["boot_amphora"]
    finally:
        backend.close()
    assert schema_differences(url) == []


def check_empty_database_is_created_at_head(capsys, tmp_path: Path, url: str) -> None:
    """``keramos db upgrade`` on an empty database creates exactly the schema the code uses."""
    config = write_config(tmp_path, url)
    code, out, _ = run_keramos(capsys, config, "db", "upgrade")
    assert code == 0 and out.count("empty ->") == 2, out
    assert schema_differences(url) == []
    code, out, _ = run_keramos(capsys, config, "db", "upgrade")
    assert code == 0 and out.count("nothing to do") == 2
