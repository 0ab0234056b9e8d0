"""MQTT door link benchmark: two brokers side by side, in one run.

Prints, for the broker at --url (default the local 127.0.0.1:1883, as configured) and for a
private Mosquitto with deploy/mosquitto's `set_tcp_nodelay true` (when `mosquitto` is installed):
  - decision -> door ack round trip p50/p95: DoorLink.submit() until the ack is recorded on the
    event (SQLite outbox, WAL), one decision at a time, the door controller in its own process;
  - the publish -> ack part of it (the event's door_rtt_ms);
  - sustained events/s with 20 simulated gates submitting at once for --seconds (each gate with
    its own SQLite file, as on a real gate; 20 door controllers in another process): events a
    building system's subscriber received per second, submit -> delivery p50/p95, whether every
    event arrived, and what became of the door commands (a command that could not reach the door
    before its expires_at ends "expired": unsent by the gate, or refused as stale by the door);
  - the same with each gate at a paced --rate (default 5 decisions/s, 100/s in all).

    .venv/bin/python bench/mqtt.py [--url mqtt://127.0.0.1:1883] [--decisions 200] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from stats import percentile  # bench/stats.py

from maskgate.config import Config, MqttConfig
from maskgate.core import Action, Decision, DoorStatus, Event, Label
from maskgate.gate.comms import DoorLink
from maskgate.gate.comms.client import BrokerSettings
from maskgate.store import EventStore, Outbox, make_engine, migrate

GATES = 20


def decision(gate_id: str, n: int) -> Decision:
    label = Label.WITH_MASK if n % 4 else Label.WITHOUT_MASK
    action = Action.ALLOW if label is Label.WITH_MASK else Action.DENY
    return Decision(gate_id, n, action, label, 0.97, {label: 0.97}, "bench", 150.0)


def config_for(url: str, prefix: str, gate_id: str) -> Config:
    mqtt = MqttConfig(url=url, topic_prefix=prefix, command_secret="bench-secret", ack_timeout_s=5.0)
    return Config(gate_id=gate_id, mqtt=mqtt)


def new_store(folder: Path, name: str) -> EventStore:
    engine = make_engine(f"sqlite:///{folder / name}.sqlite")
    migrate.upgrade(engine)
    return EventStore(engine)


# -- brokers and door controllers -------------------------------------------------------------


@contextmanager
def private_broker(folder: Path):
    """A Mosquitto with the deploy config's TCP setting, or None when the binary is missing."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if binary is None:
        yield None
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 100000\n"
    )
    process = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def door_controllers(url: str, prefix: str, gates: list[str]) -> Iterator[Counter[str]]:
    """The door controllers in a process of their own, as a real door would be.

    Yields a Counter that holds, once the block is left, what the doors did with the commands
    (opened, refused, expired, duplicate, rejected): a door sees its own duplicates.
    """
    command = [sys.executable, __file__, "--serve-doors", url, prefix, ",".join(gates)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    outcomes: Counter[str] = Counter()
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield outcomes
    finally:
        process.terminate()
        last = (process.communicate(timeout=10)[0] or "").strip().splitlines()
        if last:
            outcomes.update(json.loads(last[-1]))


def serve_doors(url: str, prefix: str, gates: str) -> None:
    import logging
    import signal

    from maskgate.gate.doorsim import DoorSimulator

    logging.basicConfig(level=logging.ERROR)
    doors = [DoorSimulator(config_for(url, prefix, gate), gate, open_s=0.0) for gate in gates.split(",")]
    for door in doors:
        door.start()
    for door in doors:
        door.client.wait_connected(10)
    time.sleep(0.3)  # subscriptions settle
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    for door in doors:
        door.stop()
    print(json.dumps(sum((door.outcomes for door in doors), Counter())), flush=True)


# -- measurements -------------------------------------------------------------------------------


def clear_retained(url: str, prefix: str, gates: list[str]) -> None:
    """Leave nothing behind on a shared broker: the gates' retained availability (and state)."""
    settings = BrokerSettings.from_config(MqttConfig(url=url))
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-clean-{prefix}", protocol=paho.MQTTv5)
    client.connect(settings.host, settings.port)
    client.loop_start()
    infos = [
        client.publish(f"{prefix}/{g}/{leaf}", b"", qos=1, retain=True)
        for g in gates
        for leaf in ("availability", "state")
    ]
    for info in infos:
        info.wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def round_trip(url: str, folder: Path, count: int) -> dict[str, float]:
    prefix, gate = f"bench-{uuid.uuid4().hex[:6]}", "bench-rt"
    store = new_store(folder, f"rt-{prefix}")
    done = threading.Event()
    link = DoorLink(config_for(url, prefix, gate), store, on_door_status=lambda _event: done.set())
    total, rtt = [], []
    with door_controllers(url, prefix, [gate]):
        link.start()
        link.client.wait_connected(10)
        time.sleep(0.2)
        for n in range(count + 10):
            done.clear()
            start = time.perf_counter()
            event = link.submit(decision(gate, n))
            if not done.wait(5):
                raise RuntimeError(f"no door status for decision {n} within 5 s")
            elapsed = (time.perf_counter() - start) * 1000
            stored = store.get_event(event.event_id)
            if n >= 10:  # the first few warm up connections and caches
                total.append(elapsed)
                rtt.append(stored.door_rtt_ms or float("nan"))
        link.stop()
    clear_retained(url, prefix, [gate])
    return {
        "total_p50": percentile(total, 50),
        "total_p95": percentile(total, 95),
        "rtt_p50": percentile(rtt, 50),
        "rtt_p95": percentile(rtt, 95),
    }


class EventCounter:
    """A building system's subscriber to every gate's events (plain paho)."""

    def __init__(self, url: str, prefix: str):
        settings = BrokerSettings.from_config(MqttConfig(url=url))
        self.arrivals: dict[str, float] = {}
        self.messages = 0
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-counter-{prefix}", protocol=paho.MQTTv5
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/+/events", qos=1)
        self.client.connect(settings.host, settings.port)
        self.client.loop_start()
        subscribed.wait(10)

    def _on_message(self, _client, _userdata, message) -> None:
        now = time.perf_counter()
        event_id = json.loads(message.payload)["event_id"]
        with self._lock:
            self.messages += 1
            self.arrivals.setdefault(event_id, now)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class GateRun:
    """What gates submitting at once produced: submit and delivery times, and what was stored."""

    started: float  # time.perf_counter() when the submitting began
    seconds: float
    submitted: dict[str, float]  # event id -> time.perf_counter() of its submit
    arrivals: dict[str, float]  # event id -> first arrival at the building system's subscriber
    messages: int  # event messages the subscriber received, duplicates included
    stored: dict[str, Event | None]  # event id -> the event as its gate's store has it now
    expired_unsent: int  # door commands that expired in an outbox before they could be sent
    doors: Counter[str]  # what the door controllers did: opened, refused, expired, duplicate, ...

    def summary(self) -> dict[str, float]:
        last = max(self.arrivals.values(), default=self.started + self.seconds)
        latencies = [(self.arrivals[e] - t) * 1000 for e, t in self.submitted.items() if e in self.arrivals]
        outcomes = Counter(event.door_status if event else None for event in self.stored.values())
        return {
            "submitted": len(self.submitted),
            "delivered": len(self.arrivals),
            "duplicates": self.messages - len(self.arrivals),
            "events_per_s": len(self.arrivals) / (last - self.started),
            "submit_per_s": len(self.submitted) / self.seconds,
            "delivery_p50": percentile(latencies, 50),
            "delivery_p95": percentile(latencies, 95),
            "acked": outcomes[DoorStatus.OPENED] + outcomes[DoorStatus.REFUSED],
            "expired": outcomes[DoorStatus.EXPIRED],
            "expired_unsent": self.expired_unsent,
            "no_ack": outcomes[DoorStatus.NO_ACK] + outcomes[None],
        }


def run_gates(
    url: str,
    prefix: str,
    stores: dict[str, EventStore],
    seconds: float,
    rate: float | None,
    while_submitting: AbstractContextManager[object] | None = None,
) -> GateRun:
    """One gate per store submitting at `rate` decisions/s each (None: as fast as it can) for `seconds`.

    Each gate is a DoorLink on its store; the door controllers run in a process of their own and
    a building system's subscriber counts the events. `while_submitting` is entered when the
    gates start submitting and left when they stop (bench/load.py times the dashboard in it).
    """
    gates = list(stores)
    links = {gate: DoorLink(config_for(url, prefix, gate), stores[gate]) for gate in gates}
    submitted: dict[str, float] = {}
    events: dict[str, Event] = {}
    lock = threading.Lock()
    with door_controllers(url, prefix, gates) as doors, ExitStack() as stack:
        counter = EventCounter(url, prefix)
        stack.callback(counter.close)
        for link in links.values():
            link.start()
            stack.callback(link.stop)
        for link in links.values():
            link.client.wait_connected(10)
        time.sleep(0.3)
        start = time.perf_counter()
        end = start + seconds

        def submit_loop(gate: str) -> None:
            n = 0
            while time.perf_counter() < end:
                if rate is not None:
                    time.sleep(max(0.0, start + n / rate - time.perf_counter()))
                at = time.perf_counter()
                event = links[gate].submit(decision(gate, n))
                with lock:
                    submitted[str(event.event_id)] = at
                    events[str(event.event_id)] = event
                n += 1

        threads = [threading.Thread(target=submit_loop, args=(gate,)) for gate in gates]
        with while_submitting or nullcontext():
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        deadline = time.perf_counter() + 60
        while len(counter.arrivals) < len(submitted) and time.perf_counter() < deadline:
            time.sleep(0.05)
        for link in links.values():
            link.wait_idle(30)
        for link in links.values():
            link.stop()
        clear_retained(url, prefix, gates)
        stored = {e: stores[event.gate_id].get_event(event.event_id) for e, event in events.items()}
    return GateRun(
        started=start,
        seconds=seconds,
        submitted=submitted,
        arrivals=dict(counter.arrivals),
        messages=counter.messages,
        stored=stored,
        # Stores may share a database (bench/load.py): count each database's outbox once.
        expired_unsent=sum(
            Outbox(store.engine).counts().expired
            for store in {str(store.engine.url): store for store in stores.values()}.values()
        ),
        doors=doors,
    )


def many_gates(url: str, folder: Path, seconds: float, rate: float | None) -> dict[str, float]:
    """20 gates, each with its own SQLite file as on a real gate, submitting at `rate` for `seconds`."""
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    stores = {gate: new_store(folder, f"{prefix}-{gate}") for gate in gate_ids(GATES)}
    return run_gates(url, prefix, stores, seconds, rate).summary()


def gate_ids(count: int) -> list[str]:
    return [f"gate-{i:02d}" for i in range(count)]


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-doors":
        serve_doors(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", default="mqtt://127.0.0.1:1883", help="the broker to measure (default local)"
    )
    parser.add_argument("--decisions", type=int, default=200, help="sequential decisions for the round trip")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long 20 gates submit at once")
    parser.add_argument("--rate", type=float, default=5.0, help="decisions/s per gate in the paced run")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, private_broker(Path(tmp)) as nodelay_url:
        brokers = {f"{args.url}": args.url}
        if nodelay_url:
            brokers["private, tcp_nodelay"] = nodelay_url
        for name, url in brokers.items():
            folder = Path(tmp) / uuid.uuid4().hex[:6]
            folder.mkdir()
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            flat_out = many_gates(url, folder, args.seconds, None)
            paced = many_gates(url, folder, args.seconds, args.rate)
            results[name] = (
                round_trip(url, folder, args.decisions)
                | {f"max_{key}": value for key, value in flat_out.items()}
                | {f"paced_{key}": value for key, value in paced.items()}
            )
    print_table(results, args)


def print_table(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(
        f"\nMQTT door link on loopback: {args.decisions} sequential decisions; then {GATES} gates submitting "
        f"at once for {args.seconds:g} s.\nSQLite (WAL) outbox per gate; signed commands; door controllers "
        "in their own process; MQTT 5, QoS 1."
    )
    width = max(28, *(len(name) + 2 for name in results))
    print(f"{'':40}" + "".join(f"{name:>{width}}" for name in results))
    rows = [
        ("decision -> ack recorded p50 (ms)", "total_p50", "{:.2f}"),
        ("decision -> ack recorded p95 (ms)", "total_p95", "{:.2f}"),
        ("publish -> ack p50 (ms)", "rtt_p50", "{:.2f}"),
        ("publish -> ack p95 (ms)", "rtt_p95", "{:.2f}"),
    ]
    for run, title in (("max", "as fast as they can"), ("paced", f"{args.rate:g}/s each")):
        rows += [
            (f"{GATES} gates, {title}:", None, ""),
            ("  decisions submitted", f"{run}_submitted", "{:,.0f}"),
            ("  submits/s", f"{run}_submit_per_s", "{:,.0f}"),
            ("  events/s delivered (sustained)", f"{run}_events_per_s", "{:,.0f}"),
            ("  events delivered", f"{run}_delivered", "{:,.0f}"),
            ("  duplicate deliveries", f"{run}_duplicates", "{:,.0f}"),
            ("  submit -> delivery p50 (ms)", f"{run}_delivery_p50", "{:.1f}"),
            ("  submit -> delivery p95 (ms)", f"{run}_delivery_p95", "{:.1f}"),
            ("  door commands acked", f"{run}_acked", "{:,.0f}"),
            ("  door commands expired / no ack", f"{run}_expired", "{:,.0f}"),
            ("  ... expired unsent by the gate", f"{run}_expired_unsent", "{:,.0f}"),
        ]
    for title, key, fmt in rows:
        if key is None:
            print(title)
            continue
        cells = [fmt.format(r[key]) for r in results.values()]
        if key.endswith("_expired"):
            cells = [
                f"{r[key]:,.0f} / {r[key.replace('_expired', '_no_ack')]:,.0f}" for r in results.values()
            ]
        print(f"{title:40}" + "".join(f"{cell:>{width}}" for cell in cells))
    names = list(results)
    if len(names) == 2:
        a, b = (results[n]["total_p50"] for n in names)
        print(f"round trip p50 ratio, {names[0]} / {names[1]}: {a / b:.1f}x")


if __name__ == "__main__":
    main()
