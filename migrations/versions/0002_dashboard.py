"""dashboard: partial indexes for open incidents and reviewed events

The overview counts and lists open incidents, and the events page filters on reviewed. Once
staff keep up with reviews almost every incident is reviewed, and the full indexes made both
walk every reviewed incident (300+ ms on a year of events); these indexes hold only the rows
those queries want.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in maskgate/store/schema.py (written there as each database renders `incident IS true`).
OPEN_INCIDENT_WHERE = {
    "postgresql": "incident IS true AND reviewed_at IS NULL",
    "sqlite": "incident IS 1 AND reviewed_at IS NULL",
}
REVIEWED_WHERE = "reviewed_at IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_events_open_incident_occurred",
        "events",
        ["incident", "occurred_at", "id"],
        postgresql_where=sa.text(OPEN_INCIDENT_WHERE["postgresql"]),
        sqlite_where=sa.text(OPEN_INCIDENT_WHERE["sqlite"]),
    )
    op.create_index(
        "ix_events_reviewed_occurred",
        "events",
        ["occurred_at", "id"],
        postgresql_where=sa.text(REVIEWED_WHERE),
        sqlite_where=sa.text(REVIEWED_WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_events_reviewed_occurred", table_name="events")
    op.drop_index("ix_events_open_incident_occurred", table_name="events")
