"""Task records keep the steps of their run: each task's final state, in flow order.

``keramos cast --wait`` shows the tasks of a flow that ended between two of its looks, and
``keramos status`` what each task did, from this column (JSON, empty for earlier records).

Revision ID: state_store_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "state_store_0002"
down_revision = "state_store_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("keramos_tasks", sa.Column("steps", sa.JSON, nullable=True))


def downgrade() -> None:
    raise NotImplementedError("the state store is never downgraded: restore a backup instead")
