"""The agent's subcommands: `agent`, `door-sim`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from maskgate.argtypes import non_negative_float, positive_int
from maskgate.cli import UsageError
from maskgate.config import Config
from maskgate.const import EXIT_OK, EXIT_RUNTIME

log = logging.getLogger(__name__)

# Containers OpenCV writes the annotated copy's mp4v video into (not .webm: mp4v is not a WebM codec).
ANNOTATION_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi")
# Everything the agent runs stops within this, together: systemd sends SIGKILL 15 s after SIGTERM
# (TimeoutStopSec, deploy/systemd/maskgate-agent.service), and a killed agent publishes no "stopped"
# and may be cut off mid-write. The 3 s left over are for the summary and the interpreter's exit.
STOP_BUDGET_S = 12.0
DRAIN_S = 2.0  # what the door link's outbox and the spool forwarder get to empty, at most, each
CLIENT_STOP_S = 2.0  # the MQTT client's own stop: its last message ("stopped") and the disconnect


def register(commands: argparse._SubParsersAction) -> None:
    agent = commands.add_parser(
        "agent",
        help="run the gate agent on a camera, stream, file, folder or the synthetic walk-up",
        description="Run the gate agent. It ends by itself at the end of a file, a folder or the "
        "synthetic walk-up; a camera or stream runs until SIGINT/SIGTERM.",
    )
    add_agent_arguments(agent)
    agent.set_defaults(handler=run_agent)
    door_sim = commands.add_parser(
        "door-sim",
        help="run the reference door controller for one gate",
        description="Run the reference door controller: validate the gate's door commands (schema, "
        "signature, replay, expiry), drive a virtual relay, ack. Runs until SIGINT/SIGTERM.",
    )
    add_door_sim_arguments(door_sim)
    door_sim.set_defaults(handler=run_door_sim)


def add_door_sim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gate", required=True, metavar="ID", help="the gate whose door this controls")
    parser.add_argument(
        "--open-s",
        type=non_negative_float,
        default=3.0,
        metavar="S",
        help="how long the relay stays open (default 3, at most 60)",
    )
    parser.add_argument(
        "--max-skew-s",
        type=non_negative_float,
        default=0.5,
        metavar="S",
        help="how far issued_at may be ahead of this clock (default 0.5, at most 60); expiry is checked "
        "strictly",
    )


def run_door_sim(args: argparse.Namespace, config: Config) -> int:
    from maskgate.gate.comms import MqttConfigError
    from maskgate.gate.comms.topics import TopicError
    from maskgate.gate.doorsim import check_max_skew_s, check_open_s
    from maskgate.gate.doorsim import run_door_sim as run

    # argparse has checked that the numbers are finite and not negative; the maxima are the simulator's.
    for option, value, check in (
        ("--open-s", args.open_s, check_open_s),
        ("--max-skew-s", args.max_skew_s, check_max_skew_s),
    ):
        try:
            check(value)
        except ValueError as exc:
            raise UsageError(f"{option}: {exc}") from None
    try:
        return run(config, args.gate, open_s=args.open_s, max_skew_s=args.max_skew_s)
    except (MqttConfigError, TopicError) as exc:
        raise UsageError(str(exc)) from None


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", metavar="SPEC", help="camera index, URL, video file, image folder or 'synthetic'"
    )
    parser.add_argument(
        "--model", type=Path, metavar="DIR", help="model folder (default: paths.active_model)"
    )
    parser.add_argument("--annotate", type=Path, metavar="OUT.mp4", help="write an annotated video")
    parser.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N frames")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="play a file or the walk-up at its frame rate, as a camera would",
    )
    parser.add_argument(
        "--no-mqtt", action="store_true", help="run without a broker: record and print decisions"
    )
    parser.add_argument(
        "--door-from-recording",
        action="store_true",
        help="let a file, a folder or the synthetic walk-up drive the door over MQTT (demos and tests "
        "against door-sim; refused otherwise: a recording must never open a real door)",
    )


def run_agent(args: argparse.Namespace, config: Config) -> int:
    # Heavy imports here, not at registration: `maskgate --help` must stay quick.
    from maskgate.gate.agent import StoreSink
    from maskgate.gate.build import make_agent, make_detector, open_gate_store
    from maskgate.gate.sources import (
        Capture,
        RealtimeReader,
        SourceError,
        SourceSpecError,
        open_reader,
        reopens,
    )
    from maskgate.modelcard import ModelFileError

    if args.annotate is not None:
        _check_video_output(args.annotate)  # before anything starts, not at the first frame
    stores = open_gate_store(config)  # the local spool when paths.spool is set, else the central database
    forwarder = stores.forwarder
    wake = forwarder.wake if forwarder is not None else None
    watcher = None if args.no_mqtt else _model_watcher(config)  # reloads models the dashboard announces
    link = None if watcher is None else _door_link(config, stores.store, watcher, wake)
    try:
        detector = make_detector(config)
        try:
            reader = open_reader(args.source or config.camera.source, config.camera, detector)
        except SourceSpecError as exc:
            raise UsageError(str(exc)) from None
        if link is not None and not reader.live and not args.door_from_recording:
            # A gate left on the default source, or pointed at a clip, would open a real door for
            # people who are not there (and again on every restart): fail closed unless asked.
            raise UsageError(
                f"{reader.name} is a recording, not a camera, and would drive the door of gate "
                f"{config.gate_id} over {config.mqtt.url}: give a camera (--source or camera.source), "
                "--no-mqtt, or --door-from-recording to demo it against a door simulator"
            )
        if args.realtime and not reader.live:
            reader = RealtimeReader(reader)
        sink = link or StoreSink(stores.store)
        if wake is not None:
            sink = _WakingSink(sink, wake)
        agent = make_agent(config, sink, detector, args.model, args.annotate)
    except (ModelFileError, SourceError) as exc:
        print(f"maskgate agent: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if agent.video is not None:
        agent.video = _AtSourceRate(agent.video, reader)
    agent.on_decision = _print_decision
    if watcher is not None:
        watcher.attach(agent)
        watcher.start()
    capture = Capture(reader, config.camera).start()
    stopped = threading.Event()  # asked to stop: a recording cut short before its first frame is no failure

    def stop(*_) -> None:
        stopped.set()
        agent.stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    if forwarder is not None:
        forwarder.start()
    if link is not None:
        link.start()
    monitor = _monitor(config, agent, capture, stores, link)

    def heartbeat(stats) -> None:
        version = agent.classifier.version
        if link is not None:
            link.publish_state(camera_ok=capture.status.ok, fps=stats.fps, model_version=version)
        if monitor is not None:
            monitor.heartbeat(stats, version)

    where = "no broker" if link is None else f"door over {config.mqtt.url}"
    if forwarder is not None:
        where += f", events spooled in {config.paths.spool}"
    print(
        f"gate {config.gate_id}: watching {reader.name} with model {agent.classifier.version}, {where}",
        flush=True,
    )
    try:
        stats = agent.run(capture, args.max_frames, heartbeat=heartbeat)
    finally:
        _shut_down(capture, link, watcher, forwarder, monitor)
    print(
        f"gate {config.gate_id}: {stats.frames} frames at {stats.average_fps:.1f} fps on average, "
        f"{stats.decided} decisions, {stats.bad_frames} bad frames; "
        f"stages p50/p95: {agent.timings.format()}",
        flush=True,
    )
    if capture.status.last_error and not capture.status.frames:
        print(f"maskgate agent: {capture.status.last_error}", file=sys.stderr)
        return EXIT_RUNTIME
    if not reopens(reader) and not stats.frames and not stopped.is_set():
        # A recording that ended without one usable frame ran nothing: that is not a success.
        print(f"maskgate agent: {reader.name} gave no usable frame", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def _shut_down(capture, link, watcher, forwarder, monitor, budget_s: float | None = None) -> None:
    """Stop every part of the agent within one deadline (:data:`STOP_BUDGET_S` from now).

    The parts that only have to end (capture, model watcher) are asked first and end meanwhile;
    the door link and the spool forwarder drain for what is left; then each is waited for, for
    what is left. A part that fails to stop (a database error) is logged and the others still stop;
    a thread that does not end in time is a daemon, left behind.
    """
    deadline = time.monotonic() + (STOP_BUDGET_S if budget_s is None else budget_s)

    def left() -> float:
        return max(0.0, deadline - time.monotonic())

    _stop_part("capture", capture.request_stop)
    if watcher is not None:
        _stop_part("model watcher", watcher.request_stop)
    if link is not None:
        link_s = max(0.0, left() - CLIENT_STOP_S)  # its client's "stopped" comes after drain and join
        _stop_part("door link", lambda: link.stop(drain_s=min(DRAIN_S, link_s), join_s=link_s))
    if forwarder is not None:
        _stop_part("spool forwarder", lambda: forwarder.stop(drain_s=min(DRAIN_S, left()), timeout=left()))
        _stop_part("spool", lambda: _print_spool_left(forwarder))
    if not _stop_part("capture", lambda: capture.join(left())):
        log.warning("capture did not stop in time (a read still blocks); not waited for")
    if watcher is not None and not _stop_part("model watcher", lambda: watcher.join(left())):
        log.warning("model watcher did not stop in time (a model still loads); not waited for")
    if monitor is not None:
        _stop_part("metrics server", monitor.stop)


def _stop_part(part: str, stop: Callable[[], object]) -> object:
    """`stop()`, logging its failure instead of raising it (None then): one part must not keep the
    others running."""
    try:
        return stop()
    except Exception:
        log.exception("stopping the %s failed", part)
        return None


def _check_video_output(path: Path) -> None:
    """Refuse an --annotate path that cannot be written, as a usage error before the run starts.

    Otherwise the first frame fails with a traceback (/proc/out.mp4, /etc/hostname/x), or a
    mistyped folder is created without a word.
    """
    where = f"--annotate {path}"
    if path.suffix.lower() not in ANNOTATION_SUFFIXES:
        raise UsageError(f"{where}: the video's name must end in {', '.join(ANNOTATION_SUFFIXES)}")
    if path.is_dir():
        raise UsageError(f"{where}: is a folder; give a file name in it")
    folder = path.parent
    if not folder.exists():
        raise UsageError(f"{where}: no folder {folder} (it is not created for you)")
    if not folder.is_dir():
        raise UsageError(f"{where}: {folder} is not a folder")
    existed = path.exists()
    try:
        with path.open("ab"):  # "a": an existing file is left as it is until the video replaces it
            pass
    except OSError as exc:
        raise UsageError(f"{where}: cannot write there ({exc.strerror})") from None
    if not existed:
        path.unlink(missing_ok=True)


class _AtSourceRate:
    """The annotated copy at its source's own frame rate, read at the first frame: a reader knows
    its rate only once open (a 25 fps clip was written at 30), and it is opened on the capture thread."""

    def __init__(self, video, reader):
        self.video = video
        self.reader = reader
        self._started = False

    def write(self, image) -> None:
        if not self._started:
            self.video.fps, self._started = self.reader.fps, True
        self.video.write(image)

    def close(self) -> None:
        self.video.close()


def _monitor(config: Config, agent, capture, stores, link):
    """Prometheus metrics and /healthz for this agent, when `metrics_port` is set.

    "database" is the central database; with a spool it is the forwarder's view of it (the gate
    keeps working without it) and "spool" is the local file the door's events depend on.
    """
    if not config.metrics_port:
        return None
    from maskgate.gate.metrics import AgentMetrics, AgentMonitor, Health, MetricsServer, loop_check

    metrics = AgentMetrics(config.gate_id)
    agent.timings.listeners.append(metrics.observe_stage)
    print_decision = agent.on_decision

    def on_decision(decision, event) -> None:
        metrics.observe_decision(decision)
        if print_decision is not None:
            print_decision(decision, event)

    agent.on_decision = on_decision
    checks = {
        "agent": loop_check(agent.loop_stalled_s),  # the frame loop runs: the others can be fine without it
        "camera": lambda: capture.status.ok,
        "database": stores.central_ok,
    }
    if link is not None:
        checks["broker"] = lambda: link.connected
    forwarder = stores.forwarder
    if forwarder is not None:
        checks["spool"] = stores.spool_ok
    server = MetricsServer(metrics, Health(checks), config.metrics_host, config.metrics_port).start()
    # Read at each scrape, on the server's thread, never by the agent loop's heartbeat: a stuck loop
    # must not freeze them, and a slow database must not stall the loop.
    readings = {
        "camera_ok": lambda: capture.status.ok,
        "fps": lambda: agent.stats.fps,  # agent.stats is replaced when a run starts
    }
    if link is not None:
        readings["outbox_pending"] = lambda: link.outbox.counts().pending
        readings["broker_connected"] = lambda: link.connected
    if forwarder is not None:
        readings["database_ok"] = stores.central_ok
        readings["spool_pending"] = forwarder.pending
        readings["spool_quarantined"] = forwarder.quarantined
    return AgentMonitor(metrics, server, **readings)


class _WakingSink:
    """Passes decisions on, then wakes the spool forwarder so the central database hears at once."""

    def __init__(self, sink, wake: Callable[[], None]):
        self.sink = sink
        self.wake = wake

    def submit(self, decision, snapshot_path):
        event = self.sink.submit(decision, snapshot_path)
        self.wake()
        return event


def _print_spool_left(forwarder) -> None:
    """Say on exit what the central database has not received yet (it is forwarded on the next start)."""
    left = forwarder.pending()
    if left:
        print(f"maskgate agent: {left} events wait in the spool for the central database", flush=True)


def _model_watcher(config: Config):
    from maskgate.gate.reload import ModelWatcher

    return ModelWatcher(config.rollout, on_refused=_print_refusal)


def _print_refusal(refusal) -> None:
    print(f"maskgate agent: model {refusal.version} refused: {refusal.reason}", file=sys.stderr, flush=True)


def _door_link(config: Config, store, watcher, wake: Callable[[], None] | None = None):
    """The MQTT link to the door; config mistakes in it are usage errors (exit 2).

    `wake` (the spool forwarder's) is called after each door outcome is recorded.
    """
    from maskgate.gate.comms import MqttConfigError
    from maskgate.gate.comms.link import DoorLink
    from maskgate.gate.comms.topics import TopicError

    def on_door_status(event) -> None:
        _print_door_status(event)
        if wake is not None:
            wake()

    try:
        return DoorLink(config, store, on_door_status=on_door_status, on_active_model=watcher.offer)
    except (MqttConfigError, TopicError) as exc:
        raise UsageError(str(exc)) from None


def _print_door_status(event) -> None:
    rtt = f" in {event.door_rtt_ms:.0f} ms" if event.door_rtt_ms is not None else ""
    status = event.door_status.value
    if event.door_reason and event.door_reason.value != status:
        status += f" ({event.door_reason.value.replace('_', ' ')})"
    print(f"    door for track {event.track_id}: {status}{rtt}", flush=True)


def _print_decision(decision, event) -> None:
    print(
        f"{decision.decided_at:%H:%M:%S} track {decision.track_id}: {decision.action.value.upper()} "
        f"({decision.label.value}, {decision.confidence:.2f}) after {decision.latency_ms:.0f} ms"
        + (f", snapshot {event.snapshot_path}" if event.snapshot_path else ""),
        flush=True,
    )
