"""Sign-in throttling, CSRF tokens, role checks and response headers.

CSRF is a small synchronizer token rather than Flask-WTF: the dashboard has a handful of
tiny forms and a JSON API, and one `before_request` check covers both in the same way
(form field ``csrf_token`` or header ``X-CSRF-Token``) without pulling in WTForms.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import abort, current_app, g, request, session

CSRF_SESSION_KEY = "csrf"
CSRF_FORM_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MIN_TOKEN_CHARS = 16  # a configured bearer token shorter than this is never accepted

# Everything is served from this origin: no CDN, no inline script. Inline SVG charts use
# presentation attributes, which CSP does not restrict.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def csrf_token() -> str:
    """This session's CSRF token, created on first use."""
    token = session.get(CSRF_SESSION_KEY)
    if not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def check_csrf() -> None:
    """Abort with 400 unless the request carries this session's CSRF token."""
    expected = session.get(CSRF_SESSION_KEY)
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FORM_FIELD)
    # bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500)
    if not expected or not sent or not hmac.compare_digest(str(expected).encode(), str(sent).encode()):
        abort(400, description="missing or invalid CSRF token: reload the page and try again")


def bearer_matches(expected: str) -> bool:
    """The request carries ``Authorization: Bearer <expected>``, compared in constant time.

    For the clients that have no session (a gate fetching a model, Prometheus scraping). A
    configured token shorter than MIN_TOKEN_CHARS never matches: a guessable token is no lock.
    """
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    if len(expected) < MIN_TOKEN_CHARS or scheme.lower() != "bearer" or not sent:
        return False
    return hmac.compare_digest(sent.strip().encode(), expected.encode())


def admin_required(view: Callable) -> Callable:
    """Only admins may call `view` (reviews, relabels, promotions, jobs); others get 403."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if g.get("user") is None or g.user.role != "admin":
            abort(403, description="this needs the admin role")
        return view(*args, **kwargs)

    return wrapper


@dataclass
class _Failures:
    times: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    locked_by: list[float] = field(default_factory=list)  # the failures that set the lock


class LoginThrottle:
    """Locks a user name, or a client address, after repeated failed sign-ins.

    A user name is locked after `max_per_user` failures within `window_s`, an address after
    `max_per_ip` (higher: many people may share one NAT). A lock lasts `lockout_s`. Locked
    attempts are refused before the password is checked, so guessing gains nothing, and no
    thread sleeps (a sleeping waitress thread would be a cheap way to starve the server).
    State is per process, which is what `maskgate dashboard` runs: one waitress process.

    A sign-in calls :meth:`begin` before checking the password and :meth:`succeeded` when it
    was right. `begin` checks for a lock and counts the attempt as a failure under one lock, so
    guesses sent at the same time cannot all pass the check while the slow password checks run.
    """

    def __init__(
        self,
        max_per_user: int = 5,
        max_per_ip: int = 20,
        window_s: float = 900.0,
        lockout_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ):
        self.max_per_user, self.max_per_ip = max_per_user, max_per_ip
        self.window_s, self.lockout_s = window_s, lockout_s
        self.clock, self.max_keys = clock, max_keys
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until this user name and address may try again (0: now)."""
        now = self.clock()
        with self._lock:
            return self._wait(username, address, now)

    def begin(self, username: str, address: str) -> float:
        """Start a sign-in: the seconds to wait if the name or address is locked (nothing is
        recorded then), else 0, with the attempt counted as a failure until :meth:`succeeded`."""
        now = self.clock()
        with self._lock:
            wait = self._wait(username, address, now)
            if wait == 0:
                self._fail(username, address, now)
            return wait

    def failed(self, username: str, address: str) -> None:
        """A failure that no :meth:`begin` counted."""
        now = self.clock()
        with self._lock:
            self._fail(username, address, now)

    def succeeded(self, username: str, address: str) -> None:
        """The attempt begun for this name and address was right: the name's failures are
        forgotten, and the address gets its attempt back (and any lock that attempt completed)."""
        with self._lock:
            self._failures.pop(_user_key(username), None)
            entry = self._failures.get(_ip_key(address))
            if entry is None:
                return
            if entry.times:
                entry.times.pop()
            elif entry.locked_until > self.clock() and entry.locked_by:
                # the attempt was one of those that set the lock: without it they were too few
                entry.times.extend(entry.locked_by[:-1])
                entry.locked_by, entry.locked_until = [], 0.0

    def _wait(self, username: str, address: str, now: float) -> float:
        waits = [
            entry.locked_until - now
            for key in (_user_key(username), _ip_key(address))
            if (entry := self._failures.get(key)) is not None
        ]
        return max([0.0, *waits])

    def _fail(self, username: str, address: str, now: float) -> None:
        self._record(_user_key(username), self.max_per_user, now)
        self._record(_ip_key(address), self.max_per_ip, now)

    def _record(self, key: str, limit: int, now: float) -> None:
        entry = self._failures.pop(key, None) or _Failures()
        self._failures[key] = entry  # most recently used last, so eviction drops the stalest
        entry.times.append(now)
        while entry.times and entry.times[0] < now - self.window_s:
            entry.times.popleft()
        if len(entry.times) >= limit:
            entry.locked_until = now + self.lockout_s
            entry.locked_by = list(entry.times)
            entry.times.clear()
        if len(self._failures) > self.max_keys:
            self._evict(now)

    def _evict(self, now: float) -> None:
        """Forget the stalest entries, locked ones last: otherwise failing with many made-up
        names (from many addresses) would push a locked name out and unlock it."""
        unlocked = [key for key, entry in self._failures.items() if entry.locked_until <= now]
        excess = len(self._failures) - self.max_keys
        for key in unlocked[:excess]:
            del self._failures[key]
        while len(self._failures) > self.max_keys:  # everything is locked: the stalest goes
            self._failures.popitem(last=False)


def _user_key(username: str) -> str:
    return "user:" + username.strip().lower()


def _ip_key(address: str) -> str:
    return "ip:" + address


HSTS_MAX_AGE_S = 365 * 24 * 3600


def set_security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.is_secure and current_app.config.get("SESSION_COOKIE_SECURE"):
        # Served over HTTPS (directly or behind the trusted proxy): browsers keep to HTTPS for a year.
        response.headers["Strict-Transport-Security"] = f"max-age={HSTS_MAX_AGE_S}"
    if request.endpoint != "static":
        # Pages show personal data: keep them out of shared caches and the back-forward cache.
        response.headers.setdefault("Cache-Control", "no-store")
    return response
