"""users: sessions_valid_after, so that signing out and a new password end every session

The dashboard's sessions are signed cookies: clearing one on sign-out does nothing to a copy
of it. A session whose sign-in is older than the user's `sessions_valid_after` is refused;
signing out and setting a password move it to now.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 08:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("sessions_valid_after", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("sessions_valid_after")
