"""`maskgate train-face-check`: its samples on hand-made boxes, and a smoke run to a folder the gate loads."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from maskgate.cli import main
from maskgate.config import Config, DetectorConfig
from maskgate.const import EXIT_USAGE
from maskgate.core import Box
from maskgate.crop import crop_face
from maskgate.gate.build import make_detector
from maskgate.gate.detector import StockFirstDetector
from maskgate.gate.face_check import CHECK_FILE, CHECK_KEY, FaceCheckNet, has_face_check
from maskgate.modelcard import ModelFileError, sha256_file
from maskgate.training.face_check import (
    CHECK_KERAS,
    AddedFace,
    CheckSamples,
    FaceCheckConfig,
    check_figures,
    sample_weights,
    scene_samples,
)
from tests.training.conftest import DATASETS, ROOT

needs_fmd = pytest.mark.skipif(
    not (DATASETS / "scenes" / "fmd").is_dir(), reason=f"shared datasets not found at {DATASETS}"
)


def noise(height: int = 300, width: int = 400) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_a_scene_gives_its_drawn_faces_jittered_and_not_faces_away_from_them(monkeypatch):
    image = noise()
    config = FaceCheckConfig(jitters=3, random=40, min_face=20)
    truth = np.array([[100, 100, 160, 160], [300, 20, 310, 30]])  # the second is under min_face
    blank = np.zeros((64, 64, 3), np.uint8)
    added = [
        AddedFace(0.1, 0.8, blank + 1),  # fits a drawn face: a face
        AddedFace(0.1, 0.0, blank + 2),  # fits none: a hard not-face
        AddedFace(0.1, 0.4, blank + 3),  # neither: left out
    ]
    low_boxes = np.array([[102, 98, 158, 162], [250, 200, 300, 250]])  # on the face; away from it
    # Random boxes: one on the face (IoU 0.85), one overlapping it a little (0.14), one away from it.
    random = np.array([[100, 100, 155, 155], [130, 130, 190, 190], [20, 200, 80, 260]], float)
    monkeypatch.setattr("maskgate.training.face_check.random_crops", lambda *args: random)
    samples = scene_samples(image, truth, added, low_boxes, config, np.random.default_rng(1))
    counts = samples.counts()
    assert counts["faces"] == 1 + 3 + 1
    assert counts["hard_not_faces"] == 2
    assert counts["not_faces"] - counts["hard_not_faces"] == 2  # the random boxes away from the face
    assert np.array_equal(samples.crops[0], crop_face(image, Box(100, 100, 160, 160), config.crop))
    assert any(np.array_equal(crop, blank + 1) for crop in samples.crops[samples.faces])
    assert any(np.array_equal(crop, blank + 2) for crop in samples.crops[samples.hard])
    assert not any(np.array_equal(crop, blank + 3) for crop in samples.crops)
    on_face = crop_face(image, Box(*random[0]), config.crop)
    assert not any(np.array_equal(crop, on_face) for crop in samples.crops)
    for box in random[1:]:
        away = crop_face(image, Box(*box), config.crop)
        assert any(np.array_equal(crop, away) for crop in samples.crops[~samples.faces & ~samples.hard])


def test_faces_and_not_faces_are_balanced_then_hard_ones_weigh_more():
    samples = CheckSamples(
        np.zeros((6, 8, 8, 3), np.uint8),
        np.array([True, True, False, False, False, False]),
        np.array([False, False, False, False, True, True]),
    )
    weights = sample_weights(samples, hard_weight=3.0)
    # Balanced (2 faces against 4 not-faces: each face twice a not-face), then hard ones 3 times.
    assert weights[0] == pytest.approx(weights[1]) == pytest.approx(2 * weights[2])
    assert weights[4] == weights[5] == pytest.approx(3 * weights[2])
    assert weights.mean() == pytest.approx(1.0)


def test_the_check_figures_count_faces_and_false_faces_each_rule_lets_through():
    crop = np.zeros((64, 64, 3), np.uint8)
    added = [
        AddedFace(0.9, 0.8, crop),  # through the stock check
        AddedFace(0.1, 0.7, crop),  # doubted, vouched for: through with the face check
        AddedFace(0.02, 0.9, crop),  # under the floor: out either way
        AddedFace(0.2, 0.0, crop),  # a false face the net rejects
        AddedFace(0.2, 0.1, crop),  # a false face the net lets through
        AddedFace(0.1, 0.4, crop),  # neither a face nor a false one: not counted
    ]
    scores = np.array([0.1, 0.95, 0.99, 0.3, 0.92, 0.99])
    figures = check_figures(added, scores, FaceCheckConfig(threshold=0.9, floor=0.05, stock_check=0.3))
    assert figures == {
        "faces": {"added": 3, "passed_stock_check": 1, "passed_with_face_check": 2},
        "false_faces": {"added": 2, "passed_stock_check": 0, "passed_with_face_check": 1},
    }


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--photos", "folders/nowhere"], "--photos folders/nowhere: no such folder"),
        (["--photos", "--detector-model", "models"], "--detector-model models is not a detector folder"),
    ],
)
def test_train_face_check_refuses_bad_options_before_training(args, says, capsys, monkeypatch):
    monkeypatch.setenv("MASKGATE_PATHS__DATASETS", str(DATASETS))
    assert main(["train-face-check", *args]) == EXIT_USAGE
    assert says in capsys.readouterr().err


def test_train_face_check_refuses_no_members_as_it_parses_them(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["train-face-check", "--members", "0"])
    assert stopped.value.code == EXIT_USAGE
    assert "argument --members: expected a whole number above 0, got '0'" in capsys.readouterr().err


def test_train_face_check_refuses_non_commercial_photos_unless_asked(tmp_path, capsys, monkeypatch):
    folder = "noncommercial/maskedfacenet/with_mask"
    if not (DATASETS / folder).is_dir():
        pytest.skip(f"shared dataset {DATASETS / folder} is not present")
    monkeypatch.setenv("MASKGATE_PATHS__DATASETS", str(DATASETS))
    # "models" is no detector folder: were the photos let through, that is what would be refused.
    command = ["train-face-check", "--photos", folder, "--detector-model", "models"]
    assert main(command) == EXIT_USAGE
    assert f"--photos {folder} is licensed for non-commercial use only" in capsys.readouterr().err
    # Allowed, still not into the detector folder itself (the default; the shipped folder's case).
    assert main([*command, "--allow-non-commercial"]) == EXIT_USAGE
    assert "give --out a folder of its own, not the detector folder models" in capsys.readouterr().err
    # Allowed into a folder of its own: the photos pass and the next option is checked.
    assert main([*command, "--allow-non-commercial", "--out", str(tmp_path / "nc")]) == EXIT_USAGE
    assert "--detector-model models is not a detector folder" in capsys.readouterr().err


@pytest.mark.slow
def test_photos_of_masked_people_give_the_largest_face_the_pair_finds(tmp_path):
    from maskgate.training.face_check import pair_config, photo_faces

    folder = DATASETS / "folders" / "chandrikadeb7" / "with_mask"
    if not folder.is_dir():
        pytest.skip(f"shared dataset {folder} is not present")
    config = FaceCheckConfig(detector=str(ROOT / "models" / "detector-masked"), progress=False)
    (tmp_path / "photos").mkdir()
    for photo in sorted(folder.iterdir())[:4]:
        shutil.copy(photo, tmp_path / "photos" / photo.name)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")  # skipped, not a crash
    pair = make_detector(replace(Config(), detector=pair_config(config)))
    crops = photo_faces(replace(config, photos=("photos",)), tmp_path, pair)
    assert 1 <= len(crops) <= 4 and crops.shape[1:] == (64, 64, 3)


@pytest.mark.slow
@needs_fmd
def test_train_face_check_adds_a_net_the_pair_loads_and_that_agrees_with_keras(tmp_path, monkeypatch, capsys):
    import keras

    monkeypatch.setenv("MASKGATE_PATHS__DATASETS", str(DATASETS))
    out = tmp_path / "detector"
    args = ["train-face-check", "--out", str(out), "--max-scenes", "10", "--epochs", "1", "--members", "2"]
    args.append("--quiet")
    assert main(args) == 0
    assert "face-check net:" in capsys.readouterr().out
    card = json.loads((out / "card.json").read_text())
    for name in (CHECK_FILE, CHECK_KERAS, "face_check_curves.png", "onet.tflite"):
        assert card["files"][name] == sha256_file(out / name)
    entry = card[CHECK_KEY]
    assert entry["data"]["licence"] == "CC0 1.0" and entry["samples"]["train"]["faces"] > 0
    assert [member["seed"] for member in entry["members"]] == [0, 1]
    assert entry["tflite_max_difference"] < 1e-3
    net = FaceCheckNet(out)
    image = noise()
    boxes = [Box(100, 100, 160, 160), Box(10, 10, 90, 90), Box(1000, 1000, 1100, 1100)]  # last: outside
    crops = np.stack([crop_face(image, box, net.crop) for box in boxes[:2]]).astype(np.float32)
    expected = keras.models.load_model(out / CHECK_KERAS).predict(crops, verbose=0)[:, 0]
    scores = net.face_scores(image, boxes)
    assert np.abs(scores[:2] - expected).max() < 1e-3 and scores[2] == 0
    # Selected by the config beside the stock nets; switched off with detector.face_check = 0.
    paired = DetectorConfig(model=str(out), with_stock=True)
    detector = make_detector(replace(Config(), detector=paired))
    assert isinstance(detector, StockFirstDetector) and isinstance(detector.face_check, FaceCheckNet)
    off = make_detector(
        replace(Config(), detector=DetectorConfig(model=str(out), with_stock=True, face_check=0))
    )
    assert off.face_check is None


def test_an_altered_unloadable_or_misdescribed_face_check_net_is_refused_with_its_file(tmp_path):
    folder = tmp_path / "detector"
    shutil.copytree(ROOT / "models" / "detector-masked", folder)
    assert has_face_check(folder)
    (folder / CHECK_FILE).write_bytes(b"not a network")
    with pytest.raises(ModelFileError, match=CHECK_FILE):
        FaceCheckNet(folder)
    with pytest.raises(ModelFileError, match=CHECK_FILE):
        make_detector(replace(Config(), detector=DetectorConfig(model=str(folder), with_stock=True)))
    card = json.loads((folder / "card.json").read_text())
    card["files"][CHECK_FILE] = sha256_file(folder / CHECK_FILE)  # a file that matches, but no network
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match=f"LiteRT cannot load {CHECK_FILE}"):
        FaceCheckNet(folder)
    shutil.copy(ROOT / "models" / "detector-masked" / CHECK_FILE, folder / CHECK_FILE)
    card["files"][CHECK_FILE] = sha256_file(folder / CHECK_FILE)
    for crop, says in [
        ({"size": 32, "margin": 0.2, "color": "rgb"}, r"takes \(64, 64, 3\), the card says \(32, 32, 3\)"),
        ({}, "crop"),
    ]:
        card[CHECK_KEY]["crop"] = crop
        (folder / "card.json").write_text(json.dumps(card))
        with pytest.raises(ModelFileError, match=says):
            FaceCheckNet(folder)
    del card[CHECK_KEY], card["files"][CHECK_FILE]
    (folder / "card.json").write_text(json.dumps(card))
    assert not has_face_check(folder)
    with pytest.raises(ModelFileError, match="names no face-check net"):
        FaceCheckNet(folder)
    detector = make_detector(replace(Config(), detector=DetectorConfig(model=str(folder), with_stock=True)))
    assert detector.face_check is None  # a folder without one: the stock check alone, as before


def test_the_shipped_face_check_net_learned_from_permissively_licensed_data_only():
    card = json.loads((ROOT / "models" / "detector-masked" / "card.json").read_text())
    data = card[CHECK_KEY]["data"]
    assert data["licence"] == "CC0 1.0" and "test never read" in data["split"]
    for photos in data["photos"]:
        assert not photos["source"].startswith("noncommercial/")
        assert photos["licence"].startswith(("MIT", "CC0", "CC BY "))


def test_a_new_net_is_installed_so_the_folder_passes_its_check_even_when_interrupted(tmp_path, monkeypatch):
    from maskgate.gate.mtcnn_litert import verify_folder
    from maskgate.training import face_check

    folder = tmp_path / "detector"
    shutil.copytree(ROOT / "models" / "detector-masked", folder)
    staging = tmp_path / "staging"
    staging.mkdir()
    for name in (CHECK_FILE, CHECK_KERAS, "face_check_curves.png"):
        shutil.copy(folder / name, staging / name)
    (staging / "face_check_curves.png").write_bytes(b"another plot")
    (staging / CHECK_FILE).write_bytes(b"a new net")  # moved first: the card must not name the old one
    moved = []

    def fail_on_the_second_file(source, target):
        if moved:
            raise OSError("disk full")
        moved.append(target)
        shutil.move(source, target)

    monkeypatch.setattr(face_check.os, "replace", fail_on_the_second_file)
    with pytest.raises(OSError, match="disk full"):
        face_check._install(staging, folder, {"crop": {"size": 64, "margin": 0.2, "color": "rgb"}})
    verify_folder(folder)  # usable: the card forgot the old net before any file moved ...
    assert not has_face_check(folder)  # ... so the pair runs with the stock check alone
    monkeypatch.undo()
    (staging / "face_check_curves.png").write_bytes(b"another plot")
    shutil.copy(ROOT / "models" / "detector-masked" / CHECK_FILE, staging / CHECK_FILE)
    entry = json.loads((ROOT / "models" / "detector-masked" / "card.json").read_text())[CHECK_KEY]
    face_check._install(staging, folder, entry)
    verify_folder(folder)
    card = json.loads((folder / "card.json").read_text())
    assert card["files"]["face_check_curves.png"] == sha256_file(folder / "face_check_curves.png")
    assert (folder / "face_check_curves.png").read_bytes() == b"another plot"
    assert FaceCheckNet(folder).crop.size == 64
