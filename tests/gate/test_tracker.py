"""The tracker with crafted boxes: crossing, occlusion, dropout and return, leaving and entering."""

from __future__ import annotations

from maskgate.core import Box, Face
from maskgate.gate.tracker import Tracker, TrackerConfig

FPS = 10.0


def face(x: float, y: float = 100, side: float = 80) -> Face:
    return Face(Box(x, y, x + side, y + side), 0.99)


def run(tracker: Tracker, frames: list[list[Face]], start: int = 0):
    updates = []
    for n, faces in enumerate(frames, start=start):
        updates.append(tracker.update(faces, n / FPS))
    return updates


def ids(update) -> list[int]:
    """The confirmed tracks of an update: the people who count."""
    return sorted(track.track_id for track in update.confirmed)


def test_a_track_counts_only_after_min_hits():
    tracker = Tracker(TrackerConfig(min_hits=3))
    updates = run(tracker, [[face(100)], [face(104)], [face(108)], [face(112)]])
    assert [ids(u) for u in updates] == [[], [], [1], [1]]


def test_unconfirmed_tracks_are_reported_apart():
    tracker = Tracker(TrackerConfig(min_hits=3))
    update = run(tracker, [[face(100)]])[0]
    assert [(t.track_id, t.hits) for t in update.tracks] == [(1, 1)] and update.confirmed == []


def test_a_single_false_detection_never_counts_or_ends_as_a_person():
    tracker = Tracker(TrackerConfig(min_hits=3, max_age_s=0.5))
    updates = run(tracker, [[face(400)]] + [[]] * 10)
    assert all(u.confirmed == [] and u.ended == [] for u in updates)
    assert tracker.active == 0
    assert [u.dropped for u in updates if u.dropped] == [[1]]  # gone all the same, and said so once
    assert [u.gone for u in updates if u.gone] == [[1]]


def test_two_people_crossing_keep_their_ids():
    # A walks right, B walks left; they pass each other with overlapping boxes.
    frames = [[face(100 + 30 * n), face(500 - 30 * n)] for n in range(14)]
    tracker = Tracker(TrackerConfig(min_hits=2))
    updates = run(tracker, frames)
    first_ids = {t.track_id: t.face.box.x1 for t in updates[2].confirmed}
    last = {t.track_id: t.face.box.x1 for t in updates[-1].confirmed}
    assert set(first_ids) == set(last) == {1, 2}
    left_start = min(first_ids, key=first_ids.get)
    assert last[left_start] > 400  # the one who started on the left ends on the right


def test_dropout_and_return_within_max_age_keeps_the_id():
    frames = [[face(100)]] * 5 + [[]] * 10 + [[face(110)]] * 3  # unseen for 1.0 s
    tracker = Tracker(TrackerConfig(min_hits=3, max_age_s=1.5))
    updates = run(tracker, frames)
    assert ids(updates[-1]) == [1]
    assert all(u.ended == [] for u in updates)


def test_a_long_absence_ends_the_track_and_a_return_is_a_new_person():
    frames = [[face(100)]] * 5 + [[]] * 25 + [[face(100)]] * 3  # unseen for 2.5 s
    tracker = Tracker(TrackerConfig(min_hits=3, max_age_s=1.5))
    updates = run(tracker, frames)
    assert [u.ended for u in updates if u.ended] == [[1]]
    assert ids(updates[-1]) == [2]


def test_occlusion_of_one_person_does_not_swap_ids():
    frames = [[face(100), face(400)]] * 4 + [[face(400)]] * 5 + [[face(100), face(400)]] * 2
    tracker = Tracker(TrackerConfig(min_hits=3))
    updates = run(tracker, frames)
    by_id = {t.track_id: t.face.box.x1 for t in updates[-1].confirmed}
    assert by_id == {1: 100, 2: 400}


def test_a_face_leaving_and_another_entering_get_different_ids():
    frames = [[face(100)]] * 4 + [[face(100), face(500)]] * 4 + [[face(500)]] * 20
    tracker = Tracker(TrackerConfig(min_hits=3, max_age_s=1.0))
    updates = run(tracker, frames)
    assert ids(updates[7]) == [1, 2]
    assert [u.ended for u in updates if u.ended] == [[1]]
    assert ids(updates[-1]) == [2]


def test_a_fast_approach_without_overlap_is_the_same_person():
    # Between two frames the face grows and moves so much that the boxes barely overlap.
    frames = [[face(100, side=80)], [face(100, side=80)], [face(140, y=110, side=110)], [face(220, side=130)]]
    tracker = Tracker(TrackerConfig(min_hits=2))
    updates = run(tracker, frames)
    assert [ids(u) for u in updates] == [[], [1], [1], [1]]
