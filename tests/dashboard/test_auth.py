"""Signing in and out, the login throttle, session cookies, and that every route needs a login."""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest

from maskgate.config import ConfigError
from maskgate.dashboard.app import SESSION_LIFETIME, SIGNED_IN_AT, create_app, services
from maskgate.dashboard.queries import ROW_ID
from maskgate.dashboard.security import LoginThrottle

from .conftest import PASSWORD, dashboard_config, signed_in

pytestmark = pytest.mark.security

PUBLIC = {"/login", "/healthz", "/static/<path:filename>"}


def _login_form(client, next_url: str | None = None):
    page = client.get("/login" + (f"?next={next_url}" if next_url else ""))
    assert page.status_code == 200
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def _login(client, username="alice", password=PASSWORD, next_url="", token=None, environ=None):
    token = token or _login_form(client)
    data = {"csrf_token": token, "username": username, "password": password, "next": next_url}
    return client.post("/login", data=data, environ_base=environ or {})


def sample_url(rule) -> str:
    """`rule` with a made-up value for each of its variables."""
    samples = {
        "<uuid:event_id>": str(uuid.uuid4()),
        f"<{ROW_ID}:run_id>": "1",
        "<version>": "v1",
        "<name>": "p.png",
    }
    url = rule.rule
    for variable, value in samples.items():
        url = url.replace(variable, value)
    assert "<" not in url, f"no sample value for a variable of {rule.rule}"
    return url


def _routes(app):
    for rule in app.url_map.iter_rules():
        if rule.rule in PUBLIC:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule, method


def test_every_route_requires_login(app, anonymous):
    checked = 0
    for rule, method in _routes(app):
        url = sample_url(rule)
        response = anonymous.open(url, method=method)
        if rule.rule.startswith("/api/"):
            assert response.status_code == 401, (method, url)
            assert response.json == {"error": "sign in first"}
        else:
            assert response.status_code == 302, (method, url)
            assert response.headers["Location"].startswith("/login?next="), (method, url)
        checked += 1
    assert checked >= 30


def test_login_then_pages_open(app, anonymous):
    response = _login(anonymous, next_url="/gates")
    assert response.status_code == 302 and response.headers["Location"] == "/gates"
    assert anonymous.get("/gates").status_code == 200
    assert anonymous.get("/api/v1/me").json["username"] == "alice"


def test_session_cookie_flags(app, anonymous):
    response = _login(anonymous)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # the test config turns secure cookies off


def test_secure_cookies_are_marked_secure(migrated_engine, users, tmp_path):
    config = dashboard_config("sqlite://", tmp_path)
    config = replace(config, dashboard=replace(config.dashboard, secure_cookies=True))
    app = create_app(config, engine=migrated_engine)
    client = app.test_client()
    response = client.get("/login", base_url="https://localhost")
    assert "Secure" in response.headers["Set-Cookie"]
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    # HSTS only over HTTPS (a browser ignores it on plain HTTP, and it would be a lie there)
    assert "Strict-Transport-Security" not in client.get("/login").headers


def test_no_hsts_without_secure_cookies(app, anonymous):
    assert "Strict-Transport-Security" not in anonymous.get("/login", base_url="https://localhost").headers


def test_sign_in_rotates_the_csrf_token(app, anonymous):
    before = _login_form(anonymous)
    _login(anonymous, token=before)
    after = anonymous.get("/api/v1/me").json["csrf_token"]
    assert after != before


def test_wrong_password_and_unknown_user(app, anonymous):
    assert _login(anonymous, password="wrong password").status_code == 401
    assert _login(anonymous, username="mallory").status_code == 401
    assert anonymous.get("/api/v1/me").status_code == 401


