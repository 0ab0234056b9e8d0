"""The snapshot disk is full (issue #10).

A snapshot is a convenience for the reviewer; the decision, the door command and the event are
not. With the disk full, incidents are recorded without a snapshot path, the failure is logged
once (not once per incident), nothing half-written is left behind, and snapshots resume with
the first incident after space returns. Once with the write failing as a full disk fails
(ENOSPC), and once on a real full filesystem: a 64 KiB tmpfs (needs root; skipped otherwise).
"""

from __future__ import annotations

import errno
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from maskgate.core import Action, Box, Label
from maskgate.gate.build import make_agent
from maskgate.gate.snapshots import SnapshotWriter
from tests.faults.conftest import MakeGate, clip_frames, next_person, run_clip
from tests.gate.comms.brokers import make_decision

pytestmark = pytest.mark.faults

UNMASKED = "yash42828_test_no_mask.mp4"  # one man, refused once: an incident, so a snapshot
NO_SPACE = "cannot save snapshot"


def snapshot_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and NO_SPACE in r.getMessage()]


def test_a_failing_disk_costs_the_snapshot_only_and_is_logged_once(tmp_path, monkeypatch, caplog):
    writer = SnapshotWriter(tmp_path / "snapshots")
    image = clip_frames(UNMASKED, limit=1)[0]
    box = Box(250, 40, 390, 180)
    incident = {"action": Action.DENY, "label": Label.WITHOUT_MASK}

    def no_space(self: Path, data: bytes) -> int:
        with self.open("wb") as stream:
            stream.write(data[:100])  # some of it made it to the disk
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    with monkeypatch.context() as patch, caplog.at_level(logging.DEBUG, logger="maskgate.gate.snapshots"):
        patch.setattr(Path, "write_bytes", no_space)
        assert [writer.save(image, box, make_decision(**incident)) for _ in range(3)] == [None] * 3
    assert len(snapshot_errors(caplog)) == 1 and "No space left on device" in caplog.text
    assert writer.failures == 3
    assert not [p for p in (tmp_path / "snapshots").rglob("*") if p.is_file()]  # no half JPEGs
    saved = writer.save(image, box, make_decision(**incident))
    assert saved is not None and cv2.imread(str(tmp_path / "snapshots" / saved)) is not None
    assert "snapshots are saved again, after 3 failed" in caplog.text


@pytest.fixture
def full_disk(tmp_path) -> Iterator[tuple[Path, Path]]:
    """A 64 KiB tmpfs, filled up: (its mount point, the file that fills it)."""
    mount_point = tmp_path / "snapshots"
    mount_point.mkdir()
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount command here: the real full-disk variant needs one")
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        filler = mount_point / "filler"
        with filler.open("wb", buffering=0) as stream:  # unbuffered: nothing left to flush at close
            try:
                while True:
                    stream.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield mount_point, filler
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.integration
@pytest.mark.slow
def test_snapshots_on_a_full_filesystem(make_gate: MakeGate, detector, full_disk, caplog):
    mount_point, filler = full_disk
    gate = make_gate()
    writer = SnapshotWriter(mount_point)
    agent = make_agent(gate.config, gate.link, detector)
    agent.snapshots = writer
    with caplog.at_level(logging.INFO):
        while_full = run_clip(agent, UNMASKED)
        next_person(agent)
        while_full += run_clip(agent, UNMASKED)
        freed = time.monotonic()
        filler.unlink()  # space returns
        next_person(agent)
        after = run_clip(agent, UNMASKED)
        resumed_s = time.monotonic() - freed
    assert [d.action for d in while_full + after] == [Action.DENY] * 3
    gate.check_delivery(while_full + after)
    events = {e.event_id: e for e in gate.events()}
    assert [events[d.decision_id].snapshot_path for d in while_full] == [None, None]
    assert all(events[d.decision_id].is_incident for d in while_full + after)  # still for review
    path = events[after[0].decision_id].snapshot_path
    assert path is not None and cv2.imread(str(mount_point / path)) is not None
    assert len(snapshot_errors(caplog)) == 1 and "No space left on device" in caplog.text
    assert "snapshots are saved again, after 2 failed" in caplog.text
    assert not list(mount_point.rglob("*.part"))
    print(
        f"\nfull disk: 2 incidents recorded without snapshots, 1 error logged; the first incident after "
        f"space returned had its snapshot ({resumed_s:.2f} s after, the time the next person took)"
    )
