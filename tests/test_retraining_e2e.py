"""The whole loop, for real: a running gate on the synthetic walk-up, connected to the real broker,
records an incident; staff relabel it in the dashboard; the retraining job trains a candidate (a tiny
pool, one epoch, 32 px), compares it with the active model and promotes it; the announcement reaches
the gate, which downloads the model from the dashboard with its token, verifies it and swaps it in
between frames; the next event carries the new version and so does the gate's state.

Then the other paths: a promotion from the dashboard, a deliberately worse candidate that is
rejected with its reason recorded, a roll back, an announcement with a wrong sha256 and a corrupted
artifact, both refused by the gate while the model it runs keeps running.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from werkzeug.serving import make_server

from maskgate.config import (
    Config,
    DashboardConfig,
    MqttConfig,
    PathsConfig,
    PolicyConfig,
    RetrainConfig,
    RolloutConfig,
)
from maskgate.core import Label
from maskgate.dashboard.jobs import RetrainingJob
from maskgate.gate.comms.models import publish_active_model
from maskgate.gate.comms.payloads import ActiveModel
from maskgate.modelcard import RUNTIME_FILE, card_sha256, load_card
from maskgate.store import (
    EventFilter,
    EventStore,
    ModelRegistry,
    ModelStatus,
    RunStatus,
    RunTrigger,
    TrainingRuns,
    UserStore,
    make_engine,
    migrate,
)
from maskgate.training.retrain import register_folder
from tests.conftest import DEFAULT_MODEL, copy_model
from tests.dashboard.conftest import signed_in
from tests.gate.comms.brokers import SYSTEM_PORT, Spy, clear_retained, port_open, wait_until
from tests.training.conftest import DATASETS, make_faces_folder

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(not port_open(SYSTEM_PORT), reason="no MQTT broker on 127.0.0.1:1883"),
    pytest.mark.skipif(
        not (DATASETS / "folders/chandrikadeb7").is_dir(), reason=f"no datasets at {DATASETS}"
    ),
]

ROTATED = (Label.WITHOUT_MASK, Label.IMPROPER_MASK, Label.WITH_MASK)  # every right answer becomes wrong
TOKEN = "e2e-download-token-0123456789"


def frozen_faces(root: Path) -> Path:
    for folder in ("with_mask", "without_mask"):
        (root / folder).mkdir(parents=True)
        for file in sorted((DATASETS / "folders/chandrikadeb7" / folder).glob("*.jpg"))[40:48]:
            shutil.copy(file, root / folder / file.name)
    return root


class LoopingWalkUp:
    """The synthetic walk-up, over and over: a recording (every frame kept), slowed to `rate` frames/s."""

    live = False
    name = "synthetic walk-up (looping)"

    def __init__(self, frames: list[np.ndarray], fps: float, rate: float):
        self.frames, self.fps, self.rate = frames, fps, rate
        self.read_count = 0

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray | None:
        time.sleep(1 / self.rate)
        frame = self.frames[self.read_count % len(self.frames)]
        self.read_count += 1
        return frame

    def close(self) -> None:
        pass


@pytest.fixture
def world(tmp_path, sqlite_url) -> Iterator[SimpleNamespace]:
    """Config, database, datasets, the starting model and the dashboard serving on a free port."""
    from maskgate.dashboard.app import create_app, services
    from maskgate.training.retrain import model_announcer

    prefix = f"mge2e-{uuid.uuid4().hex[:8]}"
    datasets = tmp_path / "datasets"
    make_faces_folder(datasets / "base", per_class=8)
    frozen_faces(datasets / "frozen")
    copy_model(tmp_path / "starting", "start-bad", ROTATED)
    engine = make_engine(sqlite_url)
    migrate.upgrade(engine)
    UserStore(engine).add("alice", "correct horse battery", "admin")
    server = make_server("127.0.0.1", 0, None, threaded=True)  # the app comes once the URL is known
    url = f"http://127.0.0.1:{server.server_port}"
    config = Config(
        gate_id=f"e2e{uuid.uuid4().hex[:6]}",
        database_url=sqlite_url,
        mqtt=MqttConfig(url=f"mqtt://127.0.0.1:{SYSTEM_PORT}", topic_prefix=prefix, ack_timeout_s=1.0),
        # A one-epoch model is unsure: let every classification vote, so that it decides at all.
        policy=replace(PolicyConfig(), confidence_floor=0.0, allow_confidence_floor=0.0, majority=0.34),
        paths=PathsConfig(
            models=tmp_path / "models",
            active_model=tmp_path / "starting",
            snapshots=tmp_path / "snapshots",
            datasets=datasets,
        ),
        dashboard=DashboardConfig(secret_key="e2e-secret-key-0123456789", secure_cookies=False),
        retrain=RetrainConfig(
            base_data=("base",),
            eval_data=("frozen",),
            eval_manifest="",
            crop_size=32,
            networks=2,  # the candidate is an ensemble, as the shipped model is
            epochs=1,
            patience=1,
            batch_size=8,
            threads=2,
            work_dir=tmp_path / "work",
            cache=tmp_path / "cache",
            tolerance_macro_f1=0.05,
            tolerance_improper_recall=0.05,
            incident_holdout=0.0,  # the one relabelled incident is trained on
        ),
        rollout=RolloutConfig(url=url, token=TOKEN, cache=tmp_path / "gate-models", timeout_s=10),
    )
    app = create_app(config, engine=engine, on_model_change=model_announcer(config))
    server.app = app
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    spy = Spy(SYSTEM_PORT, [f"{prefix}/#"])
    yield SimpleNamespace(
        config=config,
        engine=engine,
        app=app,
        admin=signed_in(app, "alice"),
        spy=spy,
        store=EventStore(engine),
        registry=ModelRegistry(engine),
        tmp=tmp_path,
    )
    spy.close()
    server.shutdown()
    services(app).scheduler.shutdown()
    clear_retained(
        SYSTEM_PORT,
        {
            f"{prefix}/models/active",
            f"{prefix}/{config.gate_id}/state",
            f"{prefix}/{config.gate_id}/availability",
        },
    )
    engine.dispose()


@pytest.fixture
def gate(world) -> Iterator[SimpleNamespace]:
    """`maskgate agent` as run_agent wires it: detector, classifier, MQTT link, model watcher, heartbeat."""
    from maskgate.gate.build import make_agent
    from maskgate.gate.comms.link import DoorLink
    from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector
    from maskgate.gate.reload import ModelWatcher
    from maskgate.gate.sources import Capture
    from maskgate.gate.synthetic import SyntheticWalkUp

    config = world.config
    detector = LiteRtMtcnnDetector(config.detector)
    walk = SyntheticWalkUp(detector=detector)
    frames = []
    while (image := walk.read()) is not None:
        frames.append(image)
    reader = LoopingWalkUp(frames, walk.fps, rate=20)
    watcher = ModelWatcher(config.rollout)
    link = DoorLink(config, EventStore(world.engine), on_active_model=watcher.offer)
    agent = make_agent(config, link, detector)
    watcher.attach(agent)
    watcher.start()
    link.start()
    capture = Capture(reader, config.camera).start()

    def heartbeat(stats) -> None:
        link.publish_state(camera_ok=True, fps=stats.fps, model_version=agent.classifier.version)

    errors: list[BaseException] = []

    def run() -> None:
        try:
            agent.run(capture, heartbeat=heartbeat, heartbeat_s=1.0)
        except BaseException as exc:  # reported by the test rather than waited for
            errors.append(exc)
            raise

    thread = threading.Thread(target=run)
    thread.start()
    yield SimpleNamespace(
        agent=agent, watcher=watcher, link=link, capture=capture, reader=reader, thread=thread, errors=errors
    )
    agent.stop()
    thread.join(30)
    capture.stop()
    link.stop()
    watcher.stop()


def events_by(store: EventStore, version: str) -> list:
    return [e for e in store.list_events(EventFilter(), limit=1000).events if e.model_version == version]


def wait_for_version(gate, version: str, timeout: float = 90) -> None:
    assert wait_until(lambda: gate.agent.classifier.version == version, timeout=timeout), (
        f"the gate still runs {gate.agent.classifier.version}, not {version}; refused: {gate.watcher.refused}"
    )


def diagnose(gate) -> str:
    """Why the gate decided nothing: is it running, what does the new model say about a face?"""
    from maskgate.crop import crop_face

    agent, frames = gate.agent, gate.reader.frames
    faces = [(f, agent.detector.detect(f)) for f in frames[30:90:10]]
    said = [
        agent.classifier.classify([crop_face(f, face.box, agent.classifier.crop)])[0].probabilities
        for f, found in faces
        for face in found[:1]
    ]
    return (
        f"no event from {agent.classifier.version}: running {gate.thread.is_alive()}, errors {gate.errors}, "
        f"frames {agent.stats.frames}, decisions {len(agent.stats.decisions)}; the model says {said}"
    )


def run_job(world, config: Config | None = None, **retrainer) -> object:
    from maskgate.training.retrain import Retrainer

    job = RetrainingJob(
        TrainingRuns(world.engine), Retrainer(config or world.config, world.engine, **retrainer)
    )
    run = job.start(RunTrigger.MANUAL)
    assert run is not None
    return job.execute(run.run_id)


def retained_active(world) -> dict:
    messages = [m for m in world.spy.on(f"{world.config.mqtt.topic_prefix}/models/active") if m.payload]
    return json.loads(messages[-1].payload)


def rotated_copy_of(source: Path):
    """A train_fn that makes a deliberately worse candidate: `source` with its labels rotated."""

    def train(specs, out, train_config, cache, datasets):
        copy_model(out, f"{out.name}-worse", ROTATED)
        card = load_card(out)
        return SimpleNamespace(folder=out, card=card, seconds=0.0)

    return train


def test_relabelled_incident_to_retrained_model_running_at_the_gate(world, gate):
    store, registry, config = world.store, world.registry, world.config

    # 1. The gate starts on a bad model; its first incident (with a snapshot) is relabelled by staff.
    assert gate.agent.classifier.version == "start-bad"
    assert wait_until(lambda: any(e.snapshot_path for e in events_by(store, "start-bad")), timeout=120)
    incident = next(e for e in events_by(store, "start-bad") if e.snapshot_path)
    true_label = Label.WITH_MASK if incident.label is not Label.WITH_MASK else Label.WITHOUT_MASK
    response = world.admin.api_post(
        f"/api/v1/events/{incident.event_id}/review",
        json={"action": "relabel", "true_label": true_label.value},
    )
    assert response.status_code == 200, response.json

    # 2. The job: pool (base + the relabelled incident), a one-epoch candidate, champion vs challenger.
    started = time.monotonic()
    finished = run_job(world)
    job_seconds = time.monotonic() - started
    assert finished.status is RunStatus.SUCCEEDED, (finished.reason, finished.log[-3000:])
    candidate = finished.candidate_version
    assert finished.metrics["pool"]["incidents"]["used"] == 1
    assert finished.metrics["champion"] == "start-bad" and finished.metrics["decision"] == "promote"
    assert finished.reason.startswith("promoted: not worse than start-bad")
    assert {"prepare", "train", "evaluate"} <= set(finished.metrics["seconds"])
    model = registry.active()
    card = load_card(model.path)
    assert model.version == candidate and model.sha256 == card.sha256 and card.crop.size == 32
    assert card.arch == "ensemble" and "incidents" in {d["name"] for d in card.data}
    members = card.training["members"]  # two networks from two run seeds, one epoch each
    assert [m["version"].split("-")[:3] for m in members] == [["retrain", "1", "n0"], ["retrain", "1", "n1"]]
    assert [(m["run_seed"], m["epochs_run"]) for m in members] == [(1337, 1), (1338, 1)]
    assert "(run seed 1338): 1 epochs" in finished.log
    assert finished.trigger is RunTrigger.MANUAL and finished.finished_at >= finished.started_at
    print(f"\njob: {job_seconds:.0f} s; {finished.reason}; metrics {finished.metrics}")

    # 3. Announced; the gate downloads it from the dashboard, verifies it and swaps it in.
    assert retained_active(world)["version"] == candidate
    assert retained_active(world)["location"] == f"{config.rollout.url}/api/v1/models/{candidate}/files"
    wait_for_version(gate, candidate)
    assert gate.watcher.loaded == [candidate] and gate.watcher.refused == []
    assert wait_until(lambda: events_by(store, candidate), timeout=120), diagnose(gate)
    state_topic = f"{config.mqtt.topic_prefix}/{config.gate_id}/state"
    assert wait_until(
        lambda: any(json.loads(m.payload)["model_version"] == candidate for m in world.spy.on(state_topic)),
        10,
    )

    # 4. A promotion from the dashboard takes the same path (here: the shipped model).
    default = load_card(DEFAULT_MODEL)
    register_folder(registry, DEFAULT_MODEL, default, {})
    assert world.admin.api_post(f"/api/v1/models/{default.version}/promote").status_code == 200
    wait_for_version(gate, default.version)

    # 5. A deliberately worse candidate is rejected, with its reason; nothing is announced.
    one_network = replace(config, retrain=replace(config.retrain, networks=1))  # the stand-in is whole
    worse = run_job(world, one_network, train_fn=rotated_copy_of(DEFAULT_MODEL))
    assert worse.status is RunStatus.REJECTED
    assert worse.reason.startswith(f"not promoted: worse than {default.version}: frozen macro_f1")
    assert registry.get(worse.candidate_version).status is ModelStatus.CANDIDATE
    assert registry.active().version == default.version
    assert retained_active(world)["version"] == default.version
    assert gate.agent.classifier.version == default.version

    # 6. Roll back: the same path with the older version (already fetched once: verified and reused).
    response = world.admin.api_post("/api/v1/models/rollback")
    assert response.status_code == 200 and response.json["version"] == candidate
    wait_for_version(gate, candidate)

    # 7. A wrong sha256, and a corrupted artifact: refused by the gate, which keeps its model.
    location = retained_active(world)["location"]
    wrong = ActiveModel(default.version, "0" * 64, card_sha256(DEFAULT_MODEL), location)
    publish_active_model(config, wrong)
    assert wait_until(lambda: len(gate.watcher.refused) == 1, timeout=30)
    assert "sha256" in gate.watcher.refused[0].reason and gate.agent.classifier.version == candidate
    corrupt = copy_model(world.tmp / "models" / "corrupt", "corrupt-1")
    register_folder(registry, corrupt, load_card(corrupt), {})
    data = bytearray((corrupt / RUNTIME_FILE).read_bytes())
    data[len(data) // 3] ^= 0xFF
    (corrupt / RUNTIME_FILE).write_bytes(bytes(data))  # damaged after it was registered
    location = f"{config.rollout.url}/api/v1/models/corrupt-1/files"
    corrupt_sha256 = load_card(corrupt, verify=False).sha256
    corrupt_model = ActiveModel("corrupt-1", corrupt_sha256, card_sha256(corrupt), location)
    publish_active_model(config, corrupt_model)
    assert wait_until(lambda: len(gate.watcher.refused) == 2, timeout=30)
    assert "does not match the sha256" in gate.watcher.refused[1].reason
    time.sleep(0.5)
    assert gate.agent.classifier.version == candidate

    # Every frame the capture handed over was processed; every decision is an event.
    gate.agent.stop()
    assert wait_until(lambda: gate.capture.status.frames - gate.agent.stats.frames <= 1, timeout=10)
    decisions = {d.decision_id for d in gate.agent.stats.decisions}
    assert decisions <= {e.event_id for e in store.list_events(EventFilter(), limit=1000).events}
