"""The flow persistence as the unversioned releases made it: logbooks, flow and atom details.

Each row is one JSON document under its uuid; flow details belong to a logbook and atom details
to a flow detail, deleted with it. Creates the tables on an empty database and the missing ones
on a database an unversioned release made, leaving every row as it is.

Revision ID: persistence_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from keramos.framework.migrations import complete_schema

revision = "persistence_0001"
down_revision = None
branch_labels = None
depends_on = None

#: Table, the table its rows belong to (or None), and its columns besides uuid, parent and data.
_CHAIN = (
    ("keramos_logbooks", None, ()),
    ("keramos_flowdetails", "keramos_logbooks", ()),
    ("keramos_atomdetails", "keramos_flowdetails", (("atom_type", 32),)),
)


def _metadata() -> sa.MetaData:
    metadata = sa.MetaData()
    for name, parent, strings in _CHAIN:
        columns = [sa.Column("uuid", sa.String(64), primary_key=True)]
        if parent is not None:
            reference = sa.ForeignKey(f"{parent}.uuid", ondelete="CASCADE")
            columns.append(sa.Column("parent_uuid", sa.String(64), reference, nullable=False, index=True))
        columns += [sa.Column(column, sa.String(size), nullable=False) for column, size in strings]
        columns.append(sa.Column("data", sa.JSON, nullable=False))
        sa.Table(name, metadata, *columns)
    return metadata


def upgrade() -> None:
    complete_schema(op.get_bind(), _metadata())


def downgrade() -> None:
    raise NotImplementedError("the flow persistence is never downgraded: restore a backup instead")
