"""Model reload at the gate: the swap between frames, fetching (shared path and the dashboard's download
endpoint), verification and refusal, the watcher, and the announcement over the real broker.

Model folders are copies of the shipped `models/default` under other versions (a new card), so no
test here needs TensorFlow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from werkzeug.serving import make_server

from maskgate.config import Config, DashboardConfig, PathsConfig, PolicyConfig, RolloutConfig
from maskgate.core import LABELS, Box, Classification, Face, Frame, Label, utcnow
from maskgate.crop import CropSpec
from maskgate.gate import reload
from maskgate.gate.agent import Agent, StoreSink
from maskgate.gate.classifier import MaskClassifier
from maskgate.gate.comms.payloads import ActiveModel
from maskgate.gate.policy import DecisionPolicy
from maskgate.gate.reload import (
    MAX_FILE_BYTES,
    ArtifactError,
    Fetcher,
    FetchError,
    ModelWatcher,
    _copy_limited,
    folder_name,
)
from maskgate.gate.tracker import Tracker, TrackerConfig
from maskgate.modelcard import CARD_FILE, RUNTIME_FILE, ModelCard, card_sha256, load_card, write_card
from maskgate.store import EventStore, ModelRegistry, UserStore, make_engine, migrate
from tests.conftest import DEFAULT_MODEL, copy_model
from tests.gate.comms.brokers import SYSTEM_PORT, Spy, make_config, port_open, wait_until

TOKEN = "gate-download-token-0123456789"


def announcement(folder: Path, **overrides) -> ActiveModel:
    card = load_card(folder, verify=False)
    fields = {
        "version": card.version,
        "sha256": card.sha256,
        "card_sha256": card_sha256(folder),
        "location": str(folder),
    }
    return ActiveModel(**{**fields, **overrides})


# -- the swap between frames ----------------------------------------------------------------------------


class FakeDetector:
    """One large, sure face per frame."""

    def detect(self, image: np.ndarray) -> list[Face]:
        return [Face(Box(100, 100, 220, 220), 0.99)]


class FakeClassifier:
    """Says `label` with confidence 0.9; notes a crop that is not cut to its own spec."""

    def __init__(self, version: str, size: int, label: Label = Label.WITH_MASK):
        self.version, self.crop, self.label = version, CropSpec(size=size), label
        self.card = ModelCard(version, LABELS, self.crop, "fake", "2026-01-01T00:00:00+00:00")
        self.calls = 0
        self.foreign_crops = 0

    def classify(self, crops):
        self.calls += 1
        self.foreign_crops += sum(c.shape[:2] != (self.crop.size, self.crop.size) for c in crops)
        other = (1 - 0.9) / 2
        return [Classification({lb: 0.9 if lb is self.label else other for lb in Label}) for _ in crops]


def make_fake_agent(tmp_path, classifier) -> tuple[Agent, EventStore]:
    engine = make_engine(f"sqlite:///{tmp_path / 'events.sqlite'}")
    migrate.upgrade(engine)
    store = EventStore(engine)
    agent = Agent(
        detector=FakeDetector(),
        classifier=classifier,
        tracker=Tracker(TrackerConfig(min_hits=3, max_age_s=1.5)),
        policy=DecisionPolicy(PolicyConfig(), "gate-1"),
        sink=StoreSink(store),
    )
    return agent, store


def frames(count: int, start: int = 0) -> Iterator[Frame]:
    image = np.full((480, 640, 3), 120, np.uint8)
    for seq in range(start, start + count):
        yield Frame(image, seq, seq / 30)


def test_a_swap_applies_at_the_next_frame_and_the_pending_decision_is_not_lost(tmp_path):
    old, new = FakeClassifier("old", 32), FakeClassifier("new", 48)
    agent, _ = make_fake_agent(tmp_path, old)
    decided = []
    for frame in frames(3):
        decided += agent.process(frame)
    agent.swap_classifier(new)
    assert agent.classifier is old  # nothing changes mid-frame or before the next one
    for frame in frames(10, start=3):
        decided += agent.process(frame)
    assert agent.classifier is new and old.calls == 3
    # the person is still decided on, by the new model's own votes alone (5 of them: frames 3-7)
    assert len(decided) == 1 and decided[0].model_version == "new"
    assert decided[0].latency_ms == pytest.approx(7 / 30 * 1000, abs=40)


def test_a_rolled_back_model_cannot_open_the_door_with_the_votes_it_cast(tmp_path):
    faulty = FakeClassifier("faulty", 32, Label.WITH_MASK)
    good = FakeClassifier("good", 32, Label.WITHOUT_MASK)
    agent, _ = make_fake_agent(tmp_path, faulty)
    decided = [d for frame in frames(4) for d in agent.process(frame)]  # four "masked" votes: too few
    assert decided == []
    agent.swap_classifier(good)
    decided = [d for frame in frames(20, start=4) for d in agent.process(frame)]
    assert [(d.label, d.model_version) for d in decided] == [(Label.WITHOUT_MASK, "good")]


def test_swaps_from_another_thread_never_split_a_frame_or_drop_one(tmp_path):
    a, b = FakeClassifier("a", 32), FakeClassifier("b", 48)
    agent, _ = make_fake_agent(tmp_path, a)
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            for classifier in (b, a):
                agent.swap_classifier(classifier)

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        for frame in frames(300):
            agent.process(frame)
    finally:
        stop.set()
        thread.join()
    assert agent.stats.frames == 300 and a.calls + b.calls == 300  # one classification per frame
    assert a.foreign_crops == b.foreign_crops == 0  # every frame cropped and classified by one model
    assert a.calls and b.calls


# -- fetching and verifying --------------------------------------------------------------------------------


@pytest.fixture
def models(tmp_path) -> Path:
    return tmp_path / "models"


def test_a_model_on_a_shared_path_is_copied_verified_and_reused(tmp_path, models):
    folder = copy_model(models / "v2", "v2")
    fetcher = Fetcher(RolloutConfig(cache=tmp_path / "cache"))
    local = fetcher.fetch(announcement(folder))
    assert local == tmp_path / "cache" / folder_name("v2") and load_card(local).version == "v2"
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in folder.iterdir())
    (folder / RUNTIME_FILE).write_bytes(b"changed on the share later")  # the copy is what runs
    assert fetcher.fetch(announcement(local)) == local and load_card(local).version == "v2"
    assert not list((tmp_path / "cache").glob(".incoming-*"))


@pytest.mark.security
def test_a_wrong_sha256_is_refused(tmp_path, models):
    folder = copy_model(models / "v2", "v2")
    fetcher = Fetcher(RolloutConfig(cache=tmp_path / "cache"))
    with pytest.raises(ArtifactError, match="the announcement says 0000"):
        fetcher.fetch(announcement(folder, sha256="0" * 64))
    with pytest.raises(ArtifactError, match="version v2, the announcement says v3"):
        fetcher.fetch(announcement(folder, version="v3"))
    assert not (tmp_path / "cache" / folder_name("v2")).exists()
    assert not list((tmp_path / "cache").glob(".incoming-*"))


@pytest.mark.security
def test_the_announced_model_file_under_another_card_is_refused(tmp_path, models):
    """The same model.tflite, its card rewritten with the labels swapped (every file's sha256 in it
    still right): the model file's digest alone would let the door hear "with_mask" for a bare face."""
    folder = copy_model(models / "v2", "v2")
    message = announcement(folder)
    card = load_card(folder)
    write_card(folder, replace(card, labels=card.labels[::-1]))
    assert load_card(folder).sha256 == message.sha256  # the model file is the announced one
    with pytest.raises(ArtifactError, match=r"card\.json has sha256 .* the announcement says"):
        Fetcher(RolloutConfig(cache=tmp_path / "cache")).fetch(message)
    assert not (tmp_path / "cache" / folder_name("v2")).exists()


