"""events: door_reason, the door controller's reason for its ack

Security staff reviewing a refused door need to know why it refused: the person was denied,
the command came too late, its signature was wrong... The ack has carried the reason since the
signed-commands work; now the event keeps it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("door_reason", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("door_reason")
