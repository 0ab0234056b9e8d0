"""docs/mqtt.md is the contract building systems code against: its examples must be messages the
code itself accepts (and, for the event, the fields the code sends)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from maskgate.gate.comms.payloads import (
    event_payload,
    parse_active_model,
    parse_door_ack,
    parse_door_command,
    parse_gate_state,
)

MQTT_DOC = Path(__file__).parents[3] / "docs" / "mqtt.md"
EXAMPLE_SECRET = "example-secret"  # the secret the document's signatures are made with


def example(section: str) -> str:
    """The first JSON block under the document's `## <section>` heading."""
    text = MQTT_DOC.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```json\n(.*?)```", body, re.DOTALL)
    assert found, f"no JSON example under '## {section}' in {MQTT_DOC}"
    return found.group(1)


@pytest.mark.parametrize(
    ("section", "parse"),
    [
        ("Door command", lambda raw: parse_door_command(raw, EXAMPLE_SECRET)),
        ("Door ack", lambda raw: parse_door_ack(raw, EXAMPLE_SECRET)),
        ("State", parse_gate_state),
        ("Active model", parse_active_model),
    ],
)
def test_each_example_message_is_accepted_by_the_strict_parser(section, parse):
    parse(example(section).encode())


def test_the_event_example_has_exactly_the_fields_the_gate_sends(make_event):
    from maskgate.core import Label

    sent = event_payload(make_event(Label.WITH_MASK))
    assert list(json.loads(example("Event"))) == list(sent)