def test_a_wrong_announcement_does_not_cost_the_gate_its_good_copy(tmp_path, models):
    folder = copy_model(models / "v2", "v2")
    fetcher = Fetcher(RolloutConfig(cache=tmp_path / "cache"))
    local = fetcher.fetch(announcement(folder))
    with pytest.raises(ArtifactError):
        fetcher.fetch(announcement(folder, sha256="e" * 64))
    assert load_card(local).version == "v2"  # still there, still whole
    data = bytearray((local / RUNTIME_FILE).read_bytes())
    data[100] ^= 0xFF
    (local / RUNTIME_FILE).write_bytes(bytes(data))  # damaged on the gate's disk: fetched afresh
    assert fetcher.fetch(announcement(folder)) == local
    assert load_card(local).sha256 == load_card(folder).sha256


@pytest.mark.security
def test_a_file_over_the_size_limit_on_a_shared_path_is_refused(tmp_path, models):
    folder = copy_model(models / "v2", "v2")
    with (folder / "model.keras").open("r+b") as stream:
        stream.truncate(MAX_FILE_BYTES + 1)  # sparse: the test writes nothing like 512 MiB
    with pytest.raises(ArtifactError, match=rf"model\.keras is larger than {MAX_FILE_BYTES} bytes"):
        Fetcher(RolloutConfig(cache=tmp_path / "cache")).fetch(announcement(folder))
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.security
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_a_file_growing_past_the_limit_during_the_copy_is_stopped(tmp_path):
    # /proc/self/status says it holds 0 bytes, then reads as ~1 KiB: a file that grew after its size
    # was checked
    with pytest.raises(ArtifactError, match="grew past 100 bytes"):
        _copy_limited(Path("/proc/self/status"), tmp_path / "copy", 100)
    assert (tmp_path / "copy").stat().st_size <= 100


