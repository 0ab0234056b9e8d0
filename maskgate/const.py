"""Constants shared across maskgate (names, not tunables: tunables live in the config)."""

import re

ENV_PREFIX = "MASKGATE_"
CONFIG_ENV_VAR = "MASKGATE_CONFIG"  # path of the TOML config when no --config is given
TEST_ENV_PREFIX = "MASKGATE_TEST_"  # variables for the test suite, ignored by the config loader

# Exit codes of the `maskgate` command.
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2

# A door command claiming a longer life than this is refused by the controller, and the gate
# refuses to be configured to send one (mqtt.door_command_ttl_s).
MAX_DOOR_COMMAND_TTL_S = 60

# What may name a model version: the MQTT contract's rule (docs/mqtt.md), which door controllers
# enforce on every message that carries one, so a model card is held to it too.
MODEL_VERSION_PATTERN = re.compile(r"[A-Za-z0-9._:+-]{1,64}")
# Gate ids become topic levels and broker user names (docs/mqtt.md): a "/", "+" or "#" would let one
# gate's id reach another gate's topics, and the door controller's user door.<gate> never is one.
GATE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOPIC_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}")
MQTT_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}

# Face size bands (longer box side, pixels) for metrics and reports.
SIZE_BANDS = ((0, 32, "<32"), (32, 96, "32-96"), (96, 1_000_000, ">=96"))

USER_ROLES = ("admin", "viewer")
MODEL_STATUSES = ("candidate", "active", "retired")
TRAINING_RUN_STATUSES = ("running", "succeeded", "failed", "rejected")
