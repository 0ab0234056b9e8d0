"""The dashboard's health check and Prometheus metrics.

    GET /healthz   JSON, no login: 200 when the database answers, 503 naming the failing check.
                   It says nothing else (no version, no address), since anyone may ask.
    GET /metrics   Prometheus text, only with ``Authorization: Bearer <dashboard.metrics_token>``;
                   without a configured token the route does not exist (and requests are not counted).

Why a token rather than "loopback only": behind the reverse proxy on the same host every request
arrives from 127.0.0.1 (or, with ``proxy_hops``, from whatever address the forwarded header
claims), and in the compose file Prometheus reaches the container from the bridge network. The
client's address proves nothing in either case; a token works the same everywhere.

Requests are labelled by endpoint name (the view, e.g. ``events.detail``; ``unmatched`` for a
path no route knows) and status class, never by raw path: a client choosing URLs must not choose
how many series Prometheus stores. What lives in the database (model, events, incidents, runs) is
read when Prometheus scrapes, by a collector, so nothing has to keep it up to date. Each app has
its own registry, so tests and several apps in one process never mix their numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CollectorRegistry, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from maskgate import __version__
from maskgate.config import Config
from maskgate.core import Action
from maskgate.dashboard.queries import count_open_incidents
from maskgate.dashboard.security import MIN_TOKEN_CHARS, bearer_matches
from maskgate.gate.metrics import Health
from maskgate.store import RunStatus
from maskgate.store.db import database_answers

if TYPE_CHECKING:
    from maskgate.dashboard.app import Services

log = logging.getLogger(__name__)

HEALTH_ENDPOINT = "health"
METRICS_ENDPOINT = "metrics"
UNMATCHED = "unmatched"  # the endpoint label of requests no route matched (404, 405)
RECENT = timedelta(hours=1)  # "events stored in the last hour"
_STARTED = "_metrics_started"  # g attribute: when the request began (perf_counter)


def metrics_token(config: Config) -> str:
    """`dashboard.metrics_token`; "" means metrics off."""
    return config.dashboard.metrics_token


def check_metrics_token(config: Config) -> str | None:
    """Why the configured metrics token cannot be used, or None: refused at start, not at every scrape."""
    token = metrics_token(config)
    if token and len(token) < MIN_TOKEN_CHARS:
        return f"dashboard.metrics_token is too short: use at least {MIN_TOKEN_CHARS} characters"
    return None


def install(app: Flask, services: Services) -> None:
    """Serve /healthz, and with a metrics token count requests and serve /metrics.

    Call before the login guard is installed, so that a request's time includes the guard's.
    """
    health = Health({"database": partial(database_answers, services.engine)})  # reason logged, never shown
    app.add_url_rule("/healthz", HEALTH_ENDPOINT, lambda: health_response(health))
    token = metrics_token(services.config)
    if not token:
        return
    registry = CollectorRegistry()
    requests = RequestMetrics(registry)
    registry.register(StoreCollector(services, health.checks["database"]))
    Info("maskgate_dashboard", "This dashboard", registry=registry).info({"version": __version__})
    app.before_request(requests.start)
    app.after_request(requests.finish)
    app.add_url_rule("/metrics", METRICS_ENDPOINT, lambda: metrics_response(token, registry))


# -- health ------------------------------------------------------------------------------------------


def health_response(health: Health) -> tuple[Response, int]:
    """Up or down and which check failed: anyone may ask, so nothing else (no version, no reason)."""
    healthy, checks = health.report()
    return jsonify(status="ok" if healthy else "failing", checks=checks), 200 if healthy else 503


# -- metrics -------------------------------------------------------------------------------------------


def metrics_response(token: str, registry: CollectorRegistry) -> Response:
    """The registry for the bearer of the token only; a browser session is not enough, because
    the scrape credential and the people's credentials are rotated and revoked separately."""
    if not bearer_matches(token):
        response = jsonify(error="send the metrics token: Authorization: Bearer <dashboard.metrics_token>")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="maskgate metrics"'
        return response
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))  # text, or OpenMetrics if asked
    return Response(encode(registry), content_type=content_type)


class RequestMetrics:
    """Request latency by endpoint and status class; the histogram's ``_count`` is the request count."""

    def __init__(self, registry: CollectorRegistry):
        self.seconds = Histogram(
            "maskgate_dashboard_request_seconds",
            "Time to answer a request (a streamed CSV export: until it starts), by endpoint and status class",
            ["endpoint", "status"],
            registry=registry,
        )

    def start(self) -> None:
        setattr(g, _STARTED, time.perf_counter())

    def finish(self, response: Response) -> Response:
        started = g.pop(_STARTED, None)
        if started is not None:  # None only if the request never reached our before_request hook
            status = f"{response.status_code // 100}xx"
            self.seconds.labels(request.endpoint or UNMATCHED, status).observe(time.perf_counter() - started)
        return response


class StoreCollector(Collector):
    """What the database says, read at scrape time: a few small indexed queries every scrape."""

    def __init__(self, services: Services, database_ok: Callable[[], bool]):
        self.services = services
        self.database_ok = database_ok  # the health check's, so /metrics and /healthz agree

    def collect(self) -> Iterator[Metric]:
        ok = self.database_ok()
        yield GaugeMetricFamily(
            "maskgate_dashboard_database_ok", "1 while the database answers", value=float(ok)
        )
        if not ok:
            return
        try:  # gathered first, so that a failure half-way yields nothing misleading
            families = [*self._model(), self._events(), self._incidents(), *self._last_run()]
        except SQLAlchemyError as exc:
            log.warning("metrics: the database failed during a scrape: %s", exc.__class__.__name__)
            return
        yield from families

    def _model(self) -> list[Metric]:
        model = self.services.models.active()
        if model is None:
            return []
        info = {"version": model.version, "sha256": model.sha256}
        return [InfoMetricFamily("maskgate_active_model", "The model the gates are told to run", info)]

    def _events(self) -> Metric:
        since = self.services.clock() - RECENT
        rows = self.services.events.count_events(("action",), since=since)
        counts = {row.action: row.count for row in rows}
        family = GaugeMetricFamily(
            "maskgate_events_last_hour", "Events stored in the last hour, by action", labels=["action"]
        )
        for action in Action:
            family.add_metric([action.value], counts.get(action, 0))
        return family

    def _incidents(self) -> Metric:
        count, _capped = count_open_incidents(self.services.engine)
        return GaugeMetricFamily(
            "maskgate_open_incidents", "Incidents not reviewed yet (counted up to 10,000)", value=count
        )

    def _last_run(self) -> list[Metric]:
        runs = self.services.runs.list_runs(limit=1)
        if not runs:
            return []
        run = runs[0]
        status = GaugeMetricFamily(
            "maskgate_retraining_last_run", "1 for the status of the latest retraining run", labels=["status"]
        )
        for value in RunStatus:
            status.add_metric([value.value], float(run.status is value))
        started = GaugeMetricFamily(
            "maskgate_retraining_last_run_started_timestamp_seconds",
            "When the latest retraining run started",
            value=run.started_at.timestamp(),
        )
        families: list[Metric] = [status, started]
        if run.finished_at is not None:
            families.append(
                GaugeMetricFamily(
                    "maskgate_retraining_last_run_finished_timestamp_seconds",
                    "When the latest retraining run ended",
                    value=run.finished_at.timestamp(),
                )
            )
        return families