@pytest.mark.security
def test_a_corrupted_artifact_is_refused(tmp_path, models):
    folder = copy_model(models / "v2", "v2")
    message = announcement(folder)
    data = bytearray((folder / RUNTIME_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / RUNTIME_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        Fetcher(RolloutConfig(cache=tmp_path / "cache")).fetch(message)


@pytest.mark.security
def test_a_card_listing_a_path_or_a_missing_file_is_refused(tmp_path, models):
    folder = copy_model(models / "v2", "v2")
    message = announcement(folder)
    card = (folder / "card.json").read_text()
    (folder / "card.json").write_text(card.replace('"model.keras"', '"../../outside"'))
    with pytest.raises(ArtifactError, match="not a plain file name"):
        Fetcher(RolloutConfig(cache=tmp_path / "cache")).fetch(message)
    other = copy_model(models / "v3", "v3")
    (other / "model.keras").unlink()
    with pytest.raises(ArtifactError, match=r"model\.keras is missing"):
        Fetcher(RolloutConfig(cache=tmp_path / "cache")).fetch(announcement(other))
    with pytest.raises(ArtifactError, match="not a model folder"):
        Fetcher(RolloutConfig(cache=tmp_path / "cache")).fetch(announcement(other, location=str(tmp_path)))


# -- the dashboard's download endpoint ---------------------------------------------------------------------


@pytest.fixture
def dashboard(tmp_path, sqlite_url, models) -> Iterator[SimpleNamespace]:
    """The dashboard serving a registered model over HTTP on a free port."""
    from maskgate.dashboard.app import create_app, services
    from maskgate.training.retrain import register_folder

    engine = make_engine(sqlite_url)
    migrate.upgrade(engine)
    UserStore(engine).add("victor", "correct horse battery", "viewer")
    folder = copy_model(models / "v2", "v2")
    (folder / "secret.txt").write_text("not listed in the card")
    register_folder(ModelRegistry(engine), folder, load_card(folder), {})
    config = Config(
        database_url=sqlite_url,
        paths=PathsConfig(models=models, snapshots=tmp_path / "snapshots"),
        dashboard=DashboardConfig(secret_key="s" * 32, secure_cookies=False),
        rollout=RolloutConfig(token=TOKEN),
    )
    app = create_app(config, engine=engine)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    yield SimpleNamespace(app=app, url=url, folder=folder, engine=engine, config=config)
    server.shutdown()
    services(app).scheduler.shutdown()
    engine.dispose()


def files_url(base: str, version: str = "v2") -> str:
    return f"{base}/api/v1/models/{version}/files"


@pytest.mark.security
def test_download_endpoint_needs_the_token_or_a_session(dashboard):
    client = dashboard.app.test_client()
    url = "/api/v1/models/v2/files/model.tflite"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    assert client.get(url, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    ok = client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.data == (dashboard.folder / RUNTIME_FILE).read_bytes()
    assert ok.headers["Cache-Control"] == "no-store"
    # the token opens nothing else
    assert client.get("/api/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    with client.session_transaction() as session:  # a signed-in user may download too
        from maskgate.dashboard.app import SIGNED_IN_AT, services

        session["user"], session[SIGNED_IN_AT] = "victor", services(dashboard.app).clock().timestamp()
    assert client.get(url).status_code == 200


@pytest.mark.security
def test_a_short_configured_token_is_never_accepted(dashboard):
    """A dashboard configured with a short rollout.token refuses to start; and should one be set on a
    running app all the same, no request carrying it is let in."""
    from maskgate.dashboard.app import DashboardConfigError, create_app, services

    config = replace(dashboard.config, rollout=RolloutConfig(token="short"))
    with pytest.raises(DashboardConfigError, match=r"rollout\.token is too short"):
        create_app(config, engine=dashboard.engine)
    object.__setattr__(dashboard.config, "rollout", RolloutConfig(token="short"))
    assert services(dashboard.app).config.rollout.token == "short"  # what the endpoint checks against
    response = dashboard.app.test_client().get(
        "/api/v1/models/v2/files/card.json", headers={"Authorization": "Bearer short"}
    )
    assert response.status_code == 401


@pytest.mark.security
@pytest.mark.parametrize(
    "name",
    ["secret.txt", "..%2Fv2%2Fcard.json", "%2E%2E", ".hidden", "nothing.bin", "card.json%00", "a%2Fb"],
)
def test_download_endpoint_serves_only_what_the_card_lists(dashboard, name):
    client = dashboard.app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = client.get(f"/api/v1/models/v2/files/{name}", headers=headers)
    assert response.status_code in (400, 401, 404), name  # 401: no route matched, so no token applies
    assert b"not listed" not in response.data


@pytest.mark.security
def test_download_endpoint_refuses_links_out_of_the_folder_and_unknown_versions(dashboard, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"private")
    (dashboard.folder / "model.keras").unlink()
    (dashboard.folder / "model.keras").symlink_to(outside)  # listed in the card, but a link out
    client = dashboard.app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/v1/models/v2/files/model.keras", headers=headers).status_code == 404
    assert client.get("/api/v1/models/v9/files/card.json", headers=headers).status_code == 404


def test_a_gate_fetches_over_http_with_its_token(dashboard, tmp_path):
    message = announcement(dashboard.folder, location=files_url(dashboard.url))
    rollout = RolloutConfig(url=dashboard.url, token=TOKEN, cache=tmp_path / "cache", timeout_s=5)
    local = Fetcher(rollout).fetch(message)
    assert load_card(local).sha256 == message.sha256
    wrong = RolloutConfig(url=dashboard.url, token="not-the-token-at-all", cache=tmp_path / "c2", timeout_s=5)
    with pytest.raises(ArtifactError, match="401"):
        Fetcher(wrong).fetch(message)


@pytest.mark.security
def test_the_token_is_only_sent_to_the_configured_dashboard(dashboard, tmp_path):
    elsewhere = announcement(
        dashboard.folder, location=files_url(dashboard.url.replace("127.0.0.1", "localhost"))
    )
    rollout = RolloutConfig(url=dashboard.url, token=TOKEN, cache=tmp_path / "cache", timeout_s=5)
    with pytest.raises(ArtifactError, match=r"not on rollout\.url"):
        Fetcher(rollout).fetch(elsewhere)


@pytest.mark.security
def test_redirects_are_not_followed_so_the_token_stays_home(tmp_path, models):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_port}/elsewhere")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        folder = copy_model(models / "v2", "v2")
        rollout = RolloutConfig(url=base, token=TOKEN, cache=tmp_path / "cache", timeout_s=5)
        with pytest.raises(FetchError, match="302"):
            Fetcher(rollout).fetch(announcement(folder, location=f"{base}/api/v1/models/v2/files"))
        assert seen == [f"Bearer {TOKEN}"]  # asked once, at the dashboard; the redirect was not followed
    finally:
        server.shutdown()


def test_an_unreachable_dashboard_is_a_fetch_error(tmp_path, models):
    folder = copy_model(models / "v2", "v2")
    rollout = RolloutConfig(url="http://127.0.0.1:9", token=TOKEN, cache=tmp_path / "cache", timeout_s=2)
    with pytest.raises(FetchError):
        Fetcher(rollout).fetch(announcement(folder, location="http://127.0.0.1:9/api/v1/models/v2/files"))


# -- the watcher -------------------------------------------------------------------------------------------


class Target:
    """Stands in for the agent: what the watcher reads and what it hands over."""

    def __init__(self, classifier):
        self.classifier = classifier
        self.swapped: list = []

    def swap_classifier(self, classifier) -> None:
        self.swapped.append(classifier)
        self.classifier = classifier


def test_the_watcher_loads_new_models_refuses_bad_ones_and_keeps_the_old(tmp_path, models):
    target = Target(MaskClassifier(DEFAULT_MODEL))
    refused = []
    watcher = ModelWatcher(
        RolloutConfig(cache=tmp_path / "cache"), on_refused=refused.append, retry_delays_s=()
    )
    watcher.attach(target)
    watcher.start()
    try:
        good = copy_model(models / "v2", "v2")
        watcher.offer(announcement(good))
        assert watcher.wait_idle(30)
        assert target.classifier.version == "v2" and watcher.loaded == ["v2"]
        watcher.offer(announcement(good))  # a re-delivered retained message: nothing to do
        assert watcher.wait_idle(30) and len(target.swapped) == 1
        bad = copy_model(models / "v3", "v3")
        watcher.offer(announcement(bad, sha256="f" * 64))
        assert watcher.wait_idle(30)
        assert target.classifier.version == "v2" and len(target.swapped) == 1
        assert [r.version for r in refused] == ["v3"] and "sha256" in refused[0].reason
        assert watcher.refused == refused
        unloadable = copy_model(models / "v4", "v4")
        (unloadable / RUNTIME_FILE).write_bytes(b"not a flatbuffer")
        write_card(unloadable, load_card(unloadable, verify=False))  # a consistent card for a broken model
        watcher.offer(announcement(unloadable))
        assert watcher.wait_idle(30)
        assert target.classifier.version == "v2" and "LiteRT cannot load" in refused[-1].reason
        # rollback is the same path with an older version
        watcher.offer(announcement(DEFAULT_MODEL))
        assert watcher.wait_idle(30) and target.classifier.version == load_card(DEFAULT_MODEL).version
    finally:
        watcher.stop()


def test_the_newest_announcement_wins(tmp_path, models):
    target = Target(MaskClassifier(DEFAULT_MODEL))
    watcher = ModelWatcher(RolloutConfig(cache=tmp_path / "cache"))
    watcher.attach(target)
    for version in ("v2", "v3", "v4"):  # all arrive before the watcher runs
        watcher.offer(announcement(copy_model(models / version, version)))
    watcher.start()
    try:
        assert watcher.wait_idle(30)
        assert watcher.loaded == ["v4"] and target.classifier.version == "v4"
    finally:
        watcher.stop()


def test_a_rollback_replaces_a_swap_the_agent_has_not_applied_yet(tmp_path, models):
    running = copy_model(models / "w", "w")
    agent, _ = make_fake_agent(tmp_path, MaskClassifier(running))  # the real Agent: swaps wait for a frame
    watcher = ModelWatcher(RolloutConfig(cache=tmp_path / "cache"))
    watcher.attach(agent)
    watcher.start()
    try:
        watcher.offer(announcement(running))  # the retained announcement of the model it starts with
        assert watcher.wait_idle(30) and watcher.loaded == []
        watcher.offer(announcement(copy_model(models / "x", "x")))  # promoted by mistake ...
        assert watcher.wait_idle(30) and watcher.loaded == ["x"]
        assert agent.classifier.version == "w"  # handed over, not applied: no frame since
        watcher.offer(announcement(running))  # ... and rolled back before the gate's next frame
        assert watcher.wait_idle(30)
        for frame in frames(1):
            agent.process(frame)
        assert watcher.loaded == ["x", "w"] and agent.classifier.version == "w"
    finally:
        watcher.stop()


def test_a_download_in_progress_ends_when_the_watcher_stops(tmp_path, models):
    """A large model on a slow line must not hold up the agent's exit (systemd kills it after 15 s)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    folder = copy_model(models / "v2", "v2")
    card = (folder / CARD_FILE).read_bytes()
    streaming, done = threading.Event(), threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.endswith(f"/{CARD_FILE}"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(card)))
                self.end_headers()
                self.wfile.write(card)
                return
            self.send_response(200)  # the model file: 1 KiB every 50 ms, far from its end
            self.send_header("Content-Length", str(MAX_FILE_BYTES))
            self.end_headers()
            try:
                while not done.is_set():
                    self.wfile.write(b"\0" * 1024)
                    self.wfile.flush()
                    streaming.set()
                    time.sleep(0.05)
            except OSError:  # the gate hung up
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    refused = []
    rollout = RolloutConfig(url=base, token=TOKEN, cache=tmp_path / "cache", timeout_s=30)
    watcher = ModelWatcher(rollout, on_refused=refused.append, retry_delays_s=())
    watcher.attach(Target(MaskClassifier(DEFAULT_MODEL)))
    watcher.start()
    thread = watcher._thread
    try:
        watcher.offer(announcement(folder, location=f"{base}/api/v1/models/v2/files"))
        assert streaming.wait(30), "the download did not start"
        watcher.stop(timeout=20)
        assert thread is not None and not thread.is_alive(), "the watcher is still downloading"
        assert refused == [] and watcher.loaded == []  # given up, not refused: the model is not at fault
        assert not list((tmp_path / "cache").glob(".incoming-*"))  # nothing half-fetched left behind
    finally:
        done.set()
        server.shutdown()


def test_a_retained_announcement_refused_on_every_reconnect_is_kept_a_bounded_number_of_times(tmp_path):
    watcher = ModelWatcher(RolloutConfig(cache=tmp_path / "cache"), retry_delays_s=())
    watcher.attach(Target(MaskClassifier(DEFAULT_MODEL)))
    gone = announcement(DEFAULT_MODEL, version="v9", location=str(tmp_path / "gone"))
    kept = reload.MAX_REFUSALS
    for _ in range(kept + 20):  # the broker re-delivers it on every reconnection, for months
        watcher.handle(gone)
    assert len(watcher.refused) == kept
    assert all(r.version == "v9" and "not a model folder" in r.reason for r in watcher.refused)


# -- over the real broker ---------------------------------------------------------------------------

needs_broker = pytest.mark.skipif(not port_open(SYSTEM_PORT), reason="no MQTT broker on 127.0.0.1:1883")


@pytest.mark.integration
@needs_broker
def test_a_promotion_announced_over_the_broker_reaches_a_running_agent(tmp_path, models, prefix):
    from maskgate.gate.comms.link import DoorLink
    from maskgate.store import ModelStatus, ModelVersion
    from maskgate.training.retrain import AnnounceError, announce

    config = replace(make_config(prefix, "gate-r"), rollout=RolloutConfig(cache=tmp_path / "cache"))
    agent, store = make_fake_agent(tmp_path, MaskClassifier(DEFAULT_MODEL))
    watcher = ModelWatcher(config.rollout)
    watcher.attach(agent)
    watcher.start()
    link = DoorLink(config, store, on_active_model=watcher.offer)
    link.start()
    spy = Spy(SYSTEM_PORT, [f"{prefix}/#"])
    try:
        assert link.client.wait_connected(5)
        folder = copy_model(models / "v2", "v2")
        card = load_card(folder)
        model = ModelVersion(
            "v2", card.sha256, card_sha256(folder), str(folder), ModelStatus.ACTIVE, {}, utcnow(), None, None
        )
        message = announce(config, model)
        assert wait_until(lambda: watcher.loaded == ["v2"], timeout=30)
        for frame in frames(1):
            agent.process(frame)  # the swap takes effect at the next frame
        assert agent.classifier.version == "v2"
        retained = spy.wait_for(f"{prefix}/models/active")
        assert retained[-1].payload == message.encode()
        # a folder that does not match the registry is never announced: a card rewritten...
        write_card(folder, replace(card, labels=card.labels[::-1]))
        with pytest.raises(AnnounceError, match=r"card\.json is not the registered one"):
            announce(config, model)
        # ...or a model file altered
        (folder / RUNTIME_FILE).write_bytes(b"tampered")
        with pytest.raises(AnnounceError, match="does not match"):
            announce(config, model)
    finally:
        spy.close()
        link.stop()
        watcher.stop()
