"""Promote and roll back from the dashboard (pages and API) on both databases, with real model folders
and the real announcer on the real broker: a version whose folder does not verify is refused with 409
before the registry changes, and an announcement the broker did not take is shown, not only logged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest
from flask import Flask

from maskgate.config import Config
from maskgate.dashboard.app import create_app, services
from maskgate.modelcard import load_card, write_card
from maskgate.store import ModelRegistry, ModelStatus, UserStore, make_engine, migrate
from maskgate.training.retrain import model_announcer, register_folder
from tests.conftest import copy_model
from tests.gate.comms.brokers import SYSTEM_PORT, Spy, free_port, port_open, wait_until

from .conftest import PASSWORD, dashboard_config, signed_in

needs_broker = pytest.mark.skipif(not port_open(SYSTEM_PORT), reason="no MQTT broker on 127.0.0.1:1883")


def announcing_app(config: Config, engine) -> Flask:
    """The dashboard as `maskgate dashboard` builds it: every promote and roll back is announced."""
    app = create_app(config, engine=engine, on_model_change=model_announcer(config))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def announcing(config, migrated_engine, users, prefix) -> Iterator[Flask]:
    app = announcing_app(replace(config, mqtt=replace(config.mqtt, topic_prefix=prefix)), migrated_engine)
    yield app
    services(app).scheduler.shutdown()


def register_models(registry: ModelRegistry, config: Config, *versions: str) -> None:
    for version in versions:
        folder = copy_model(config.paths.models / version, version)
        register_folder(registry, folder, load_card(folder), {})


def retained_version(prefix: str) -> str | None:
    """The version the retained `<prefix>/models/active` message names now, as a gate starting now sees it."""
    topic = f"{prefix}/models/active"
    spy = Spy(SYSTEM_PORT, [topic])
    try:
        messages = spy.wait_for(topic, timeout=2)
    finally:
        spy.close()
    return json.loads(messages[-1].payload)["version"] if messages else None


@pytest.mark.integration
@needs_broker
def test_a_version_whose_folder_does_not_verify_is_refused_before_anything_changes(announcing, prefix):
    registry, config = services(announcing).models, services(announcing).config
    admin = signed_in(announcing, "alice")
    register_models(registry, config, "good-a", "bad-b", "other-c")
    assert admin.post("/models/good-a/promote").status_code == 302
    assert admin.post("/models/bad-b/promote").status_code == 302
    assert registry.active().version == "bad-b" and retained_version(prefix) == "bad-b"

    # good-a's folder is damaged since (a disk error, someone copying over it): the gates would refuse it
    keras = config.paths.models / "good-a" / "model.keras"
    intact = keras.read_bytes()
    keras.write_bytes(b"bit rot")
    page = admin.post("/models/rollback")
    assert page.status_code == 409
    assert "good-a cannot be made active, the gates would refuse it" in page.text
    assert "model.keras does not match the sha256" in page.text
    api = admin.api_post("/api/v1/models/rollback")
    assert api.status_code == 409 and "model.keras does not match the sha256" in api.json["error"]
    # a promotion too; and a folder holding another version than the registry's
    assert admin.api_post("/api/v1/models/good-a/promote").status_code == 409
    card = config.paths.models / "other-c" / "card.json"
    card.write_text(card.read_text().replace('"other-c"', '"other-x"'))
    other = admin.api_post("/api/v1/models/other-c/promote")
    assert other.status_code == 409 and "its folder holds other-x" in other.json["error"]
    # a card rewritten with its labels swapped, every file's sha256 in it right, the model file untouched
    swapped = copy_model(config.paths.models / "swapped-d", "swapped-d")
    register_folder(registry, swapped, load_card(swapped), {})
    card = load_card(swapped)
    write_card(swapped, replace(card, labels=card.labels[::-1]))
    refused = admin.api_post("/api/v1/models/swapped-d/promote")
    assert refused.status_code == 409 and "card.json is not the registered one" in refused.json["error"]
    # a version registered before the registry kept the card's sha256 (migration 0006 left it NULL)
    old = copy_model(config.paths.models / "old-e", "old-e")
    registry.register("old-e", str(old), load_card(old).sha256)
    refused = admin.api_post("/api/v1/models/old-e/promote")
    assert refused.status_code == 409 and "register the folder again" in refused.json["error"]
    # nothing changed, nothing was announced
    assert registry.active().version == "bad-b" and retained_version(prefix) == "bad-b"
    assert registry.get("good-a").status is ModelStatus.RETIRED
    assert registry.get("other-c").status is ModelStatus.CANDIDATE

    keras.write_bytes(intact)  # repaired: the roll back goes through and reaches the broker
    assert admin.post("/models/rollback").status_code == 302
    assert "Rolled back: model good-a is active again." in admin.get("/models").text
    assert registry.active().version == "good-a"
    assert wait_until(lambda: retained_version(prefix) == "good-a", timeout=5)


@pytest.mark.faults
@pytest.mark.slow  # two announcements that wait for a broker (10 s each): on SQLite only
def test_an_announcement_the_broker_did_not_take_is_shown(sqlite_url, tmp_path, prefix):
    nobody = f"mqtt://127.0.0.1:{free_port()}"  # the broker is down
    config = dashboard_config(sqlite_url, tmp_path)
    config = replace(config, mqtt=replace(config.mqtt, url=nobody, topic_prefix=prefix))
    engine = make_engine(sqlite_url)
    migrate.upgrade(engine)
    UserStore(engine).add("alice", PASSWORD, "admin")
    app = announcing_app(config, engine)
    try:
        registry = services(app).models
        register_models(registry, config, "good-a", "good-b")
        admin = signed_in(app, "alice")
        assert admin.post("/models/good-a/promote").status_code == 302  # the change stands ...
        page = admin.get("/models").text
        assert "model good-a is active, but the gates were not told (model good-a not announced: " in page
        assert "promote it again to re-send" in page and "Model good-a is now active." not in page
        assert registry.active().version == "good-a"
        api = admin.api_post("/api/v1/models/good-b/promote")  # ... and the API says the gates were not told
        assert api.status_code == 502 and registry.active().version == "good-b"
        assert api.json["error"].startswith(
            "model good-b is active, but the gates were not told (model good-b"
        )
    finally:
        services(app).scheduler.shutdown()
        engine.dispose()
