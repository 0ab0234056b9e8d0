"""The gate's MQTT link (DESIGN.md, "MQTT contract"; docs/mqtt.md for integrators).

- :mod:`~maskgate.gate.comms.topics`: topic names;
- :mod:`~maskgate.gate.comms.payloads`: payload types, builders and strict parsers;
- :mod:`~maskgate.gate.comms.signing`: HMAC-SHA256 over the canonical payload;
- :mod:`~maskgate.gate.comms.client`: the paho-mqtt 2 client wrapper (MQTT 5, reconnects);
- :mod:`~maskgate.gate.comms.link`: :class:`DoorLink`, what the agent calls;
- :mod:`~maskgate.gate.comms.models`: the retained active-model announcement;
- :mod:`~maskgate.gate.comms.homeassistant`: Home Assistant MQTT discovery;
- :mod:`~maskgate.gate.comms.localbroker`: a broker for local runs (the configured one, or a
  private Mosquitto).

The reference door controller is :mod:`maskgate.gate.doorsim` (``maskgate door-sim``).
"""

from maskgate.core import AckReason
from maskgate.gate.comms.client import BrokerSettings, IncomingMessage, MqttClient, MqttConfigError, Will
from maskgate.gate.comms.link import DoorLink
from maskgate.gate.comms.models import publish_active_model, subscribe_active_model
from maskgate.gate.comms.payloads import (
    ActiveModel,
    DoorAck,
    DoorAction,
    DoorCommand,
    GateState,
    PayloadError,
    SignatureError,
)
from maskgate.gate.comms.topics import Topics

__all__ = [
    "AckReason",
    "ActiveModel",
    "BrokerSettings",
    "DoorAck",
    "DoorAction",
    "DoorCommand",
    "DoorLink",
    "GateState",
    "IncomingMessage",
    "MqttClient",
    "MqttConfigError",
    "PayloadError",
    "SignatureError",
    "Topics",
    "Will",
    "publish_active_model",
    "subscribe_active_model",
]
