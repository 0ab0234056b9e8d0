"""Alembic migrations on SQLite and the real PostgreSQL: up, down, up again, and in sync with the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from maskgate.store import SchemaError, migrate
from maskgate.store.schema import Base

TABLES = {"gates", "events", "outbox", "model_versions", "training_runs", "users"}


def _tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_empty_to_head_to_base_to_head(engine):
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert _tables(engine) == TABLES
    migrate.downgrade(engine, "base")
    assert migrate.current_revision(engine) is None
    assert _tables(engine) == set()
    migrate.upgrade(engine)
    assert _tables(engine) == TABLES
    migrate.require_head(engine)


def test_autogenerate_finds_no_difference_from_the_models(migrated_engine):
    with migrated_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_events_indexes_exist(migrated_engine):
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(migrated_engine).get_indexes("events")}
    assert indexes["ix_events_gate_occurred"] == ["gate_id", "occurred_at", "id"]
    assert indexes["ix_events_occurred"] == ["occurred_at", "id"]


def test_empty_database_is_reported(engine):
    with pytest.raises(SchemaError, match="run `maskgate db upgrade`"):
        migrate.require_head(engine)


def test_unknown_revision_is_reported(migrated_engine):
    with migrated_engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    with pytest.raises(SchemaError, match="'f00dfeed', which this maskgate does not know"):
        migrate.require_head(migrated_engine)
    with pytest.raises(SchemaError, match="f00dfeed"):
        migrate.upgrade(migrated_engine)


def test_stamp_records_a_revision_without_running_it(engine):
    migrate.stamp(engine, migrate.head_revision())
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert _tables(engine) == set()


def test_0006_fills_in_the_card_digest_where_the_folder_still_holds_the_registered_model(engine, tmp_path):
    from maskgate.modelcard import card_sha256, load_card
    from maskgate.store import ModelRegistry
    from tests.conftest import copy_model

    migrate.upgrade(engine, "0005")
    same, changed = copy_model(tmp_path / "same", "m-same"), copy_model(tmp_path / "changed", "m-changed")
    registered = load_card(same).sha256
    rows = [
        ("m-same", same, registered),
        ("m-changed", changed, "ab" * 32),
        ("m-gone", tmp_path / "x", registered),
    ]
    with engine.begin() as connection:
        for version, path, sha256 in rows:
            connection.execute(
                text(
                    "INSERT INTO model_versions (version, sha256, path, status, metrics, created_at) "
                    "VALUES (:version, :sha256, :path, 'candidate', '{}', '2026-11-30 00:00:00')"
                ),
                {"version": version, "sha256": sha256, "path": str(path)},
            )
    migrate.upgrade(engine)
    registry = ModelRegistry(engine)
    assert registry.get("m-same").card_sha256 == card_sha256(same)
    # A folder that no longer holds the registered model file, or none at all, is not vouched for.
    assert registry.get("m-changed").card_sha256 is None and registry.get("m-gone").card_sha256 is None
