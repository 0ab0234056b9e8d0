"""Sign in and out. Users come from the database (`maskgate user add`); failures are throttled."""

from __future__ import annotations

import contextlib
import logging
import math
from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, session, url_for

from maskgate.dashboard.app import SIGNED_IN_AT, services
from maskgate.dashboard.security import csrf_token
from maskgate.store import UserError

log = logging.getLogger(__name__)

blueprint = Blueprint("auth", __name__)


@blueprint.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return render_template("login.html", next=_safe_next(request.args.get("next")))
    username = request.form.get("username", "").strip()[:64]
    password = request.form.get("password", "")[:1024]
    next_url = _safe_next(request.form.get("next"))
    address = request.remote_addr or "unknown"
    throttle = services().throttle
    wait = throttle.begin(username, address)  # counted as a failure until it succeeds
    if wait > 0:
        message = f"Too many failed sign-ins. Try again in {math.ceil(wait / 60)} min."
        return render_template("login.html", error=message, next=next_url, username=username), 429
    user = services().users.authenticate(username, password) if username and password else None
    if user is None:
        log.warning("failed sign-in for %r from %s", username, address)
        return render_template(
            "login.html", error="Wrong user name or password.", next=next_url, username=username
        ), 401
    throttle.succeeded(username, address)
    session.clear()  # a fresh session (and CSRF token) on every sign-in: no session fixation
    session.permanent = True
    session["user"] = user.username
    session[SIGNED_IN_AT] = services().clock().timestamp()  # the session ends 8 h after this, however busy
    csrf_token()
    log.info("%s signed in from %s", user.username, address)
    return redirect(next_url)


@blueprint.post("/logout")
def logout():
    # The session is a signed cookie: clearing it here does nothing to a copy of it (another
    # tab, another device, a stolen one). Moving the user's cut-off ends them all.
    username = session.get("user")
    if username:
        with contextlib.suppress(UserError):  # the user was removed meanwhile: nothing left to end
            services().users.end_sessions(username, at=services().clock())
    session.clear()
    return redirect(url_for("auth.login"))


def _safe_next(value: str | None) -> str:
    """Only a path on this site: `//evil.example` or `https://...` would be an open redirect.

    Whitespace and control characters are refused too: URL parsers (Python's, the browser's)
    drop tabs and newlines, so `/<TAB>/evil.example` would become `//evil.example` on the way out.
    """
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(char.isspace() or not char.isprintable() for char in value)
    ):
        return url_for("overview.index")
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return url_for("overview.index")
    return value
