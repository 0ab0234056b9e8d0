"""The real dashboard (waitress, scheduler, PostgreSQL) driven by Debian's Chromium through Playwright.

Signs in, watches an event recorded by the store arrive live, reviews and relabels
incidents, promotes a model, runs the retraining job, and keeps a screenshot of every page
under test-output/screenshots/. Never downloads a browser: /usr/bin/chromium or skip.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskgate.core import LABELS, AckReason, Action, DoorStatus, Event, Label, utcnow
from maskgate.crop import CropSpec
from maskgate.modelcard import ModelCard, load_card
from maskgate.store import EventStore, ModelRegistry, UserStore, make_engine, migrate
from maskgate.training.retrain import register_folder
from tests.conftest import copy_model

from .conftest import PASSWORD
from .live import LiveDashboard, live_dashboard

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).parents[2] / "test-output" / "screenshots"
PROBABILITIES = {
    Label.WITH_MASK: {Label.WITH_MASK: 0.93, Label.WITHOUT_MASK: 0.04, Label.IMPROPER_MASK: 0.03},
    Label.WITHOUT_MASK: {Label.WITH_MASK: 0.08, Label.WITHOUT_MASK: 0.88, Label.IMPROPER_MASK: 0.04},
    Label.IMPROPER_MASK: {Label.WITH_MASK: 0.25, Label.WITHOUT_MASK: 0.1, Label.IMPROPER_MASK: 0.65},
}
ACTIONS = {Label.WITH_MASK: Action.ALLOW, Label.WITHOUT_MASK: Action.DENY, Label.IMPROPER_MASK: Action.WARN}


def event(label: Label, gate_id: str, minutes_ago: float, snapshot: str | None = None) -> Event:
    return Event(
        event_id=uuid.uuid4(),
        gate_id=gate_id,
        track_id=int(minutes_ago * 10),
        occurred_at=utcnow() - timedelta(minutes=minutes_ago),
        label=label,
        action=ACTIONS[label],
        confidence=PROBABILITIES[label][label],
        probabilities=PROBABILITIES[label],
        model_version="m1",
        latency_ms=180.0,
        snapshot_path=snapshot,
    )


def face_image(masked: bool) -> np.ndarray:
    """A drawn face (BGR for cv2.imwrite): skin-coloured oval, eyes, and a mask or a mouth."""
    image = np.full((160, 160, 3), 235, np.uint8)
    cv2.ellipse(image, (80, 85), (50, 65), 0, 0, 360, (150, 180, 225), -1)
    for x in (60, 100):
        cv2.circle(image, (x, 70), 6, (60, 40, 30), -1)
    if masked:
        cv2.rectangle(image, (40, 95), (120, 140), (220, 170, 90), -1)
    else:
        cv2.ellipse(image, (80, 118), (18, 8), 0, 0, 180, (60, 60, 160), 3)
    return image


def plot_image() -> np.ndarray:
    image = np.full((120, 200, 3), 255, np.uint8)
    for i, height in enumerate((90, 60, 75)):
        cv2.rectangle(image, (20 + i * 60, 110 - height), (60 + i * 60, 110), (180, 110, 40), -1)
    return image


@pytest.fixture
def world(postgresql_url: str, tmp_path: Path) -> dict:
    """A migrated PostgreSQL with users, gates, events (incidents with snapshots) and two models."""
    engine = make_engine(postgresql_url)
    migrate.upgrade(engine)
    users = UserStore(engine)
    users.add("alice", PASSWORD, "admin")
    users.add("victor", PASSWORD, "viewer")
    store = EventStore(engine)
    snapshots = tmp_path / "snapshots" / "north"
    snapshots.mkdir(parents=True)
    cv2.imwrite(str(snapshots / "deny.jpg"), face_image(masked=False))
    cv2.imwrite(str(snapshots / "warn.jpg"), face_image(masked=True))
    denied = event(Label.WITHOUT_MASK, "north", 3, "north/deny.jpg")
    warned = event(Label.IMPROPER_MASK, "north", 2, "north/warn.jpg")
    for recorded in (event(Label.WITH_MASK, "north", 10), event(Label.WITH_MASK, "south", 5), denied, warned):
        store.record_event(recorded)
    for days in range(1, 7):
        for i in range(4):
            label = Label.WITHOUT_MASK if (i + days) % 4 == 0 else Label.WITH_MASK
            store.record_event(event(label, ("north", "south")[i % 2], days * 1440 + i))
    now = utcnow()
    store.update_gate("north", availability="online", fps=14.2, model_version="m1", seen_at=now)
    store.update_gate(
        "south", availability="offline", fps=0.0, model_version="m1", seen_at=now - timedelta(hours=1)
    )
    registry = ModelRegistry(engine)
    m1 = tmp_path / "models" / "m1"  # a stand-in, made active here
    m1.mkdir(parents=True)
    card = ModelCard("m1", LABELS, CropSpec(size=96), "compact", "2026-11-29T12:00:00+00:00")
    (m1 / "card.json").write_text(json.dumps(card.to_json()))
    cv2.imwrite(str(m1 / "confusion_matrix.png"), plot_image())
    registry.register("m1", str(m1), "1" * 64, {"macro_f1": 0.88, "recall": {"improper_mask": 0.88}})
    registry.promote("m1")
    # promoted from the page: a folder that verifies (the dashboard refuses one the gates would refuse)
    m2 = copy_model(tmp_path / "models" / "m2", "m2")
    register_folder(registry, m2, load_card(m2), {"macro_f1": 0.92, "recall": {"improper_mask": 0.92}})
    yield {
        "engine": engine,
        "store": store,
        "registry": registry,
        "denied": denied,
        "warned": warned,
        "models": tmp_path / "models",
    }
    engine.dispose()


@pytest.fixture
def server(world, postgresql_url: str, tmp_path: Path, prefix: str) -> Iterator[LiveDashboard]:
    # its announcements (promoting m2) go to a topic prefix of this test's own on the shared broker
    with live_dashboard(postgresql_url, tmp_path, MASKGATE_MQTT__TOPIC_PREFIX=prefix) as running:
        yield running


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is not installed (.ci/run installs it): apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A page on the live dashboard that fails the test on any script error or console error."""
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def on_console(message) -> None:
        # 401 and 403 answers are what the viewer and wrong-password tests provoke on purpose.
        deliberate = "status of 401" in message.text or "status of 403" in message.text
        if message.type == "error" and not deliberate:
            problems.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    context.close()
    assert problems == [], problems


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page, username: str = "alice") -> None:
    page.goto("/login")
    page.fill('input[name="username"]', username)
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')


