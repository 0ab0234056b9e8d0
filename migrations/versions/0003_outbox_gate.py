"""outbox: each row belongs to a gate

Gates that share one database (an agent without a local spool, writing straight to the central
PostgreSQL) each run a door link over the same outbox table. Without a gate column every link
published every gate's pending messages: duplicate events and door commands, and acks waited
for on the wrong gate. The link now reads only its own gate's rows; the pending index leads
with the gate.

Rows of earlier versions take their event's gate; rows without an event (discovery, state)
are regenerated on the next connect and stay unowned.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 08:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("gate_id", sa.String(64), nullable=True))
        batch.drop_index("ix_outbox_pending")
        batch.create_index("ix_outbox_pending", ["gate_id", "sent_at", "id"])
    op.execute(
        "UPDATE outbox SET gate_id = (SELECT events.gate_id FROM events WHERE events.id = outbox.event_id) "
        "WHERE event_id IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_pending")
        batch.create_index("ix_outbox_pending", ["sent_at", "id"])
        batch.drop_column("gate_id")
