"""model_versions: card_sha256, the sha256 of the registered folder's card.json

The registry and the active-model announcement pinned only model.tflite. The card beside it says
what the model's outputs mean (its labels, in output order) and how to crop for it; an altered
card with the same model file swaps what the door hears. card.json lists the sha256 of every
other file, so its own sha256 pins the whole folder.

Versions registered before are filled in from their folder where its card still lists the
registered model.tflite; the others stay NULL, and are refused when promoted or rolled back to
(register the folder again under a new version).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 21:30:00
"""

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

versions = sa.table(
    "model_versions",
    sa.column("id", sa.Integer),
    sa.column("sha256", sa.String),
    sa.column("path", sa.String),
    sa.column("card_sha256", sa.String),
)


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("card_sha256", sa.String(64), nullable=True))
    connection = op.get_bind()
    for row in connection.execute(sa.select(versions.c.id, versions.c.sha256, versions.c.path)).all():
        digest = _card_digest(Path(row.path), row.sha256)
        if digest is not None:
            connection.execute(versions.update().where(versions.c.id == row.id).values(card_sha256=digest))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("card_sha256")


def _card_digest(folder: Path, model_sha256: str) -> str | None:
    """card.json's sha256 if the card still lists the registered model file, else None."""
    try:
        content = (folder / "card.json").read_bytes()
        listed = json.loads(content)["files"]["model.tflite"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return hashlib.sha256(content).hexdigest() if listed == model_sha256 else None