def test_admin_workflow_in_chromium(page, world, server):
    from playwright.sync_api import expect

    page.goto("/events")
    expect(page).to_have_url(f"{server.url}/login?next=/events")
    screenshot(page, "01-login")
    page.fill('input[name="username"]', "alice")
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    expect(page).to_have_url(f"{server.url}/events")

    # An event recorded by the store appears without a reload.
    page.goto("/")
    expect(page.locator("#today-deny")).to_have_text("1")
    expect(page.locator("svg.chart").first).to_be_visible()
    screenshot(page, "02-overview")
    page.goto("/events")
    expect(page.locator("#live-status")).to_have_text("live")
    # A door that refused a forged command: the reason shows over the door cell of the new row.
    arrived = event(Label.WITHOUT_MASK, "east", 0).with_door(
        DoorStatus.REFUSED, utcnow(), 35.0, AckReason.BAD_SIGNATURE
    )
    world["store"].record_event(arrived)
    row = page.locator(f'tr[data-event-id="{arrived.event_id}"]')
    expect(row).to_be_visible(timeout=15_000)
    expect(page.locator("table.events tbody tr").first).to_have_attribute(
        "data-event-id", str(arrived.event_id)
    )
    expect(row).to_contain_text("east")
    door = row.locator("td").nth(5)
    expect(door).to_have_text("refused")
    expect(door).to_have_attribute("title", "bad signature")
    screenshot(page, "03-events-live")
    # More than one API page arriving between two polls (a background tab is polled once a minute):
    # every one of them appears, none is skipped. The next poll is held until all are recorded, so
    # that it finds them all at once. Negative minutes: after `arrived`, in order.
    held: list = []

    def hold(route) -> None:
        if held:  # the held poll's follow-up pages go through
            route.continue_()
        else:
            held.append(route)

    page.route("**/api/v1/events?**", hold)
    for _ in range(100):  # the next poll comes within POLL_MS (3 s)
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "the page stopped polling"
    burst = [event(Label.WITH_MASK, "east", -0.001 * (i + 1)) for i in range(130)]
    for later in burst:
        world["store"].record_event(later)
    held[0].continue_()
    expect(page.locator(f'tr[data-event-id="{burst[-1].event_id}"]')).to_be_visible(timeout=15_000)
    shown = page.locator("table.events tbody tr[data-event-id]").evaluate_all(
        "rows => rows.map(r => r.dataset.eventId)"
    )
    assert {str(e.event_id) for e in burst} <= set(shown)
    expect(page.locator("#live-status")).to_have_text("live")

    # Review one incident as it is, relabel another to its true class.
    page.goto("/incidents")
    expect(page.locator(f'tr[data-event-id="{world["denied"].event_id}"]')).to_be_visible()
    screenshot(page, "04-incidents")
    page.click(f'tr[data-event-id="{world["denied"].event_id}"] a')
    expect(page.locator('img[alt="Face snapshot"]')).to_be_visible()
    assert page.evaluate("document.querySelector('img[alt=\"Face snapshot\"]').naturalWidth") == 160
    screenshot(page, "05-incident-review")
    page.click('button[value="confirm"]')
    expect(page.locator(".flash")).to_contain_text("Confirmed as without_mask")
    expect(page.locator("#review-state")).to_contain_text("true label: without_mask")

    page.goto(f"/events/{world['warned'].event_id}")
    page.select_option('select[name="true_label"]', "with_mask")
    page.fill('input[name="note"]', "mask fine, bad light")
    page.click('button[value="relabel"]')
    expect(page.locator(".flash")).to_contain_text("Relabelled to with_mask")
    screenshot(page, "06-incident-relabelled")
    relabelled = world["store"].get_event(world["warned"].event_id)
    assert relabelled.review.true_label is Label.WITH_MASK and relabelled.review.reviewed_by == "alice"
    assert relabelled.review.note == "mask fine, bad light" and relabelled.pinned
    assert world["store"].get_event(world["denied"].event_id).review.true_label is Label.WITHOUT_MASK

    page.goto("/gates")
    expect(page.locator("span.state.offline")).to_have_text("offline")
    screenshot(page, "07-gates")

    # Promote the candidate model.
    page.goto("/models")
    expect(page.locator("#model-m1 .status")).to_have_text("active")
    expect(page.locator('#model-m2 img[alt="confusion_matrix.png"]')).to_be_visible()
    screenshot(page, "08-models")
    page.click("text=Promote m2")
    expect(page.locator(".flash")).to_contain_text("Model m2 is now active")
    expect(page.locator("#model-m2 .status")).to_have_text("active")
    assert world["registry"].active().version == "m2"
    screenshot(page, "09-models-promoted")

    # Run the retraining job now: the scheduler in the server process runs it. Its champion m2 is
    # damaged meanwhile, so that it stops at once rather than train on the shared datasets for an hour.
    (world["models"] / "m2" / "model.tflite").write_bytes(b"damaged")
    page.goto("/schedule")
    expect(page.locator("#next-run")).not_to_have_text("never")
    page.click("text=Run now")
    expect(page.locator("h1")).to_contain_text("Training run #1")
    page.goto("/schedule/runs/1")
    for _ in range(40):
        if page.locator("#run-status").inner_text() != "running":
            break
        page.wait_for_timeout(250)
        page.reload()
    # The real job ran in the server process and stopped at its damaged champion, with that reason.
    expect(page.locator("#run-status")).to_have_text("failed")
    expect(page.locator("pre.log")).to_contain_text("cannot be loaded to compare with")
    screenshot(page, "10-run")
    page.goto("/schedule")
    screenshot(page, "11-schedule")


def test_viewer_reads_but_cannot_change(page, world):
    from playwright.sync_api import expect

    sign_in(page, "victor")
    expect(page.locator("header.top")).to_contain_text("victor (viewer)")
    page.goto(f"/events/{world['denied'].event_id}")
    expect(page.locator("#event-label")).to_contain_text("without_mask")
    expect(page.locator('button[value="relabel"]')).to_have_count(0)
    page.goto("/models")
    expect(page.get_by_text("Promote m2")).to_have_count(0)
    screenshot(page, "12-viewer-models")
    status = page.evaluate(
        """async () => (await fetch('/api/v1/models/m2/promote', {method: 'POST',
             headers: {'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content}})).status"""
    )
    assert status == 403
    assert world["registry"].active().version == "m1"


def test_wrong_password_is_refused(page):
    from playwright.sync_api import expect

    page.goto("/login")
    page.fill('input[name="username"]', "alice")
    page.fill('input[name="password"]', "not the password")
    with page.expect_response(lambda response: response.url.endswith("/login")) as answer:
        page.click('button[type="submit"]')
    assert answer.value.status == 401
    expect(page.locator(".error")).to_have_text("Wrong user name or password.")
