"""Model folders and their cards: written with hashes, refused when missing or altered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskgate.core import LABELS
from maskgate.crop import CropSpec
from maskgate.modelcard import CARD_FILE, ModelCard, ModelFileError, load_card, sha256_file, write_card


def make_folder(folder: Path) -> ModelCard:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.tflite").write_bytes(b"tflite bytes")
    (folder / "model.keras").write_bytes(b"keras bytes")
    (folder / "plot.png").write_bytes(b"png")
    card = ModelCard(
        version="m-1",
        labels=LABELS,
        crop=CropSpec(size=64),
        arch="compact",
        created="2026-01-01T00:00:00+00:00",
        parameters=1234,
        metrics={"test": {"all": {"accuracy": 0.9}}},
        data=[{"name": "scenes/fmd", "licence": "CC0 1.0"}],
        data_hash="abc",
        training={"epochs_run": 3},
    )
    return write_card(folder, card)


def test_write_card_lists_every_file_with_its_sha256_and_loads_back(tmp_path: Path):
    written = make_folder(tmp_path)
    assert set(written.files) == {"model.tflite", "model.keras", "plot.png"}
    assert written.sha256 == sha256_file(tmp_path / "model.tflite")
    loaded = load_card(tmp_path)
    assert loaded == written and loaded.crop == CropSpec(size=64) and loaded.labels == LABELS


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "model.keras").unlink(), r"model\.keras is missing"),
        (lambda f: (f / "model.tflite").write_bytes(b"other"), r"model\.tflite does not match the sha256"),
        (lambda f: (f / CARD_FILE).unlink(), "not a model folder"),
        (lambda f: (f / CARD_FILE).write_text("{not json"), "invalid model card"),
    ],
)
def test_a_damaged_folder_fails_with_a_clear_message(tmp_path: Path, damage, message: str):
    make_folder(tmp_path)
    damage(tmp_path)
    with pytest.raises(ModelFileError, match=message):
        load_card(tmp_path)


def test_verification_can_be_skipped_and_formats_are_checked(tmp_path: Path):
    make_folder(tmp_path)
    (tmp_path / "plot.png").write_bytes(b"changed")
    assert load_card(tmp_path, verify=False).version == "m-1"
    data = json.loads((tmp_path / CARD_FILE).read_text())
    (tmp_path / CARD_FILE).write_text(json.dumps({**data, "format": 99}))
    with pytest.raises(ModelFileError, match="unsupported card format"):
        load_card(tmp_path)


@pytest.mark.parametrize("version", ["m" * 65, "two words", ""], ids=["65 characters", "a space", "empty"])
def test_a_version_that_breaks_the_mqtt_rule_is_refused_at_load(tmp_path: Path, version: str):
    from maskgate.const import MODEL_VERSION_PATTERN

    written = make_folder(tmp_path / "model")
    write_card(tmp_path / "model", ModelCard(**{**written.__dict__, "version": version}))
    with pytest.raises(ModelFileError) as refused:
        load_card(tmp_path / "model", verify=False)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'model'}: model version {version!r}")
    assert MODEL_VERSION_PATTERN.pattern in message  # the rule, as door controllers apply it
    write_card(tmp_path / "model", ModelCard(**{**written.__dict__, "version": "m" * 64}))
    assert load_card(tmp_path / "model").version == "m" * 64


def test_a_folder_without_runtime_model_cannot_get_a_card(tmp_path: Path):
    (tmp_path / "model.keras").write_bytes(b"x")
    with pytest.raises(ModelFileError, match=r"no model\.tflite"):
        write_card(tmp_path, make_card_only())


def make_card_only() -> ModelCard:
    return ModelCard("v", LABELS, CropSpec(), "compact", "2026-01-01T00:00:00+00:00")


def _edit_card(folder: Path, edit) -> None:
    """Rewrite card.json as `edit` leaves the parsed card (a function of it, or the text itself)."""
    data = json.loads((folder / CARD_FILE).read_text())
    if callable(edit):
        text = edit(data)
        text = text if isinstance(text, str) else json.dumps(text)
    else:
        text = edit
    (folder / CARD_FILE).write_text(text)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ("[1, 2]", "must be a JSON object, not list"),
        ("null", "must be a JSON object, not NoneType"),
        (lambda d: {**d, "files": ["model.tflite"]}, "files must be an object"),
        (lambda d: {**d, "files": None}, "files must be an object"),
        (lambda d: {**d, "files": {"model.tflite": 5}}, "'model.tflite' must map to a sha256"),
        (lambda d: {**d, "files": {"model.tflite": "abc"}}, "'model.tflite' must map to a sha256"),
        (lambda d: {k: v for k, v in d.items() if k != "files"}, "files is missing"),
        (lambda d: {**d, "labels": [{}]}, "labels must be a non-empty list of label names"),
        (lambda d: {**d, "labels": "with_mask"}, "labels must be a list"),
        (lambda d: {**d, "labels": []}, "labels must be a non-empty list"),
        (lambda d: {**d, "labels": ["with_mask", "hat"]}, "unknown label 'hat'"),
        (lambda d: json.dumps(d).replace('"size": 64', '"size": 1e400'), "crop: invalid crop spec"),
        (lambda d: {**d, "crop": {**d["crop"], "size": 1_000_000_000}}, "crop: invalid crop spec"),
        (lambda d: {**d, "crop": None}, "crop must be an object"),
        (lambda d: json.dumps(d).replace('"parameters": 1234', '"parameters": 1e400'), "parameters must be"),
        (lambda d: {**d, "parameters": -1}, "parameters must be"),
        (lambda d: {**d, "parameters": "1234"}, "parameters must be"),
        (lambda d: {**d, "format": True}, "unsupported card format True"),
        (lambda d: {**d, "format": 1.0}, "unsupported card format 1.0"),
        (lambda d: {**d, "version": True}, "version must be a string"),
        (lambda d: {**d, "version": 7}, "version must be a string"),
        (lambda d: {**d, "arch": None}, "arch must be a string"),
        (lambda d: {**d, "created": 2026}, "created must be a string"),
        (lambda d: {**d, "metrics": []}, "metrics must be an object"),
        (lambda d: {**d, "data": {}}, "data must be a list"),
        (lambda d: {**d, "data_hash": 5}, "data_hash must be a string"),
        (lambda d: {**d, "training": "fast"}, "training must be an object"),
    ],
)
def test_a_malformed_card_is_a_model_file_error_naming_the_field(tmp_path: Path, edit, field: str):
    make_folder(tmp_path)
    _edit_card(tmp_path, edit)
    with pytest.raises(ModelFileError, match="invalid model card: ") as refused:
        load_card(tmp_path, verify=False)
    assert field in str(refused.value)


def test_a_card_with_only_the_required_fields_loads(tmp_path: Path):
    written = make_folder(tmp_path)
    keep = ("format", "version", "labels", "crop", "arch", "created", "files")
    _edit_card(tmp_path, lambda d: {k: d[k] for k in keep})
    loaded = load_card(tmp_path)
    assert loaded.files == written.files and loaded.parameters == 0 and loaded.metrics == {}
    assert isinstance(loaded.crop.size, int) and isinstance(loaded.crop.margin, float)
