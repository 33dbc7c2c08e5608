"""The state store as the unversioned releases made it: one table per record type.

Creates the tables on an empty database; on a database an unversioned release made, adds the
tables and nullable columns it lacks (the columns those releases added at start-up) and leaves
every row as it is.

Revision ID: state_store_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from keramos.framework.migrations import complete_schema

revision = "state_store_0001"
down_revision = None
branch_labels = None
depends_on = None

_TYPES = {
    "text": sa.Text,
    "int": sa.BigInteger,
    "json": sa.JSON,
    "time": lambda: sa.DateTime(timezone=True),
}

#: Table: its key column, then (column, type) of every other column, all nullable.
_SCHEMA: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "keramos_tasks": ("request_id", [
        ("event", "text"), ("state", "text"), ("resource_id", "text"), ("message", "text"),
        ("error_type", "text"), ("result", "json"), ("created_at", "time"), ("updated_at", "time"),
        ("digest", "text"), ("owner", "text"), ("flow_uuid", "text"),
    ]),
    "keramos_amphorae": ("amphora_id", [
        ("status", "text"), ("image_id", "text"), ("compute_id", "text"), ("address", "text"),
        ("agent_port", "int"), ("port_id", "text"), ("cert_serial", "text"),
        ("config_version", "int"), ("error", "text"), ("activation_token_hash", "text"),
        ("activated_at", "time"), ("activation_requested_at", "time"), ("request_id", "text"),
        ("last_heartbeat_at", "time"), ("created_at", "time"), ("updated_at", "time"),
    ]),
    "keramos_certificates": ("serial", [
        ("kind", "text"), ("subject", "text"), ("not_after", "time"), ("amphora_id", "text"),
        ("cert_ref", "text"), ("status", "text"), ("revoked_at", "time"),
        ("previous_serial", "text"), ("created_at", "time"), ("updated_at", "time"),
    ]),
    "keramos_images": ("image_id", [
        ("status", "text"), ("checksum", "text"), ("size", "int"), ("message", "text"),
        ("signer", "text"), ("certificate_uuid", "text"), ("created_at", "time"),
        ("updated_at", "time"),
    ]),
    "keramos_loadbalancers": ("lb_id", [
        ("config_version", "int"), ("running_version", "int"), ("config", "text"),
        ("description", "json"), ("created_at", "time"), ("updated_at", "time"),
    ]),
}


def _metadata() -> sa.MetaData:
    metadata = sa.MetaData()
    for name, (key, columns) in _SCHEMA.items():
        sa.Table(
            name,
            metadata,
            sa.Column(key, sa.String(255), primary_key=True),
            *(sa.Column(column, _TYPES[kind](), nullable=True) for column, kind in columns),
        )
    return metadata


def upgrade() -> None:
    complete_schema(op.get_bind(), _metadata())


def downgrade() -> None:
    raise NotImplementedError("the state store is never downgraded: restore a backup instead")
