"""Amphora records carry their route: the ``keramos-proxy`` and the network an amphora the
controller cannot reach directly is reached through (both empty for earlier records, which are
reached directly).

Revision ID: state_store_0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "state_store_0003"
down_revision = "state_store_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("keramos_amphorae", sa.Column("proxy", sa.Text, nullable=True))
    op.add_column("keramos_amphorae", sa.Column("network_id", sa.Text, nullable=True))


def downgrade() -> None:
    raise NotImplementedError("the state store is never downgraded: restore a backup instead")
