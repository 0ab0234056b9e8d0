"""The model file corrupted on disk (issue #10).

At start, `maskgate agent` refuses a model whose file does not match its card, naming the file,
with exit status 1: tests/gate/test_agent.py (`test_agent_command_refuses_a_bad_model`, marked
`faults`). Here, while the agent runs: a corrupted model announced over MQTT is refused by the
ModelWatcher and the running model keeps serving; the running model's own file corrupted under it
changes nothing until a restart, which then refuses it. The door keeps working throughout.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from maskgate.config import RolloutConfig
from maskgate.core import Action, DoorStatus
from maskgate.gate.build import make_agent
from maskgate.gate.comms.models import publish_active_model
from maskgate.gate.comms.payloads import ActiveModel
from maskgate.gate.reload import ModelWatcher
from maskgate.modelcard import RUNTIME_FILE, ModelFileError, load_card, write_card
from tests.faults.conftest import MakeGate, next_person, run_clip
from tests.gate.comms.brokers import wait_until
from tests.gate.test_agent import MODEL
from tests.gate.test_reload import announcement, copy_model

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

MASKED = "gituatu_mask.mp4"  # a masked man: the shipped model lets him in (tests/gate/test_agent.py)


def flip_bytes(path: Path, start: int, count: int) -> None:
    """Damage the file in place (same inode), as a bad sector or a stray write would."""
    with path.open("r+b") as stream:
        stream.seek(start)
        data = bytearray(stream.read(count))
        stream.seek(start)
        stream.write(bytes(b ^ 0x5A for b in data))


def bytes_flipped(folder: Path) -> tuple[ActiveModel, str]:
    """Damaged after the registry recorded it: the announcement has the good file's sha256."""
    message = announcement(folder)
    flip_bytes(folder / RUNTIME_FILE, 4096, 4096)
    return message, "does not match the sha256"


def cut_short_with_a_matching_card(folder: Path) -> tuple[ActiveModel, str]:
    """A broken export, registered as it is: card and announcement match; only loading it can tell."""
    data = (folder / RUNTIME_FILE).read_bytes()
    (folder / RUNTIME_FILE).write_bytes(data[: len(data) // 2])
    write_card(folder, load_card(folder, verify=False))
    return announcement(folder), "LiteRT cannot load"


@pytest.mark.parametrize("corrupt", [bytes_flipped, cut_short_with_a_matching_card])
def test_a_corrupted_model_announced_while_running_is_refused_and_the_door_keeps_working(
    make_gate: MakeGate, detector, tmp_path, corrupt
):
    refused = []
    rollout = RolloutConfig(cache=tmp_path / "model-cache")
    watcher = ModelWatcher(rollout, on_refused=refused.append, retry_delays_s=())
    gate = make_gate(on_active_model=watcher.offer)
    agent = make_agent(gate.config, gate.link, detector)
    running = agent.classifier
    watcher.attach(agent)
    watcher.start()
    try:
        before = run_clip(agent, MASKED)
        message, why = corrupt(copy_model(tmp_path / "models" / "v-bad", "corrupt-1"))
        announced = time.monotonic()
        publish_active_model(gate.config, message)
        assert wait_until(lambda: refused, timeout=30)
        refused_after_s = time.monotonic() - announced
        assert watcher.wait_idle(30)
        next_person(agent)
        after = run_clip(agent, MASKED)
    finally:
        watcher.stop()
    print(f"\ncorrupted model {corrupt.__name__}: refused {refused_after_s:.2f} s after the announcement")
    assert [r.version for r in refused] == ["corrupt-1"] and why in refused[0].reason
    assert watcher.loaded == [] and agent.classifier is running
    assert [d.action for d in before] == [d.action for d in after] == [Action.ALLOW]
    assert {d.model_version for d in before + after} == {running.version}
    gate.check_delivery(before + after)
    assert [e.door_status for e in gate.events()] == [DoorStatus.OPENED, DoorStatus.OPENED]


def test_the_running_models_file_corrupted_under_it_changes_nothing_until_a_restart(
    make_gate: MakeGate, detector, tmp_path
):
    folder = copy_model(tmp_path / "running", load_card(MODEL).version)
    gate = make_gate()
    agent = make_agent(gate.config, gate.link, detector, model=folder)
    before = run_clip(agent, MASKED)
    # Damaged in place while loaded: the start of the file (where LiteRT keeps the graph's small
    # constants), then cut short. A mapped model would now fail on every frame or say all zeros.
    flip_bytes(folder / RUNTIME_FILE, 0, 64 * 1024)
    with (folder / RUNTIME_FILE).open("r+b") as stream:
        stream.truncate(1000)
    next_person(agent)
    after = run_clip(agent, MASKED)
    assert [d.action for d in before] == [d.action for d in after] == [Action.ALLOW]
    assert after[0].confidence == pytest.approx(before[0].confidence, abs=1e-6)  # the same model
    gate.check_delivery(before + after)
    with pytest.raises(ModelFileError, match=r"model\.tflite does not match the sha256"):
        make_agent(gate.config, gate.link, detector, model=folder)  # a restart refuses it
