"""The retraining job: the decision rule, the pool (incidents, frozen set, duplicates), whole runs with a
stand-in for training (a copy of the shipped model), the lock across processes, and `maskgate retrain`.

Training itself is tested in test_train.py and end to end in tests/test_retraining_e2e.py; here the
candidate is `models/default` copied under a new version (or with its labels rotated, which makes
every right answer wrong: a deliberately worse model), so no test here needs TensorFlow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from maskgate.config import Config, PathsConfig, RetrainConfig
from maskgate.core import Box, Label, Review, utcnow
from maskgate.crop import CropSpec, crop_face
from maskgate.dashboard.jobs import RetrainingJob, RunResult
from maskgate.gate.snapshots import _context_crop
from maskgate.modelcard import load_card, write_card
from maskgate.store import (
    EventStore,
    ModelRegistry,
    ModelStatus,
    RunStatus,
    RunTrigger,
    TrainingRuns,
    make_engine,
    migrate,
)
from maskgate.training import pool as pool_module
from maskgate.training.datasets import DataSpec, Layout, scan
from maskgate.training.pool import (
    INCIDENT_SOURCE,
    Scans,
    base_pool,
    frozen_set,
    reviewed_incidents,
    snapshot_face_box,
    write_incident_source,
)
from maskgate.training.retrain import (
    FROZEN,
    INCIDENTS,
    Comparison,
    Retrainer,
    Scores,
    active_model_message,
    decide,
    register_folder,
)
from maskgate.training.split import MANIFEST_FILE, ManifestRow, Split, write_manifest
from tests.conftest import copy_model
from tests.gate.comms.brokers import free_port

from .conftest import DATASETS, make_faces_folder, needs_datasets

ROTATED = (Label.WITHOUT_MASK, Label.IMPROPER_MASK, Label.WITH_MASK)  # every right answer becomes wrong


# -- the decision rule -------------------------------------------------------------------------------

TOLERANT = RetrainConfig(tolerance_macro_f1=0.02, tolerance_improper_recall=0.05, min_incident_faces=10)


def scores(f1: float, recall: float = 0.5, faces: int = 100, improper: int = 10) -> Scores:
    return Scores(faces, f1, recall, improper)


def test_a_candidate_as_good_as_the_champion_is_promoted():
    verdict = decide({FROZEN: Comparison(scores(0.80), scores(0.80))}, TOLERANT, "v1")
    assert verdict.promote and verdict.reason.startswith("promoted: not worse than v1")
    assert [c.metric for c in verdict.checks] == ["macro_f1", "improper_recall"]


def test_a_small_drop_within_the_tolerance_is_promoted_a_bigger_one_rejected():
    assert decide({FROZEN: Comparison(scores(0.80), scores(0.785))}, TOLERANT, "v1").promote
    verdict = decide({FROZEN: Comparison(scores(0.80), scores(0.77))}, TOLERANT, "v1")
    assert not verdict.promote
    assert verdict.reason == "not promoted: worse than v1: frozen macro_f1 0.7700 < 0.8000 - 0.02"


def test_improper_recall_is_checked_on_its_own():
    verdict = decide({FROZEN: Comparison(scores(0.80, 0.60), scores(0.90, 0.50))}, TOLERANT, "v1")
    assert not verdict.promote and "frozen improper_recall 0.5000 < 0.6000 - 0.05" in verdict.reason
    assert "macro_f1" not in verdict.reason  # only what failed is named


def test_without_improper_faces_recall_is_not_compared():
    verdict = decide(
        {FROZEN: Comparison(scores(0.8, 0.9, improper=0), scores(0.8, 0.0, improper=0))}, TOLERANT, "v"
    )
    assert verdict.promote and [c.metric for c in verdict.checks] == ["macro_f1"]


def test_few_incidents_are_recorded_but_not_decisive():
    comparisons = {
        FROZEN: Comparison(scores(0.80), scores(0.80)),
        INCIDENTS: Comparison(scores(0.9, faces=4), scores(0.2, faces=4)),
    }
    verdict = decide(comparisons, TOLERANT, "v1")
    assert (
        verdict.promote and "incidents: 4 faces < retrain.min_incident_faces, not decisive" in verdict.reason
    )
    assert any(c.evaluation == INCIDENTS and not c.passed and not c.decisive for c in verdict.checks)


def test_enough_worse_incidents_reject():
    comparisons = {
        FROZEN: Comparison(scores(0.80), scores(0.85)),
        INCIDENTS: Comparison(scores(0.9, faces=30), scores(0.6, faces=30)),
    }
    verdict = decide(comparisons, TOLERANT, "v1")
    assert not verdict.promote and "incidents macro_f1 0.6000 < 0.9000" in verdict.reason


def test_no_champion_or_nothing_to_compare_on_does_not_promote():
    verdict = decide({FROZEN: Comparison(None, scores(0.9))}, TOLERANT, None)
    assert not verdict.promote and verdict.reason == "not promoted: no active model to compare with"
    verdict = decide({FROZEN: Comparison(scores(0.8, faces=0), scores(0.0, faces=0))}, TOLERANT, "v1")
    assert not verdict.promote and "nothing to compare" in verdict.reason


# -- snapshots and incidents ------------------------------------------------------------------------------


@pytest.mark.parametrize("box", [Box(200, 150, 300, 270), Box(400.5, 100.2, 470.7, 160.9)])
def test_a_snapshot_recropped_gives_the_gates_own_crop(box):
    frame = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    frame = cv2.GaussianBlur(frame, (9, 9), 3)  # neighbouring pixels alike, as in a photo
    snapshot = _context_crop(frame, box)  # what gate/snapshots.py saves
    spec = CropSpec(size=64, margin=0.2)
    height, width = snapshot.shape[:2]
    again = crop_face(snapshot, snapshot_face_box(width, height), spec)
    gate = crop_face(frame, box, spec)
    assert np.abs(again.astype(int) - gate.astype(int)).mean() < 3  # off by at most a pixel's rounding


def test_recent_incidents_are_held_out_by_content_hash():
    now = utcnow()

    def crop(sha_start: str, days_ago: int) -> pool_module.IncidentCrop:
        sha = sha_start.ljust(64, "0")
        return pool_module.IncidentCrop(
            uuid.uuid4(), Label.WITH_MASK, Path("x.jpg"), sha, now - timedelta(days_ago)
        )

    low_recent, high_recent, low_old = crop("1", 1), crop("e", 1), crop("11", 90)
    kept, held = pool_module.hold_out([low_recent, high_recent, low_old], now - timedelta(days=30), 0.2)
    assert held == [low_recent] and kept == [high_recent, low_old]  # the same split every night
    assert pool_module.hold_out([low_recent], now - timedelta(days=30), 0.0) == ([low_recent], [])


def face_jpegs(folder: str, start: int, count: int) -> list[Path]:
    files = sorted((DATASETS / "folders/chandrikadeb7" / folder).glob("*.jpg"))
    return files[start : start + count]


def put_snapshot(snapshots: Path, source: Path) -> str:
    relative = Path("gate-1") / "2026-03-01" / f"{uuid.uuid4()}.jpg"
    (snapshots / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, snapshots / relative)
    return str(relative)


def review(store: EventStore, event, label: Label | None, false_positive: bool = False, at=None) -> None:
    store.record_event(event)
    verdict = Review("alice", at or utcnow(), true_label=label, false_positive=false_positive)
    store.review_event(event.event_id, verdict, pinned=True)


@needs_datasets
def test_reviewed_incidents_are_the_labelled_ones_with_a_snapshot_deduplicated(tmp_path, store, make_event):
    snapshots = tmp_path / "snapshots"
    a, b, c = face_jpegs("without_mask", 0, 3)
    relabelled = make_event(Label.WITHOUT_MASK, snapshot_path=put_snapshot(snapshots, a))
    review(store, relabelled, Label.WITH_MASK)
    confirmed = make_event(Label.WITHOUT_MASK, snapshot_path=put_snapshot(snapshots, b))
    review(store, confirmed, Label.WITHOUT_MASK)
    # the same picture again (same bytes): one example; the newer review's label wins
    older = make_event(Label.WITHOUT_MASK, snapshot_path=put_snapshot(snapshots, c))
    review(store, older, Label.WITHOUT_MASK, at=utcnow().replace(year=2025))
    newer = make_event(Label.WITHOUT_MASK, snapshot_path=put_snapshot(snapshots, c))
    review(store, newer, Label.IMPROPER_MASK)
    review(store, make_event(Label.WITHOUT_MASK, snapshot_path=put_snapshot(snapshots, a)), None, True)
    review(store, make_event(Label.WITHOUT_MASK, snapshot_path="gate-1/gone.jpg"), Label.WITH_MASK)
    outside = tmp_path / "secret.jpg"
    shutil.copy(a, outside)
    review(store, make_event(Label.WITHOUT_MASK, snapshot_path="../secret.jpg"), Label.WITH_MASK)
    review(store, make_event(Label.WITHOUT_MASK, snapshot_path=str(outside)), Label.WITH_MASK)
    review(store, make_event(Label.WITHOUT_MASK), Label.WITH_MASK)  # no snapshot at all
    store.record_event(
        make_event(Label.WITHOUT_MASK, snapshot_path=put_snapshot(snapshots, b))
    )  # not reviewed

    crops, counts = reviewed_incidents(store, snapshots)

    assert {(c.event_id, c.label) for c in crops} == {
        (relabelled.event_id, Label.WITH_MASK),
        (confirmed.event_id, Label.WITHOUT_MASK),
        (newer.event_id, Label.IMPROPER_MASK),
    }
    assert counts.to_json() == {
        "reviewed": 9,
        "used": 3,
        "false_positive": 1,
        "no_label": 0,
        "no_snapshot": 4,
        "duplicates": 1,
        "held_out": 0,  # decided later, by hold_out
    }
    assert all(c.snapshot.is_relative_to(snapshots.resolve()) for c in crops)


@needs_datasets
def test_incidents_become_a_voc_source_cropped_to_the_models_spec(tmp_path, store, make_event):
    from maskgate.training.cropset import load_source

    snapshots = tmp_path / "snapshots"
    for source, label in zip(face_jpegs("with_mask", 0, 3), Label, strict=True):
        review(store, make_event(Label.WITHOUT_MASK, snapshot_path=put_snapshot(snapshots, source)), label)
    crops, _ = reviewed_incidents(store, snapshots)
    spec, unreadable = write_incident_source(crops, tmp_path / "incidents")
    assert unreadable == 0 and spec.name == INCIDENT_SOURCE and spec.layout is Layout.VOC
    images, _ = scan(spec)
    assert sorted(f.label for i in images for f in i.faces) == sorted(Label)
    assert {i.path for i in images} == {f"images/{c.sha256}.jpg" for c in crops}
    cropped, _, _ = load_source(spec, CropSpec(size=32), None, progress=False)
    assert len(cropped) == 3 and cropped.crops.shape[1:] == (32, 32, 3)
    assert write_incident_source([], tmp_path / "none") == (None, 0)


def faces_folder(root: Path, start: int, count: int) -> Path:
    for folder in ("with_mask", "without_mask"):
        (root / folder).mkdir(parents=True)
        for file in face_jpegs(folder, start, count):
            shutil.copy(file, root / folder / file.name)
    return root


@needs_datasets
def test_the_frozen_set_is_what_the_manifest_pins_and_is_never_trained_on(tmp_path):
    data = faces_folder(tmp_path / "data", 0, 6)
    spec = DataSpec.parse(str(data))
    images = scan(spec)[0]
    pinned, changed = images[:3], images[3]
    rows = [ManifestRow(spec.name, i.path, i.sha256, "", Split.TEST) for i in pinned]
    rows.append(ManifestRow(spec.name, changed.path, "0" * 64, "", Split.TEST))  # the file changed since
    rows += [ManifestRow(spec.name, i.path, i.sha256, "", Split.TRAIN) for i in images[4:]]
    write_manifest(tmp_path / MANIFEST_FILE, rows)
    # a second base source holding a copy of a frozen image and of a training image
    other = tmp_path / "other" / "with_mask"
    other.mkdir(parents=True)
    for image in (pinned[0], images[5]):
        shutil.copy(data / image.path, other / f"copy-{Path(image.path).name}")
    other_spec = DataSpec.parse(str(tmp_path / "other"))
    scans = Scans()

    frozen = frozen_set([spec], tmp_path / MANIFEST_FILE, "test", tmp_path / "work/frozen", scans)
    base = base_pool([spec, other_spec], frozen.hashes, tmp_path / "work/base", scans)

    assert frozen.images == 3 and frozen.missing == 1
    frozen_images = scan(frozen.specs[0])[0]
    assert frozen.specs[0].name == spec.name and {i.sha256 for i in frozen_images} == {
        i.sha256 for i in pinned
    }
    trained = [i for s in base.specs for i in scan(s)[0]]
    assert {i.sha256 for i in trained} == {i.sha256 for i in images[3:]}
    assert base.counts.to_json() == {"images": len(images) - 3, "frozen_excluded": 4, "duplicates": 1}
    assert [s.name for s in base.specs] == [spec.name]  # the copy-only source has nothing left


def test_non_commercial_and_missing_data_are_refused(tmp_path):
    (tmp_path / "noncommercial/set/with_mask").mkdir(parents=True)
    with pytest.raises(pool_module.PoolError, match="non-commercial"):
        pool_module.parse_specs(["noncommercial/set"], tmp_path, "base_data")
    with pytest.raises(pool_module.PoolError, match=r"retrain\.eval_data"):
        pool_module.parse_specs(["nowhere"], tmp_path, "eval_data")


# -- whole runs (training stood in for by a copy of the shipped model) ------------------------------------


class FakeTrain:
    """Stands in for `train`: the shipped model under a new version, its manifest holding the pool."""

    def __init__(self, labels: tuple[Label, ...] | None = None):
        self.labels = labels
        self.specs: list[list[DataSpec]] = []
        self.configs: list = []

    def __call__(self, specs, out, train_config, cache, datasets):
        self.specs.append(list(specs))
        self.configs.append(train_config)
        copy_model(out, f"{out.name}-cand", self.labels)
        rows = [ManifestRow(s.name, i.path, i.sha256, "", Split.TRAIN) for s in specs for i in scan(s)[0]]
        write_manifest(out / MANIFEST_FILE, rows)
        card = write_card(out, load_card(out, verify=False))
        return SimpleNamespace(folder=out, card=card, seconds=0.0)


@pytest.fixture
def world(tmp_path, sqlite_url):
    """Datasets, snapshots, a starting model and an SQLite database for a run."""
    engine = make_engine(sqlite_url)
    migrate.upgrade(engine)
    datasets = tmp_path / "datasets"
    make_faces_folder(datasets / "base", per_class=4)
    faces_folder(datasets / "frozen", 40, 8)
    config = Config(
        database_url=sqlite_url,
        paths=PathsConfig(
            models=tmp_path / "models",
            active_model=tmp_path / "starting",
            snapshots=tmp_path / "snapshots",
            datasets=datasets,
        ),
        retrain=RetrainConfig(
            base_data=("base",),
            eval_data=("frozen",),
            eval_manifest="",
            work_dir=tmp_path / "work",
            cache=tmp_path / "cache",
            tolerance_macro_f1=0.01,
            tolerance_improper_recall=0.02,
            incident_days=30,
            incident_holdout=1.0,  # every recent incident is held out; older ones train
            networks=1,  # the stand-in "trains" a copy of the shipped model
            label_review="",  # the project's review names the shared sets, not these
        ),
    )
    yield SimpleNamespace(config=config, engine=engine, store=EventStore(engine), tmp=tmp_path)
    engine.dispose()


def run_job(world, retrainer: Retrainer):
    job = RetrainingJob(TrainingRuns(world.engine), retrainer)
    run = job.start(RunTrigger.CLI)
    assert run is not None
    return job.execute(run.run_id)


def relabel_incidents(world, make_event, start: int, count: int, days_ago: int = 0) -> None:
    for source in face_jpegs("with_mask", start, count):
        event = make_event(Label.WITHOUT_MASK, snapshot_path=put_snapshot(world.tmp / "snapshots", source))
        review(world.store, event, Label.WITH_MASK, at=utcnow() - timedelta(days=days_ago))


@needs_datasets
def test_a_better_candidate_is_registered_promoted_and_announced(world, make_event):
    copy_model(world.tmp / "starting", "start-bad", ROTATED)  # the gates start on a bad model
    relabel_incidents(world, make_event, 60, 2)  # recent: held out to evaluate on
    relabel_incidents(world, make_event, 62, 3, days_ago=60)  # older than incident_days: trained on
    announced = []
    train = FakeTrain()

    finished = run_job(
        world, Retrainer(world.config, world.engine, train_fn=train, announce_fn=announced.append)
    )

    assert finished.status is RunStatus.SUCCEEDED, finished.reason
    registry = ModelRegistry(world.engine)
    active = registry.active()
    assert active.version == finished.candidate_version == "retrain-1-cand"
    assert active.sha256 == load_card(active.path).sha256
    assert (
        registry.get("start-bad").status is ModelStatus.RETIRED
    )  # bootstrapped, so a rollback can return to it
    assert [m.version for m in announced] == [active.version]
    assert finished.reason.startswith("promoted: not worse than start-bad: frozen macro_f1")
    metrics = finished.metrics
    assert metrics["champion"] == "start-bad" and metrics["decision"] == "promote"
    assert metrics["frozen"]["challenger"]["macro_f1"] > metrics["frozen"]["champion"]["macro_f1"] + 0.5
    assert metrics["frozen"]["challenger"]["faces"] == 16
    assert metrics["pool"]["incidents"]["used"] == 3 and metrics["pool"]["incidents"]["held_out"] == 2
    assert metrics[INCIDENTS]["challenger"]["faces"] == 2
    assert "not decisive" in finished.reason
    assert set(metrics["seconds"]) == {"prepare", "train", "evaluate"}
    assert active.metrics["macro_f1"] == metrics["frozen"]["challenger"]["macro_f1"]
    # what was trained on: the base source and the incidents, nothing of the frozen set
    (specs,) = train.specs
    assert [s.name for s in specs] == ["base", INCIDENT_SOURCE]
    assert [f.label for i in scan(specs[1])[0] for f in i.faces] == [Label.WITH_MASK] * 3
    for line in ("champion: start-bad", "pool: 12 base images", "registered retrain-1-cand", "announced"):
        assert line in finished.log


@needs_datasets
def test_a_worse_candidate_is_rejected_with_its_reason_and_nothing_changes(world, make_event):
    copy_model(world.tmp / "starting", "start-good")
    announced = []
    retrainer = Retrainer(
        world.config, world.engine, train_fn=FakeTrain(ROTATED), announce_fn=announced.append
    )

    finished = run_job(world, retrainer)

    assert finished.status is RunStatus.REJECTED
    assert finished.reason.startswith("not promoted: worse than start-good: frozen macro_f1 0.")
    registry = ModelRegistry(world.engine)
    assert registry.active().version == "start-good" and announced == []
    candidate = registry.get(finished.candidate_version)
    assert candidate.status is ModelStatus.CANDIDATE and candidate.sha256 == load_card(candidate.path).sha256
    assert finished.metrics["decision"] == "reject" and INCIDENTS not in finished.metrics
    assert finished.finished_at >= finished.started_at


@needs_datasets
def test_the_champion_is_the_registered_model_even_if_its_folder_is_replaced_during_the_run(world):
    copy_model(world.tmp / "starting", "start-good")
    registry = ModelRegistry(world.engine)

    class ReplacingTrain(FakeTrain):
        def __call__(self, specs, out, train_config, cache, datasets):
            # meanwhile someone ships another model into the champion's folder (same files, labels rotated)
            folder = Path(registry.active().path)
            write_card(folder, replace(load_card(folder), labels=ROTATED))
            return super().__call__(specs, out, train_config, cache, datasets)

    finished = run_job(world, Retrainer(world.config, world.engine, train_fn=ReplacingTrain(ROTATED)))
    assert finished.status is RunStatus.REJECTED  # compared with the model that was registered
    assert finished.metrics["frozen"]["champion"]["macro_f1"] > 0.5
    # the starting model was registered as a copy under paths.models, not the folder it came from
    assert Path(registry.get("start-good").path) == (world.tmp / "models" / "start-good").resolve()


@needs_datasets
def test_a_roll_back_during_the_run_is_not_undone_by_its_promotion(world):
    """Staff roll the faulty active model back while the run trains: the candidate was judged against the
    model they rolled back, so the run does not promote it over their choice."""
    registry = ModelRegistry(world.engine)
    for version, labels in (("good-a", None), ("bad-b", ROTATED)):
        folder = copy_model(world.tmp / "models" / version, version, labels)
        register_folder(registry, folder, load_card(folder), {})
        registry.promote(version)

    class RollBackMeanwhile(FakeTrain):
        def __call__(self, specs, out, train_config, cache, datasets):
            assert registry.rollback().version == "good-a"
            return super().__call__(specs, out, train_config, cache, datasets)

    announced = []
    finished = run_job(
        world,
        Retrainer(world.config, world.engine, train_fn=RollBackMeanwhile(), announce_fn=announced.append),
    )

    assert finished.status is RunStatus.REJECTED, finished.reason
    assert finished.reason == (
        "not promoted: the active model changed during the run (bad-b -> good-a); "
        "the candidate was compared with bad-b"
    )
    assert finished.metrics["champion"] == "bad-b" and announced == []
    assert registry.active().version == "good-a"
    assert registry.get(finished.candidate_version).status is ModelStatus.CANDIDATE


@needs_datasets
@pytest.mark.faults
def test_a_promotion_the_broker_did_not_take_says_so(world):
    """The real announcer, with the broker down (it waits 10 s for it): promoted, and the reason says so."""
    copy_model(world.tmp / "starting", "start-bad", ROTATED)
    down = f"mqtt://127.0.0.1:{free_port()}"
    config = replace(world.config, mqtt=replace(world.config.mqtt, url=down, topic_prefix="mgtest-down"))

    finished = run_job(world, Retrainer(config, world.engine, train_fn=FakeTrain()))

    assert finished.status is RunStatus.SUCCEEDED, finished.reason
    promoted = finished.candidate_version
    assert ModelRegistry(world.engine).active().version == promoted
    assert f"NOT announced to the gates: model {promoted} not announced: " in finished.reason
    assert f"cannot connect to {down}" in finished.reason and "promote it again" in finished.reason


def test_an_active_model_that_cannot_be_loaded_fails_the_run_before_training(world):
    registry = ModelRegistry(world.engine)
    registry.register("broken", str(world.tmp / "nowhere"), "0" * 64)
    registry.promote("broken")
    train = FakeTrain()
    finished = run_job(world, Retrainer(world.config, world.engine, train_fn=train))
    assert finished.status is RunStatus.FAILED and train.specs == []
    assert finished.reason.startswith("the active model broken cannot be loaded")


@pytest.mark.parametrize(
    "starting, card_error",
    [("missing", "not a model folder (no card.json)"), ("altered", "model.keras does not match the sha256")],
)
def test_without_a_champion_the_run_fails_before_training(world, starting, card_error):
    """Nothing active and no starting model that verifies: never a promotion without a comparison."""
    folder = world.tmp / "starting"
    if starting == "altered":
        copy_model(folder, "start-good")
        (folder / "model.keras").write_bytes(b"truncated")
    announced = []
    train = FakeTrain()
    finished = run_job(
        world, Retrainer(world.config, world.engine, train_fn=train, announce_fn=announced.append)
    )
    assert finished.status is RunStatus.FAILED and train.specs == [] and announced == []
    assert finished.reason.startswith(
        f"no model is active and the gates' starting model paths.active_model ({folder}) cannot be the "
        f"champion: {folder}: "
    )
    assert card_error in finished.reason
    assert ModelRegistry(world.engine).list_versions() == []


def test_bad_settings_fail_the_run_before_anything_else(world):
    config = replace(
        world.config, retrain=replace(world.config.retrain, val_share=0.0, tolerance_macro_f1=-1)
    )
    train = FakeTrain()
    finished = run_job(world, Retrainer(config, world.engine, train_fn=train))
    assert finished.status is RunStatus.FAILED and train.specs == []
    assert finished.reason == (
        "retrain.val_share must be between 0 and 1 (exclusive), got 0.0; "
        "retrain.tolerance_macro_f1 must be between 0 and 1, got -1"
    )
    assert ModelRegistry(world.engine).active() is None  # not even the starting model was registered


def test_the_candidate_is_trained_with_the_gates_detector_settings(world):
    """Photos are cropped as the gate crops: its detector weights and box calibration."""
    copy_model(world.tmp / "starting", "start-good")
    detector = replace(world.config.detector, box_calibration=True)
    train = FakeTrain()
    config = replace(world.config, detector=detector)
    finished = run_job(world, Retrainer(config, world.engine, train_fn=train))
    assert finished.status is not RunStatus.FAILED, finished.reason
    assert [c.detector for c in train.configs] == [detector]


@needs_datasets
def test_reviewed_labels_reach_the_training_and_both_models_scores(world):
    """The review corrects what the candidate trains on and the frozen set both models are judged on."""
    copy_model(world.tmp / "starting", "start-good")
    frozen_image, base_image = (
        scan(DataSpec.parse(n, world.config.paths.datasets))[0][0] for n in ("frozen", "base")
    )
    review_file = world.tmp / "review.csv"
    review_file.write_text(
        "source,image,box,label,reason\n"
        f"frozen,{frozen_image.path},,exclude,no label fits the crop\n"
        f"base,{base_image.path},,without_mask,no mask at all\n"
    )
    config = replace(world.config, retrain=replace(world.config.retrain, label_review=str(review_file)))
    train = FakeTrain()

    finished = run_job(world, Retrainer(config, world.engine, train_fn=train))

    assert finished.status is not RunStatus.FAILED, finished.reason
    (train_config,) = train.configs
    assert train_config.label_review.name == "review.csv" and len(train_config.label_review.faces) == 2
    frozen = finished.metrics["frozen"]
    assert frozen["challenger"]["faces"] == frozen["champion"]["faces"] == 15  # 16 frozen faces, one left out
    assert finished.metrics["pool"]["label_review"]["faces"] == 2
    assert "label review: review.csv (2 faces" in finished.log


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read the label review"),
        ("source,image,box,label,reason\nbase,a.jpg,,masked,why\n", "review.csv:2: unknown label 'masked'"),
    ],
)
def test_a_missing_or_malformed_review_fails_the_run_before_anything_else(world, content, message):
    review_file = world.tmp / "review.csv"
    if content is not None:
        review_file.write_text(content)
    config = replace(world.config, retrain=replace(world.config.retrain, label_review=str(review_file)))
    train = FakeTrain()
    finished = run_job(world, Retrainer(config, world.engine, train_fn=train))
    assert finished.status is RunStatus.FAILED and train.specs == []
    assert finished.reason.startswith("retrain.label_review: ") and message in finished.reason
    assert ModelRegistry(world.engine).active() is None  # not even the starting model was registered


def test_the_default_review_is_the_projects_own_file():
    from maskgate.training.label_review import LabelReview

    review = LabelReview.load(Path(RetrainConfig().label_review))
    assert review.name == "label_review.csv" and review.faces


def test_missing_data_fails_the_run_with_the_key_named(world):
    copy_model(world.tmp / "starting", "start-good")
    config = replace(world.config, retrain=replace(world.config.retrain, base_data=("no-such-set",)))
    finished = run_job(world, Retrainer(config, world.engine, train_fn=FakeTrain()))
    assert finished.status is RunStatus.FAILED and "retrain." in finished.reason


def test_the_announcement_points_at_the_folder_or_the_dashboard(tmp_path):
    model = SimpleNamespace(
        version="retrain-3-20260301-020000", sha256="a" * 64, card_sha256="c" * 64, path=str(tmp_path / "m")
    )
    by_path = active_model_message(Config(), model)
    assert by_path.location == str((tmp_path / "m").resolve()) and by_path.sha256 == "a" * 64
    assert by_path.card_sha256 == "c" * 64
    config = replace(Config(), rollout=replace(Config().rollout, url="https://dash.example:8443/"))
    assert active_model_message(config, model).location == (
        "https://dash.example:8443/api/v1/models/retrain-3-20260301-020000/files"
    )


# -- one run at a time across processes ---------------------------------------------------------------

LOCK_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from maskgate.dashboard.jobs import RetrainingJob, RunResult
    from maskgate.store import RunStatus, RunTrigger, TrainingRuns, make_engine

    url, record, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])

    def trainer(run, log):
        with open(record, "a") as out:
            out.write(f"{os.getpid()} start {time.time():.6f}\\n")
        time.sleep(0.25)  # a run that takes time: the other process must wait for it
        with open(record, "a") as out:
            out.write(f"{os.getpid()} end {time.time():.6f}\\n")
        return RunResult(RunStatus.SUCCEEDED, reason="ok")

    job = RetrainingJob(TrainingRuns(make_engine(url)), trainer)
    runs = skipped = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run = job.start(RunTrigger.SCHEDULE)
        if run is None:
            skipped += 1
        else:
            job.execute(run.run_id)
            runs += 1
        time.sleep(0.02)
    print(runs, skipped)
    """
)


