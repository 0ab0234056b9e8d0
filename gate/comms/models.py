"""The retained ``<prefix>/models/active`` announcement: which model every gate should run.

The retraining job publishes it when it promotes a model (:func:`publish_active_model`);
agents subscribe (:func:`subscribe_active_model`, or ``DoorLink(on_active_model=...)``) and
reload after checking the file's sha256. Retained, so a gate that starts later learns it too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from maskgate.config import Config
from maskgate.gate.comms.client import BrokerSettings, IncomingMessage, MqttClient, PublishState, connect_once
from maskgate.gate.comms.payloads import ActiveModel, PayloadError, parse_active_model
from maskgate.gate.comms.topics import models_active_topic

log = logging.getLogger("maskgate.gate.models")


class PublishError(RuntimeError):
    """The broker did not take the announcement."""


def publish_active_model(config: Config, model: ActiveModel, timeout: float = 10.0) -> None:
    """Connect, publish `model` as the retained active model, disconnect. Raises on failure."""
    settings = BrokerSettings.from_config(config.mqtt)
    client = connect_once(settings, f"maskgate-models-{uuid.uuid4().hex[:8]}", timeout)
    try:
        topic = models_active_topic(config.mqtt.topic_prefix)
        publication = client.publish(topic, model.encode(), retain=True)
        if publication.wait(timeout) is not PublishState.SENT:
            reason = publication.error or "timeout"
            raise PublishError(f"active model {model.version} not published: {reason}")
    finally:
        client.stop()


def subscribe_active_model(client: MqttClient, prefix: str, callback: Callable[[ActiveModel], None]) -> None:
    """Call `callback` (on the MQTT thread) with every valid announcement; log and drop the rest."""
    topic = models_active_topic(prefix)

    def handle(message: IncomingMessage) -> None:
        if not message.payload:
            return  # an empty retained message clears the topic
        try:
            model = parse_active_model(message.payload)
        except PayloadError as exc:
            log.warning("rejected message on %s: %s", topic, exc)
            return
        callback(model)

    client.subscribe(topic, handle)