def test_login_without_csrf_token_is_refused(app, anonymous):
    anonymous.get("/login")
    response = anonymous.post("/login", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 400
    assert "CSRF" in response.text
    accented = anonymous.post("/login", data={"csrf_token": "é", "username": "alice", "password": PASSWORD})
    assert accented.status_code == 400 and "CSRF" in accented.text


def test_login_does_not_redirect_off_site(app):
    targets = [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "/\t/evil.example",  # URL parsers drop the tab: it would leave as //evil.example
        "/\n/evil.example",
        "/\r\nSet-Cookie: x=1",
        " //evil.example",
        "javascript:alert(1)",
    ]
    for target in targets:
        response = _login(app.test_client(), next_url=target)
        assert response.status_code == 302, target
        assert response.headers["Location"] == "/", target


def test_login_keeps_a_local_next_with_its_query(app, anonymous):
    response = _login(anonymous, next_url="/events?gate=north&label=with_mask")
    assert response.headers["Location"] == "/events?gate=north&label=with_mask"


def test_a_session_ends_eight_hours_after_sign_in_even_while_polling(app, anonymous, clock):
    _login(anonymous)
    start = clock.now
    for minutes in (1, 60, 7 * 60, 8 * 60 - 1):  # the live events list polls all day
        clock.now = start + timedelta(minutes=minutes)
        response = anonymous.get("/api/v1/events")
        assert response.status_code == 200, minutes
        assert "maskgate_session=" in response.headers.get("Set-Cookie", "")  # Flask renews the cookie
    clock.now = start + SESSION_LIFETIME
    assert anonymous.get("/api/v1/events").status_code == 401
    assert anonymous.get("/").status_code == 302


def test_a_session_without_its_sign_in_time_is_signed_out(app, clock):
    stale = signed_in(app, "alice", at=clock.now - SESSION_LIFETIME - timedelta(seconds=1))
    assert stale.get("/api/v1/me").status_code == 401
    legacy = signed_in(app, "alice")
    with legacy.client.session_transaction() as session:
        del session[SIGNED_IN_AT]
    assert legacy.get("/api/v1/me").status_code == 401


def test_nul_characters_are_refused_before_reaching_the_database(app, admin, anonymous):
    token = _login_form(anonymous)
    response = anonymous.post("/login", data={"csrf_token": token, "username": "al\x00ice", "password": "x"})
    assert response.status_code == 400
    for url in ("/events?gate=%00", "/api/v1/events?gate=a%00b", "/models/v%001/files/p.png", "/?x=%00"):
        assert admin.get(url).status_code == 400, url
    assert admin.api_post("/api/v1/models/v%001/promote").status_code == 400


def test_repeated_failures_lock_the_user(app, anonymous):
    for _ in range(5):
        assert _login(anonymous, password="wrong password").status_code == 401
    locked = _login(anonymous)  # even the right password is refused while locked
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.text
    other = app.test_client()
    assert _login(other, username="victor").status_code == 302  # another user is not locked


def test_repeated_failures_lock_the_address(app):
    services(app).throttle.max_per_ip = 3
    client = app.test_client()
    for name in ("a1", "a2", "a3"):
        _login(client, username=name, password="wrong password", environ={"REMOTE_ADDR": "10.0.0.9"})
    assert _login(client, environ={"REMOTE_ADDR": "10.0.0.9"}).status_code == 429
    assert _login(app.test_client(), environ={"REMOTE_ADDR": "10.0.0.10"}).status_code == 302


def test_throttle_lock_expires_and_success_resets():
    now = [0.0]
    throttle = LoginThrottle(max_per_user=3, max_per_ip=100, window_s=60, lockout_s=300, clock=lambda: now[0])
    for _ in range(2):
        throttle.failed("alice", "1.2.3.4")
    assert throttle.begin("alice", "1.2.3.4") == 0
    throttle.succeeded("alice", "1.2.3.4")
    throttle.failed("alice", "1.2.3.4")
    assert throttle.retry_after("alice", "1.2.3.4") == 0  # the success cleared earlier failures
    throttle.failed("Alice", "1.2.3.4")
    throttle.failed("alice ", "1.2.3.4")
    assert throttle.retry_after("ALICE", "5.6.7.8") == 300  # names compare case-insensitively
    now[0] = 301
    assert throttle.retry_after("alice", "1.2.3.4") == 0


def test_concurrent_guesses_cannot_all_pass_the_throttle():
    """Fifty guesses at once, from fifty addresses: only five reach the (slow) password check."""
    throttle = LoginThrottle(max_per_user=5, max_per_ip=100)
    start = threading.Barrier(50)
    checked = []

    def guess(number: int) -> None:
        start.wait()
        if throttle.begin("alice", f"10.0.0.{number}") == 0:
            time.sleep(0.05)  # scrypt; the password is wrong, and begin() counted it so already
            checked.append(number)

    threads = [threading.Thread(target=guess, args=(number,)) for number in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(checked) == 5
    assert throttle.retry_after("alice", "10.9.9.9") > 0


def test_a_right_password_takes_its_attempt_back():
    throttle = LoginThrottle(max_per_user=5, max_per_ip=3)
    throttle.failed("a1", "10.0.0.9")
    throttle.failed("a2", "10.0.0.9")
    assert throttle.begin("alice", "10.0.0.9") == 0  # the third attempt locks the address while it runs
    assert throttle.begin("bob", "10.0.0.9") > 0
    throttle.succeeded("alice", "10.0.0.9")  # it was right: two failures, no lock
    assert throttle.retry_after("bob", "10.0.0.9") == 0
    throttle.failed("a3", "10.0.0.9")  # the two still count
    assert throttle.retry_after("bob", "10.0.0.9") > 0


def test_throttle_failures_outside_the_window_do_not_count():
    now = [0.0]
    throttle = LoginThrottle(max_per_user=3, window_s=60, clock=lambda: now[0])
    for step in range(6):
        now[0] = step * 40.0  # never three within 60 s
        throttle.failed("bob", "1.1.1.1")
    assert throttle.retry_after("bob", "1.1.1.1") == 0


def test_throttle_memory_is_bounded():
    throttle = LoginThrottle(max_keys=100)
    for i in range(1000):
        throttle.failed(f"user{i}", "1.1.1.1")
    assert len(throttle._failures) <= 100


def test_throttle_does_not_forget_a_lock_to_make_room():
    throttle = LoginThrottle(max_per_user=5, max_per_ip=1000, max_keys=50)
    for i in range(5):
        throttle.failed("alice", f"10.0.0.{i}")
    assert throttle.retry_after("alice", "10.9.9.9") > 0
    for i in range(500):  # made-up names, to push alice's entry out
        throttle.failed(f"guess{i}", f"10.1.{i // 250}.{i % 250}")
    assert len(throttle._failures) <= 50
    assert throttle.retry_after("alice", "10.9.9.9") > 0


def test_logout_needs_post_and_csrf(admin):
    assert admin.client.get("/logout").status_code == 405
    assert admin.client.post("/logout").status_code == 400
    assert admin.post("/logout").status_code == 302
    assert admin.get("/").status_code == 302


def test_a_session_for_a_removed_user_is_signed_out(app):
    from .conftest import signed_in

    ghost = signed_in(app, "ghost")
    assert ghost.get("/api/v1/me").status_code == 401


def test_app_refuses_to_build_without_a_secret(tmp_path):
    config = dashboard_config("sqlite://", tmp_path)
    for key, message in (("", "secret_key is not set"), ("abc", "too short")):
        with pytest.raises(ConfigError, match=message):
            create_app(replace(config, dashboard=replace(config.dashboard, secret_key=key)))


def test_app_refuses_a_bad_cron_line(tmp_path):
    config = dashboard_config("sqlite://", tmp_path, retrain_cron="every night")
    with pytest.raises(ConfigError, match="not a crontab line"):
        create_app(config)


@pytest.mark.security
def test_signing_out_ends_copies_of_the_session_too(app, clock):
    """The session is a signed cookie: a copy kept from before sign-out must not still work."""
    browser = signed_in(app, "alice")
    copy = app.test_client()
    copy.set_cookie(
        app.config["SESSION_COOKIE_NAME"], browser.client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value
    )
    assert copy.get("/api/v1/me").status_code == 200
    clock.now += timedelta(seconds=5)
    assert browser.post("/logout").status_code == 302
    assert copy.get("/api/v1/me").status_code == 401
    clock.now += timedelta(seconds=5)
    assert signed_in(app, "alice").get("/api/v1/me").status_code == 200  # signing in again works


@pytest.mark.security
def test_a_new_password_ends_every_session_signed_in_before_it(app, users, clock):
    before = signed_in(app, "alice")
    assert before.get("/api/v1/me").status_code == 200
    users.set_password("alice", "a brand new password", at=clock.now + timedelta(seconds=1))
    assert before.get("/api/v1/me").status_code == 401
    clock.now += timedelta(seconds=2)
    assert signed_in(app, "alice").get("/api/v1/me").status_code == 200
