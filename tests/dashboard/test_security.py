"""Security sweep gaps not covered by test_auth/test_guards/test_pages: the guessing rate the sign-in
throttle leaves, body limits before sign-in and in the real server (waitress), hostile JSON.
docs/security.md maps every point of the sweep to its tests."""

from __future__ import annotations

import collections
import socket
from urllib.parse import urlsplit

import pytest

from maskgate.dashboard.app import MAX_REQUEST_BYTES, services
from maskgate.store import make_engine, migrate

from .live import live_dashboard
from .test_auth import _login, _login_form

pytestmark = pytest.mark.security

GUESS_EVERY_S = 10.0


def test_password_guessing_is_held_to_twenty_tries_an_hour(app, anonymous, monkeypatch):
    """One guess every 10 s for an hour: 360 tries, of which the throttle lets 20 reach the password
    check (5 per lockout of 15 min); the others are refused (429) without checking anything."""
    now = [0.0]
    services(app).throttle.clock = lambda: now[0]
    users = services(app).users
    checked = []
    check = users.authenticate
    monkeypatch.setattr(
        users, "authenticate", lambda name, password: checked.append(password) or check(name, password)
    )
    token = _login_form(anonymous)
    statuses: collections.Counter[int] = collections.Counter()
    tries = int(3600 / GUESS_EVERY_S)
    for step in range(tries):
        now[0] = step * GUESS_EVERY_S
        statuses[_login(anonymous, password=f"guess {step}", token=token).status_code] += 1
    assert len(checked) == 20
    assert statuses == {401: 20, 429: tries - 20}


def test_an_oversized_sign_in_is_refused_unread(app, anonymous):
    token = _login_form(anonymous)
    data = {"csrf_token": token, "username": "alice", "password": "x" * MAX_REQUEST_BYTES}
    assert anonymous.post("/login", data=data).status_code == 413
    assert services(app).throttle.retry_after("alice", "127.0.0.1") == 0
    big_json = anonymous.post("/api/v1/schedule/run", data="[" + " " * MAX_REQUEST_BYTES + "]")
    assert big_json.status_code in (401, 413)  # refused before any body is parsed


def test_deeply_nested_json_is_400_not_500(admin, store, make_event):
    event = make_event()
    store.record_event(event)
    depth = 20_000  # deeper than the JSON parser recurses, well under the body limit
    response = admin.client.post(
        f"/api/v1/events/{event.event_id}/review",
        data="[" * depth + "]" * depth,
        headers={"X-CSRF-Token": admin.csrf, "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and "error" in response.json
    assert store.get_event(event.event_id).review is None


# -- the real server --------------------------------------------------------------------------------


def status_line(port: int, head: str, body: bytes = b"") -> str:
    """Send a raw request (its head, and at most part of its body) and return the answer's status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head.encode() + b"\r\n" + body)
        return connection.recv(200).decode(errors="replace").split("\r\n")[0]


@pytest.mark.integration
def test_the_server_refuses_large_bodies_before_reading_them(sqlite_url, tmp_path):
    """waitress itself would read up to 1 GiB (to temporary files) before the app could say 413."""
    migrate.upgrade(make_engine(sqlite_url))
    with live_dashboard(sqlite_url, tmp_path) as server:
        port = urlsplit(server.url).port
        post = "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        # 1 MiB announced, 10 bytes sent: the answer comes at once, nothing is buffered
        assert status_line(port, post + "Content-Length: 1048576\r\n", b"0123456789").startswith(
            "HTTP/1.1 413"
        )
        chunk = b"x" * 8192
        chunks = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * (MAX_REQUEST_BYTES // len(chunk) + 2)
        assert status_line(port, post + "Transfer-Encoding: chunked\r\n", chunks).startswith("HTTP/1.1 413")
