"""Home Assistant MQTT discovery: each gate appears as a device with a few sensors.

Sent on every connect and again whenever Home Assistant announces itself on
``homeassistant/status`` (its birth message ``online``), so the configs are not retained:
removing a gate from the broker leaves nothing behind. Every entity shares the gate's
availability topic; ``stopped`` and ``offline`` both show as unavailable.
"""

from __future__ import annotations

import json
from typing import Any

from maskgate import __version__
from maskgate.gate.comms.topics import HOMEASSISTANT_PREFIX, Topics

_AVAILABILITY_TEMPLATE = "{{ 'online' if value == 'online' else 'offline' }}"


def node_id(topics: Topics) -> str:
    """The discovery node id: gate ids are already [A-Za-z0-9_-], which Home Assistant accepts."""
    return f"maskgate_{topics.gate_id}"


def discovery_messages(topics: Topics) -> list[tuple[str, str]]:
    """(topic, JSON config) for every entity of this gate."""
    return [
        _sensor(
            topics,
            "last_decision",
            "Last decision",
            topics.events,
            "{{ value_json.action }}",
            icon="mdi:door",
            json_attributes_topic=topics.events,
        ),
        _sensor(
            topics,
            "fps",
            "Frames per second",
            topics.state,
            "{{ value_json.fps }}",
            unit_of_measurement="fps",
            state_class="measurement",
            icon="mdi:camera-timer",
        ),
        _sensor(
            topics,
            "compliant",
            "Compliant people",
            topics.state,
            "{{ value_json.counters.allow }}",
            state_class="total_increasing",
            icon="mdi:face-mask",
        ),
        _sensor(
            topics,
            "decisions",
            "Decisions",
            topics.state,
            "{{ value_json.counters.decisions }}",
            state_class="total_increasing",
            icon="mdi:account-multiple",
        ),
        _sensor(
            topics,
            "compliance",
            "Compliance",
            topics.state,
            "{{ ((value_json.compliance or 0) * 100) | round(1) }}",
            unit_of_measurement="%",
            state_class="measurement",
            icon="mdi:percent",
        ),
    ]


def _sensor(
    topics: Topics, object_id: str, name: str, state_topic: str, template: str, **extra: Any
) -> tuple[str, str]:
    node = node_id(topics)
    config = {
        "name": name,
        "unique_id": f"{node}_{object_id}",
        "object_id": f"{node}_{object_id}",
        "state_topic": state_topic,
        "value_template": template,
        "availability_topic": topics.availability,
        "availability_template": _AVAILABILITY_TEMPLATE,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [node],
            "name": f"maskgate {topics.gate_id}",
            "manufacturer": "maskgate",
            "model": "face-mask access gate",
            "sw_version": __version__,
        },
        **extra,
    }
    topic = f"{HOMEASSISTANT_PREFIX}/sensor/{node}/{object_id}/config"
    return topic, json.dumps(config, separators=(",", ":"))
