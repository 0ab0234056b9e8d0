"""The Flask app factory: configuration, the services the views share, guards and headers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flask import Flask, abort, current_app, g, jsonify, redirect, render_template, request, session, url_for
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from maskgate import __version__
from maskgate.config import Config, ConfigError
from maskgate.core import utcnow
from maskgate.dashboard import monitoring, security
from maskgate.dashboard.actions import ActionError, ModelHook
from maskgate.dashboard.jobs import RetrainingJob, Trainer, no_trainer
from maskgate.dashboard.queries import BadFilter, PastDayCounts
from maskgate.dashboard.scheduler import DashboardScheduler, parse_cron
from maskgate.store import (
    EventStore,
    InvalidCursorError,
    ModelRegistry,
    ModelVersion,
    TrainingRuns,
    User,
    UserStore,
    make_engine,
)
from maskgate.store.db import error_reason

log = logging.getLogger(__name__)

MIN_SECRET_KEY_CHARS = 16
MAX_REQUEST_BYTES = 64 * 1024  # forms and JSON bodies are tiny; anything bigger is refused (413)
SESSION_LIFETIME = timedelta(hours=8)  # one shift, counted from sign-in (see _session_user)
SIGNED_IN_AT = "signed_in_at"  # session key: when the user signed in (POSIX seconds)
# No session needed: signing in, styles and script, the health check (anyone), the metrics (their own token).
PUBLIC_ENDPOINTS = frozenset(
    {"auth.login", "static", monitoring.HEALTH_ENDPOINT, monitoring.METRICS_ENDPOINT}
)
# Never look up the session: they must answer (the health check's own 503) while the database is down.
SESSIONLESS_ENDPOINTS = frozenset({monitoring.HEALTH_ENDPOINT, monitoring.METRICS_ENDPOINT})
DATABASE_DOWN = "the database is unavailable, try again shortly"


class DashboardConfigError(ConfigError):
    """The dashboard cannot be served with this configuration."""


@dataclass(frozen=True)
class Services:
    """What the views share; one per app, found with :func:`services`."""

    config: Config
    engine: Engine
    events: EventStore
    users: UserStore
    models: ModelRegistry
    runs: TrainingRuns
    scheduler: DashboardScheduler
    throttle: security.LoginThrottle
    on_model_change: ModelHook  # e.g. publish maskgate/models/active
    clock: Callable[[], datetime]
    past_days: PastDayCounts  # the overview's counts of complete days, briefly cached


def services(app: Flask | None = None) -> Services:
    return (app or current_app).extensions["maskgate"]


def _log_model_change(model: ModelVersion) -> None:
    log.info("model %s is now active", model.version)


def create_app(
    config: Config,
    *,
    engine: Engine | None = None,
    trainer: Trainer = no_trainer,
    on_model_change: ModelHook = _log_model_change,
    throttle: security.LoginThrottle | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Flask:
    """The dashboard for `config`. Its scheduler is built but not started: `maskgate dashboard` does that."""
    check_config(config)
    engine = engine or make_engine(config.database_url)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=config.dashboard.secret_key,
        SESSION_COOKIE_NAME="maskgate_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=config.dashboard.secure_cookies,
        # Lax keeps the cookie off cross-site POSTs; every state change also needs the CSRF token.
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_REQUEST_BYTES,
    )
    if config.dashboard.proxy_hops:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=config.dashboard.proxy_hops, x_proto=config.dashboard.proxy_hops
        )
    runs = TrainingRuns(engine)
    app.extensions["maskgate"] = Services(
        config=config,
        engine=engine,
        events=EventStore(engine),
        users=UserStore(engine),
        models=ModelRegistry(engine),
        runs=runs,
        scheduler=DashboardScheduler(config.dashboard.retrain_cron, RetrainingJob(runs, trainer)),
        throttle=throttle or security.LoginThrottle(),
        on_model_change=on_model_change,
        clock=clock,
        past_days=PastDayCounts(),
    )
    monitoring.install(app, services(app))  # first: a request's time includes the guard's
    _install_guards(app)
    _install_templates(app)
    _install_error_pages(app)
    _register_blueprints(app)
    return app


def check_config(config: Config) -> None:
    """Refuse a configuration the dashboard must not be served with."""
    key = config.dashboard.secret_key
    if not key:
        raise DashboardConfigError(
            "dashboard.secret_key is not set: sessions cannot be signed. Set it in the config file or "
            "MASKGATE_DASHBOARD__SECRET_KEY, e.g. to the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if len(key) < MIN_SECRET_KEY_CHARS:
        raise DashboardConfigError(f"dashboard.secret_key is too short: use at least {MIN_SECRET_KEY_CHARS}")
    try:
        parse_cron(config.dashboard.retrain_cron)
    except ValueError as exc:
        raise DashboardConfigError(str(exc)) from None
    problem = monitoring.check_metrics_token(config)
    if problem:
        raise DashboardConfigError(problem)
    if config.rollout.token and len(config.rollout.token) < security.MIN_TOKEN_CHARS:
        # bearer_matches never accepts it: every gate's model download would be refused.
        raise DashboardConfigError(
            f"rollout.token is too short: use at least {security.MIN_TOKEN_CHARS} characters"
        )


def _register_blueprints(app: Flask) -> None:
    from maskgate.dashboard.blueprints import api, auth, events, gates, models, overview, rollout, schedule

    for module in (auth, overview, events, gates, models, schedule, api, rollout):
        app.register_blueprint(module.blueprint)


# -- guards ------------------------------------------------------------------------------------


def wants_json() -> bool:
    return request.path.startswith("/api/")


def _install_guards(app: Flask) -> None:
    @app.before_request
    def guard():
        if _has_nul():
            abort(400, description="NUL characters are not allowed in a request")
        g.user = None if request.endpoint in SESSIONLESS_ENDPOINTS else _session_user()
        if request.endpoint not in PUBLIC_ENDPOINTS and g.user is None and not _gate_authorized():
            if wants_json():
                return jsonify(error="sign in first"), 401
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        if request.method not in security.SAFE_METHODS:
            security.check_csrf()
        return None

    app.after_request(security.set_security_headers)


def _gate_authorized() -> bool:
    """A gate downloading a model with the rollout token (it has no session; see blueprints/rollout.py)."""
    from maskgate.dashboard.blueprints.rollout import gate_authorized

    return gate_authorized()


def _has_nul() -> bool:
    """A NUL in the path, the query or a form field: no name, filter or note may hold one, and
    PostgreSQL refuses them in text (a 500 rather than an answer)."""
    fields = [*request.args.items(multi=True)]
    if request.method not in security.SAFE_METHODS:
        fields += request.form.items(multi=True)
    return "\x00" in request.path or any("\x00" in key or "\x00" in value for key, value in fields)


def _session_user() -> User | None:
    """The signed-in user, read again from the database so that a changed role applies at once.

    A session lasts SESSION_LIFETIME from sign-in. The cookie's own expiry is not enough: Flask
    renews it on every request, so a page that polls (the live events list) would keep it forever.
    """
    username = session.get("user")
    if not username:
        return None
    signed_in_at = session.get(SIGNED_IN_AT)
    fresh = isinstance(signed_in_at, int | float) and (
        services().clock().timestamp() - signed_in_at < SESSION_LIFETIME.total_seconds()
    )
    user = services().users.get(username) if fresh else None
    if user is not None and not user.session_valid(datetime.fromtimestamp(signed_in_at, UTC)):
        user = None  # signed out elsewhere, or the password changed since this sign-in
    if user is None:
        session.clear()
    return user


# -- templates ---------------------------------------------------------------------------------


def _install_templates(app: Flask) -> None:
    app.jinja_env.globals.update(csrf_token=security.csrf_token, version=__version__)
    app.jinja_env.filters.update(when=format_time, ago=format_age)


def format_time(value: datetime | None) -> str:
    """An aware time as UTC, '2026-03-01 14:05:09Z'."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "–"


def format_age(value: datetime | None) -> str:
    """'12 s ago', '5 min ago', '3 h ago', '2 d ago'."""
    if value is None:
        return "never"
    seconds = max(0, int((services().clock() - value).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


# -- errors ------------------------------------------------------------------------------------


def _install_error_pages(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(BadFilter)
    @app.errorhandler(InvalidCursorError)
    def bad_filter(exc: BadFilter | InvalidCursorError):
        return _error(400, str(exc))

    @app.errorhandler(ActionError)
    def action_error(exc: ActionError):
        return _error(exc.status, str(exc))

    @app.errorhandler(SQLAlchemyError)
    def database_error(exc: SQLAlchemyError):
        # One line, no traceback: an outage would otherwise log one per request.
        log.error("%s: database error: %s", request.endpoint or monitoring.UNMATCHED, error_reason(exc))
        return _error(503, DATABASE_DOWN)


def _error(status: int, message: str):
    if wants_json():
        return jsonify(error=message), status
    return render_template("error.html", status=status, message=message), status