@pytest.mark.integration
def test_two_processes_on_one_postgresql_never_run_the_job_at_the_same_time(postgresql_url, tmp_path):
    engine = make_engine(postgresql_url)
    migrate.upgrade(engine)
    record = tmp_path / "record.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKGATE_")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LOCK_SCRIPT, postgresql_url, str(record), "4"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60)[0].split() for p in processes]
    assert all(p.returncode == 0 for p in processes)
    runs = sum(int(o[0]) for o in outputs)
    assert runs >= 4 and sum(int(o[1]) for o in outputs) > 0  # both tried; some attempts found the lock taken
    events = [line.split() for line in record.read_text().splitlines()]
    assert len(events) == 2 * runs
    # strictly alternating start/end across both processes: no run ever started while another was running
    for i in range(0, len(events), 2):
        start, end = events[i], events[i + 1]
        assert (start[1], end[1]) == ("start", "end") and start[0] == end[0]
    assert len({e[0] for e in events}) == 2  # each process ran the job at some point
    history = TrainingRuns(engine).list_runs(limit=1000)
    assert len(history) == runs and all(r.status is RunStatus.SUCCEEDED for r in history)
    engine.dispose()


def test_maskgate_retrain_waits_its_turn_and_records_failures(tmp_path, sqlite_url):
    engine = make_engine(sqlite_url)
    migrate.upgrade(engine)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKGATE_")}
    env.update(
        MASKGATE_DATABASE_URL=sqlite_url,
        MASKGATE_PATHS__DATASETS=str(tmp_path),
        MASKGATE_PATHS__ACTIVE_MODEL=str(tmp_path / "none"),
        MASKGATE_RETRAIN__WORK_DIR=str(tmp_path / "work"),
        MASKGATE_RETRAIN__BASE_DATA='["not-here"]',
    )
    command = [str(Path(sys.executable).parent / "maskgate"), "retrain"]
    runs = TrainingRuns(engine)
    holder = runs.try_start(RunTrigger.MANUAL)
    busy = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert (
        busy.returncode == 1
        and f"run {holder.run_id} (manual" in busy.stderr
        and "in progress" in busy.stderr
    )
    runs.finish(holder.run_id, RunStatus.FAILED, reason="test")
    failed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1, failed.stderr
    last = runs.list_runs(limit=1)[0]
    assert last.trigger is RunTrigger.CLI and last.status is RunStatus.FAILED
    assert f"paths.active_model ({tmp_path / 'none'})" in last.reason  # no champion: before the data
    assert f"run {last.run_id} failed" in failed.stdout
    engine.dispose()


def test_the_dashboard_finds_the_trainer_hook():
    from maskgate.dashboard.jobs import load_trainer
    from maskgate.training import retrain

    assert load_trainer() is retrain.trainer
    assert isinstance(RunResult(RunStatus.FAILED), RunResult)
