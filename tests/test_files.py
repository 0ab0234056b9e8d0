from __future__ import annotations

import os

from maskgate.files import remove_snapshots, snapshot_file


def test_only_snapshots_inside_the_folder_are_deleted(tmp_path):
    snapshots, outside = tmp_path / "snapshots", tmp_path / "outside.jpg"
    (snapshots / "gate-1" / "2026-11-30").mkdir(parents=True)
    mine = snapshots / "gate-1" / "2026-11-30" / "a.jpg"
    for path in (mine, outside):
        path.write_bytes(b"\xff\xd8 jpeg")
    (snapshots / "link.jpg").symlink_to(outside)  # a link out of the folder
    stored = ["gate-1/2026-11-30/a.jpg", "../outside.jpg", str(outside), "link.jpg", "gone.jpg", ""]
    assert remove_snapshots(snapshots, stored) == 1
    assert not mine.exists() and outside.exists() and os.path.lexists(snapshots / "link.jpg")
    assert snapshot_file(snapshots, "gate-1/2026-11-30/a.jpg") is None
    assert remove_snapshots(snapshots, ["gate-1/2026-11-30/a.jpg"]) == 0  # gone already: nothing to do
