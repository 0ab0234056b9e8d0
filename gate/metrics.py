"""The agent's Prometheus metrics and health check, served on one small HTTP port.

    GET /metrics   Prometheus text format
    GET /healthz   JSON; 200 when the agent's frame loop runs, the camera, the central database,
                   (with MQTT) the broker and (with a spool) the local spool are fine, 503 otherwise,
                   naming what is wrong

Each agent owns its own registry, so that tests and several agents in one process never mix
their numbers.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from maskgate.core import Decision

log = logging.getLogger(__name__)

# Stage times are a few milliseconds; a slow detector on a busy box reaches a few hundred.
STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
LATENCY_BUCKETS_S = (0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
# /healthz's "agent" check fails when the frame loop has not come round for this long. A pass takes
# a frame (tens of ms, a few hundred on a busy box) or a wait of at most 0.5 s for one, plus a
# heartbeat every 5 s; twice that interval is never a healthy agent. It is well below SQLite's busy
# timeout (30 s), so an agent waiting on a locked spool (or a hung database) is reported while it
# waits, and a scrape every 15 s sees it.
AGENT_STALLED_AFTER_S = 10.0


@dataclass
class Health:
    """What the health check reports; each check is a callable so it is read when asked."""

    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)

    def report(self) -> tuple[bool, dict[str, bool]]:
        results = {}
        for name, check in self.checks.items():
            try:
                results[name] = bool(check())
            except Exception:  # a failing check is an unhealthy answer, never a crashed endpoint
                log.exception("health check %s failed", name)
                results[name] = False
        return all(results.values()), results


def loop_check(stalled_s: Callable[[], float]) -> Callable[[], bool]:
    """The "agent" check: false once `stalled_s()` (:meth:`Agent.loop_stalled_s`) reaches
    :data:`AGENT_STALLED_AFTER_S` (read when asked, so that tests may lower it)."""
    return lambda: stalled_s() < AGENT_STALLED_AFTER_S


class AgentMetrics:
    def __init__(self, gate_id: str):
        self.registry = CollectorRegistry()
        self.frames = Counter("maskgate_frames", "Frames processed", registry=self.registry)
        self.bad_frames = Counter("maskgate_bad_frames", "Frames skipped as unusable", registry=self.registry)
        self.fps = Gauge(
            "maskgate_fps", "Frames per second processed over the last 5 s", registry=self.registry
        )
        self.stage_seconds = Histogram(
            "maskgate_stage_seconds",
            "Time per pipeline stage",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=self.registry,
        )
        self.decisions = Counter(
            "maskgate_decisions", "Decisions issued", ["label", "action"], registry=self.registry
        )
        self.decision_latency = Histogram(
            "maskgate_decision_latency_seconds",
            "First sighting to decision",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.camera_ok = Gauge(
            "maskgate_camera_ok", "1 while the camera delivers frames", registry=self.registry
        )
        self.broker_connected = Gauge(
            "maskgate_broker_connected", "1 while connected to the MQTT broker", registry=self.registry
        )
        self.database_ok = Gauge(
            "maskgate_database_ok", "1 while the central database answers", registry=self.registry
        )
        self.spool_pending = Gauge(
            "maskgate_spool_pending",
            "Events in the gate's local spool waiting for the central database",
            registry=self.registry,
        )
        self.spool_quarantined = Gauge(
            "maskgate_spool_quarantined",
            "Events the central database refused, kept in the spool for a person to look at",
            registry=self.registry,
        )
        # Read from the spool when there is one; until then (or without one) no reading, not a 0.
        self.spool_pending.set(math.nan)
        self.spool_quarantined.set(math.nan)
        self.outbox_pending = Gauge(
            "maskgate_outbox_pending", "Messages waiting in the outbox", registry=self.registry
        )
        self.model = Info("maskgate_model", "The classifier model in use", registry=self.registry)
        self.gate = Info("maskgate_gate", "This gate", registry=self.registry)
        self.gate.info({"gate_id": gate_id})

    def observe_stage(self, stage: str, milliseconds: float) -> None:
        self.stage_seconds.labels(stage).observe(milliseconds / 1000)

    def observe_decision(self, decision: Decision) -> None:
        self.decisions.labels(decision.label.value, decision.action.value).inc()
        self.decision_latency.observe(decision.latency_ms / 1000)

    def set_model(self, version: str) -> None:
        self.model.info({"version": version})

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """Serves /metrics and /healthz on `host:port` from a daemon thread (port 0: any free port)."""

    def __init__(self, metrics: AgentMetrics, health: Health, host: str = "127.0.0.1", port: int = 9108):
        handler = _handler(metrics, health)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:  # name the address: "Address already in use" alone does not say which
            where = f"metrics_host:metrics_port {host}:{port}"
            raise OSError(exc.errno, exc.strerror or str(exc), where) from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(metrics: AgentMetrics, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            if self.path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, metrics.exposition())
            elif self.path == "/healthz":
                healthy, checks = health.report()
                body = json.dumps({"healthy": healthy, "checks": checks, "time": time.time()}).encode()
                self._send(200 if healthy else 503, "application/json", body)
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # scrapes every few seconds: keep quiet
            log.debug("metrics: " + format, *args)

    return Handler


def _reading(read: Callable[[], float]) -> Callable[[], float]:
    """`read` for a gauge: NaN when it fails, since one raising gauge would break the whole scrape."""

    def value() -> float:
        try:
            return float(read())
        except Exception:
            log.exception("metric reading failed")
            return math.nan

    return value


class AgentMonitor:
    """Keeps one running agent's metrics current and serves them with its health check."""

    def __init__(
        self,
        metrics: AgentMetrics,
        server: MetricsServer,
        outbox_pending: Callable[[], int] | None = None,
        *,
        camera_ok: Callable[[], bool] | None = None,
        broker_connected: Callable[[], bool] | None = None,
        fps: Callable[[], float] | None = None,
        database_ok: Callable[[], bool] | None = None,
        spool_pending: Callable[[], int] | None = None,
        spool_quarantined: Callable[[], int] | None = None,
    ):
        """The gauges given a callable are read when Prometheus scrapes, on the server's thread: a
        database that is slow to answer must never stall the agent loop's heartbeat, and a loop that
        is stuck must not freeze them (the camera, the broker and the frame rate say how things are
        now, and the frame rate falls to 0).
        """
        self.metrics = metrics
        self.server = server
        readings = (
            (metrics.outbox_pending, outbox_pending),
            (metrics.camera_ok, camera_ok),
            (metrics.broker_connected, broker_connected),
            (metrics.fps, fps),
            (metrics.database_ok, database_ok),
            (metrics.spool_pending, spool_pending),
            (metrics.spool_quarantined, spool_quarantined),
        )
        for gauge, read in readings:
            if read is not None:
                gauge.set_function(_reading(read))
        self._frames = 0
        self._bad_frames = 0

    def heartbeat(self, stats, model_version: str) -> None:
        """Bring the counters and the model up to date (the agent calls this every few seconds; it
        reads nothing but `stats`)."""
        self.metrics.frames.inc(stats.frames - self._frames)
        self.metrics.bad_frames.inc(stats.bad_frames - self._bad_frames)
        self._frames, self._bad_frames = stats.frames, stats.bad_frames
        self.metrics.set_model(model_version)

    def stop(self) -> None:
        self.server.stop()
