"""One typed, validated configuration for every maskgate process.

Sources, later ones winning: the defaults below (enough for a local run), an optional
TOML file, and ``MASKGATE_*`` environment variables. A top-level key is
``MASKGATE_<KEY>`` (``MASKGATE_DATABASE_URL``); a nested key joins its path with ``__``
(``MASKGATE_MQTT__URL``). Unknown keys and wrong types raise :class:`ConfigError`
naming the key and where it came from. ``MASKGATE_CONFIG`` names the file when no
``--config`` is given; variables starting ``MASKGATE_TEST_`` belong to the test suite.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from maskgate.const import (
    CONFIG_ENV_VAR,
    ENV_PREFIX,
    GATE_ID_PATTERN,
    MAX_DOOR_COMMAND_TTL_S,
    MQTT_DEFAULT_PORTS,
    TEST_ENV_PREFIX,
    TOPIC_PREFIX_PATTERN,
)


class ConfigError(ValueError):
    """The configuration is wrong; the message names the key and its source."""


def secret(default: str = "", rule: Rule | None = None, url: bool = False) -> Any:
    """A field whose value is never shown: masked whole when the config is printed or refused.

    `url`: the value is a URL whose password alone is masked (``database_url``); any other
    secret is masked whole, even one that happens to look like a URL.
    """
    return field(default=default, metadata={"secret": "url" if url else True, "rule": rule})


@dataclass(frozen=True)
class Rule:
    """What a value must be, and how to say it in an error ("at least 1").

    `problem`, where given, says precisely what is wrong with a value (None when nothing is),
    in place of "must be ..., got ...".
    """

    holds: Callable[[Any], bool]
    says: str
    problem: Callable[[Any], str | None] | None = None


def checked(problem: Callable[[Any], str | None], says: str) -> Rule:
    """A rule that holds where `problem` finds nothing, and says what it found where not."""
    return Rule(lambda v: problem(v) is None, says, problem)


def _finite(value: Any) -> bool:
    """Not inf or NaN: ``float()`` reads both, and ``inf >= 1`` holds, so a range alone lets them by."""
    return isinstance(value, int) or math.isfinite(value)


def at_least(low: float) -> Rule:
    return Rule(lambda v: _finite(v) and v >= low, f"at least {low}")


def between(low: float, high: float) -> Rule:
    return Rule(lambda v: _finite(v) and low <= v <= high, f"between {low} and {high}")


def duration(high: float) -> Rule:
    """A wait in seconds: above 0, finite and at most `high`."""
    return Rule(lambda v: _finite(v) and 0 < v <= high, f"positive and at most {high}")


POSITIVE = Rule(lambda v: _finite(v) and v > 0, "positive")
FRACTION = between(0, 1)
PORT = between(0, 65535)
# A wait of more than an hour (a reconnect backoff, a stream or ack timeout, a download) is a typo:
# milliseconds written as seconds, a stray zero. A huge one also breaks what it feeds: OpenCV takes
# the stream timeout as int milliseconds, threading waits refuse more than TIMEOUT_MAX.
MAX_WAIT_S = 3600
WAIT = duration(MAX_WAIT_S)
# Retention and look-back in days: more than a century is a typo, and past about 700,000 days the
# cut-off date (now minus the days) is before year 1, which Python cannot represent.
MAX_DAYS = 36500


def each(rule: Rule) -> Rule:
    return Rule(lambda values: all(rule.holds(v) for v in values), f"all {rule.says}")


def ruled(default: Any, rule: Rule) -> Any:
    """A field whose value must satisfy `rule` (checked when a file or the environment sets it)."""
    return field(default=default, metadata={"rule": rule})


def rule_problems(obj: Any, prefix: str = "") -> list[str]:
    """What in dataclass `obj` breaks its fields' rules, as "prefix.key must be ..., got ..."."""
    problems = []
    for f in dataclasses.fields(obj):
        rule, value = f.metadata.get("rule"), getattr(obj, f.name)
        if rule is None or rule.holds(value):
            continue
        if rule.problem is not None:
            problems.append(f"{prefix}{f.name}: {rule.problem(value)}")
        else:
            problems.append(f"{prefix}{f.name} must be {rule.says}, got {_shown(value, f)}")
    return problems


def _shown(value: Any, f: dataclasses.Field | None = None) -> str:
    """`value` fit for an error message: a secret never, a URL without its password."""
    secret_kind = f.metadata.get("secret") if f is not None else None
    if secret_kind and secret_kind != "url":
        return f"{type(value).__name__} (value not shown: a secret)"
    if isinstance(value, str) and "://" in value:
        return repr(mask_url(value))
    return repr(value)


# -- what the commands will use: checked here, so that `maskgate config check` refuses it too ------------

GATE_ID = Rule(lambda v: GATE_ID_PATTERN.fullmatch(v) is not None, "1-64 letters, digits, '-' or '_'")
TOPIC_PREFIX = Rule(
    lambda v: TOPIC_PREFIX_PATTERN.fullmatch(v) is not None,
    "1-4 levels of 1-64 letters, digits, '-' or '_', joined by '/'",
)


def mqtt_url_problem(url: str) -> str | None:
    """Why `url` cannot name the MQTT broker, or None; never echoes a password."""
    shown = repr(mask_url(url))
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return f"{shown}: not a URL; use mqtt://host:port or mqtts://host:port"
    if parts.scheme not in MQTT_DEFAULT_PORTS:
        return f"{shown}: use mqtt://host:port or mqtts://host:port"
    if parts.username or parts.password:
        return "put credentials in mqtt.username and mqtt.password, not the URL"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{shown}: a broker URL has no path or query"
    try:
        port = parts.port
    except ValueError:
        return f"{shown}: bad port"
    if port == 0:
        return f"{shown}: bad port"
    if not parts.hostname:
        return f"{shown}: no host"
    return None


DATABASE_URL_EXAMPLES = "sqlite:///var/maskgate.sqlite or postgresql://user@host/db"


def database_url_problem(url: str) -> str | None:
    """Why `url` cannot name maskgate's database, or None; the store's `parse_database_url` asks this."""
    from sqlalchemy.engine import make_url  # here: the config alone does not need SQLAlchemy loaded
    from sqlalchemy.exc import ArgumentError

    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        return f"malformed database URL {mask_url(url)!r}: expected e.g. {DATABASE_URL_EXAMPLES}"
    if backend in ("sqlite", "postgresql"):
        return None
    hint = " (written postgresql://, not postgres://)" if backend == "postgres" else ""
    return f"unsupported database {backend!r} in {mask_url(url)!r}: use sqlite or postgresql{hint}"


@dataclass(frozen=True)
class MqttConfig:
    url: str = ruled(
        "mqtt://127.0.0.1:1883", checked(mqtt_url_problem, "mqtt://host[:port] or mqtts://host[:port]")
    )  # mqtts:// for TLS
    username: str = ""
    password: str = secret()
    topic_prefix: str = ruled("maskgate", TOPIC_PREFIX)
    ca_file: str = ""  # CA bundle for mqtts:// (system store when empty)
    client_cert: str = ""
    client_key: str = ""
    keepalive_s: int = ruled(30, between(1, 65535))  # MQTT's keep alive is a 16-bit number of seconds
    # A door command older than this must not open the door; the controller refuses longer lives.
    door_command_ttl_s: float = ruled(
        3.0,
        Rule(lambda v: 0 < v <= MAX_DOOR_COMMAND_TTL_S, f"above 0 and at most {MAX_DOOR_COMMAND_TTL_S}"),
    )
    ack_timeout_s: float = ruled(5.0, WAIT)
    command_secret: str = secret()  # per-gate HMAC key for signed door commands (off when empty)
    homeassistant_discovery: bool = False


@dataclass(frozen=True)
class CameraConfig:
    source: str = "synthetic"  # camera index, stream URL, video file, image folder or "synthetic"
    width: int = ruled(640, at_least(16))
    height: int = ruled(480, at_least(16))
    reconnect_initial_s: float = ruled(0.5, WAIT)
    reconnect_max_s: float = ruled(10.0, WAIT)
    # A stream that cannot be opened, or sends nothing, for this long is given up and reopened;
    # OpenCV's own default is 30 s, during which a stalled stream blocks the capture thread.
    stream_timeout_s: float = ruled(5.0, WAIT)
    # A live source with no frame for this long is reported not ok, even while its reader is
    # still blocked in a read that has not failed yet (a stalled stream, a hung driver).
    stale_after_s: float = ruled(2.0, WAIT)


@dataclass(frozen=True)
class DetectorConfig:
    kind: Literal["mtcnn", "mtcnn-litert"] = "mtcnn-litert"  # "mtcnn" is the TensorFlow reference
    min_face_size: int = ruled(40, at_least(12))  # pixels at the working resolution (P-net sees 12)
    # P-, R- and O-net of the nets `model` names (the stock nets when it is "")
    thresholds: tuple[float, float, float] = ruled((0.6, 0.7, 0.8), each(FRACTION))
    scale_factor: float = ruled(0.709, between(0.1, 0.95))  # pyramid step; near 1 it never ends
    working_width: int = ruled(640, at_least(48))  # frames are scaled to this width before detection
    model: str = ""  # detector folder (maskgate train-detector); "" = the stock MTCNN weights
    # Map detected boxes through the detector folder's learned box calibration before cropping
    # (`maskgate calibrate-detector`; docs/detector.md). The shipped classifier learned from
    # calibrated crops: switched off, it misses most masks worn on the chin.
    box_calibration: bool = True
    # With a detector folder in `model`, also run the stock nets: faces they find are cropped around
    # the stock box, the folder's nets add the faces they miss (docs/detector.md). Ignored without `model`.
    with_stock: bool = False
    # ...where the stock ONet scores the added face at least this (0 = no check, and a warning): it turns away
    # false faces a tuned net finds, which the classifier may call masked. Lower keeps more masked
    # faces, but false ones score up to 0.16: at 0.05 a wall counts toward opening (docs/detector.md).
    stock_check: float = ruled(0.3, FRACTION)
    # ...and the stock nets' own stage thresholds there (`thresholds` are the folder's nets'): the
    # reference ones, so that every face the stock nets find alone is still found.
    stock_thresholds: tuple[float, float, float] = ruled((0.6, 0.7, 0.8), each(FRACTION))
    # ...and where the folder has a face-check net (`maskgate train-face-check`), an added face the
    # stock ONet scores under `stock_check` but at least `face_check_floor` passes when that net
    # scores it at least `face_check` (0 = not asked): a second opinion trained on the folder's own
    # false faces, which keeps masked faces the stock ONet doubts and turns away walls it half
    # believes (docs/detector.md).
    face_check: float = ruled(0.9, FRACTION)
    # Above 0: a face the stock ONet does not believe at all stays out, whatever the net says.
    face_check_floor: float = ruled(0.05, Rule(lambda v: 0 < v <= 1, "above 0 and at most 1"))


@dataclass(frozen=True)
class PolicyConfig:
    min_face_size: int = ruled(60, at_least(0))  # faces smaller than this (pixels) are not evidence
    min_detector_score: float = ruled(0.9, FRACTION)
    min_track_hits: int = ruled(3, at_least(1))  # frames a track must be seen in before it counts
    track_max_age_s: float = ruled(1.5, WAIT)  # a person unseen for longer is gone (a turn-away is not)
    min_classifications: int = ruled(5, at_least(1))  # evidence needed before a decision
    # Size-weighted share the winning label needs; above a half, so two labels can never both win.
    majority: float = ruled(0.7, Rule(lambda v: 0.5 < v <= 1, "above 0.5 and at most 1"))
    confidence_floor: float = ruled(0.6, FRACTION)  # classifications below this are not evidence
    # ...and for a label that opens the door, below this (fail closed)
    allow_confidence_floor: float = ruled(0.85, FRACTION)
    change_frames: int = ruled(5, at_least(1))  # a new verdict must hold this long to re-issue a decision
    window: int = ruled(15, at_least(1))  # classifications remembered per track
    with_mask: Literal["allow", "deny", "warn"] = "allow"
    without_mask: Literal["allow", "deny", "warn"] = "deny"
    improper_mask: Literal["allow", "deny", "warn"] = "warn"

    def conflicts(self, prefix: str = "policy.") -> list[str]:
        """Settings each within its own range that together would defeat the policy silently."""
        problems = []
        if self.allow_confidence_floor < self.confidence_floor:
            problems.append(
                f"{prefix}allow_confidence_floor ({self.allow_confidence_floor}) must be at least "
                f"{prefix}confidence_floor ({self.confidence_floor}): a look that opens the door must "
                "need more certainty than one that keeps it shut"
            )
        if self.window < self.min_classifications:
            problems.append(
                f"{prefix}window ({self.window}) must be at least {prefix}min_classifications "
                f"({self.min_classifications}): fewer looks are remembered than a decision needs, so "
                "no one would ever be decided on"
            )
        return problems


@dataclass(frozen=True)
class PathsConfig:
    models: Path = Path("models")
    active_model: Path = Path("models/default")
    snapshots: Path = Path("var/snapshots")
    datasets: Path = Path("../shared/datasets")
    # Agent: a local SQLite file where events wait while the central database is unreachable
    # (e.g. "var/spool/gate.sqlite"); "" = off, the agent writes to database_url directly.
    spool: str = ""


@dataclass(frozen=True)
class RetentionConfig:
    events_days: int = ruled(90, between(1, MAX_DAYS))
    # Incidents under review are pinned and never purged.
    incidents_days: int = ruled(365, between(1, MAX_DAYS))


@dataclass(frozen=True)
class DashboardConfig:
    host: str = "127.0.0.1"
    port: int = ruled(8080, PORT)
    secret_key: str = secret()  # Flask session key; required to serve the dashboard
    secure_cookies: bool = True
    retrain_cron: str = "0 2 * * *"  # nightly retraining, minute hour day month weekday
    # Reverse proxies in front whose X-Forwarded-For/-Proto headers are trusted.
    proxy_hops: int = ruled(0, at_least(0))
    metrics_token: str = secret()  # bearer token Prometheus sends for /metrics (>= 16 chars); "" = off


# The permissive shared datasets models/default was trained on.
PERMISSIVE_DATA = ("folders/chandrikadeb7", "folders/comp6721:photos", "scenes/fmd")


@dataclass(frozen=True)
class RetrainConfig:
    """The nightly retraining job (`maskgate retrain`, the dashboard's scheduler)."""

    base_data: tuple[str, ...] = PERMISSIVE_DATA  # PATH[:LAYOUT], relative to paths.datasets
    eval_data: tuple[str, ...] = PERMISSIVE_DATA  # where the frozen evaluation images live
    # The frozen evaluation set: the images of eval_data listed in this manifest under eval_split,
    # matched by sha256. They are never trained on. "" = every image of eval_data.
    eval_manifest: str = "models/default/manifest.csv.gz"
    eval_split: Literal["train", "val", "test"] = "test"
    # Source labels a person found wrong (training/label_review.py), corrected in what the candidate
    # trains on and in both evaluation sets, the champion's scores included. "" = the sources' own.
    label_review: str = "training/label_review.csv"
    arch: Literal["compact", "seed"] = "compact"
    # Networks trained (each from another seed) and averaged into the candidate, as the shipped
    # model averages three: a single network rarely matches an ensemble champion.
    networks: int = ruled(3, between(1, 8))
    crop_size: int = ruled(0, Rule(lambda v: v == 0 or v >= 8, "0 or at least 8"))  # 0: the arch's own
    epochs: int = ruled(40, at_least(1))
    patience: int = ruled(10, at_least(1))
    learning_rate: float = ruled(0.0, at_least(0))  # 0: the architecture's own
    batch_size: int = ruled(64, at_least(1))
    threads: int = ruled(2, at_least(1))
    # Of the pool, for early stopping; no test split: the two sets below test.
    val_share: float = ruled(0.1, Rule(lambda v: 0 < v < 1, "between 0 and 1 (exclusive)"))
    incident_days: int = ruled(30, between(0, MAX_DAYS))  # incidents reviewed this recently may be held out
    # Share of those held out (by content hash: the same ones each night).
    incident_holdout: float = ruled(0.2, FRACTION)
    min_incident_faces: int = ruled(20, at_least(1))  # held-out incident faces needed to reject a candidate
    tolerance_macro_f1: float = ruled(0.01, FRACTION)  # a candidate may be this much worse and be promoted
    tolerance_improper_recall: float = ruled(0.02, FRACTION)
    work_dir: Path = Path("var/retrain")  # per-run folders: links to the data, incident crops, networks
    cache: Path = Path("var/cache/crops")  # crop cache shared with `maskgate train`


@dataclass(frozen=True)
class RolloutConfig:
    """How a promoted model reaches the gates (retained `<prefix>/models/active`, then a fetch)."""

    url: str = ""  # the dashboard as gates reach it; "" = announce the model folder's path instead
    token: str = secret()  # bearer token gates send to download models; at least 16 characters
    cache: Path = Path("var/models")  # gate: where fetched model folders are kept
    timeout_s: float = ruled(30.0, WAIT)  # gate: per download request
    ca_file: str = ""  # gate: CA bundle for an https url (system store when empty)


@dataclass(frozen=True)
class Config:
    gate_id: str = ruled("gate-1", GATE_ID)
    database_url: str = secret(
        "sqlite:///var/maskgate.sqlite", checked(database_url_problem, DATABASE_URL_EXAMPLES), url=True
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_port: int = ruled(0, PORT)  # the agent serves /metrics and /healthz here; 0 = off
    metrics_host: str = "127.0.0.1"
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the TOML file at `path` (or ``$MASKGATE_CONFIG``), then environment overrides."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV_VAR) or None
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read config file: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    config = _apply_environment(_build(Config, raw, source, prefix=""), environ)
    # Across keys only once everything is set: a file and the environment may each set one of two.
    where = f"{source} with MASKGATE_* overrides" if path else "MASKGATE_* environment variables"
    return _consistent(config, where)


def config_from_mapping(raw: Mapping[str, Any], source: str = "config") -> Config:
    """A Config from parsed TOML (nested dicts); `source` names it in errors."""
    return _consistent(_build(Config, raw, source, prefix=""), source)


def _consistent(config: Config, source: str) -> Config:
    """`config` when its keys agree with each other, else ConfigError naming each conflict."""
    problems = config.policy.conflicts()
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}")
    return config


def _apply_environment(config: Config, environ: Mapping[str, str]) -> Config:
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV_VAR or name.startswith(TEST_ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        config = _override(config, path, value, source=f"environment variable {name}")
    return config


def _override(obj: Any, path: list[str], text: str, source: str, done: tuple[str, ...] = ()) -> Any:
    hints = typing.get_type_hints(type(obj))
    key = path[0]
    dotted = ".".join((*done, key))
    if key not in hints:
        raise ConfigError(f"{source}: unknown key {dotted!r}{_suggest(key, hints)}")
    hint = hints[key]
    if len(path) > 1:
        if not dataclasses.is_dataclass(hint):
            raise ConfigError(f"{source}: {dotted!r} is a value, not a section")
        value = _override(getattr(obj, key), path[1:], text, source, (*done, key))
    elif dataclasses.is_dataclass(hint):
        raise ConfigError(f"{source}: {dotted!r} is a section; set one of its keys with __")
    else:
        where = f"{source}: {dotted}"
        value = _convert(_parse_env_value(text, hint, where), hint, where, _field(obj, key))
    return _within_rules(dataclasses.replace(obj, **{key: value}), dotted[: -len(key)], source)


def _parse_env_value(text: str, hint: Any, where: str) -> Any:
    """Environment values are text; lists and tuples are a JSON array or items separated by commas.

    An empty value is an empty list; items are stripped of spaces, and an empty one ("a,,b", "a,")
    is refused rather than read as "" (which a path would take for the current folder).
    """
    if typing.get_origin(hint) not in (tuple, list):
        return text
    if text.strip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    if not text.strip():
        return []
    items = [item.strip() for item in text.split(",")]
    if "" in items:
        raise ConfigError(f"{where}: empty item in {text!r}: separate items with single commas")
    return items


def _field(obj: Any, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(obj) if f.name == name)


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(f"{source}: unknown key {prefix + key!r}{_suggest(key, hints)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, source, prefix=f"{prefix}{key}.")
        else:
            values[key] = _convert(value, hint, f"{source}: {prefix}{key}", _field(cls, key))
    return _within_rules(cls(**values), prefix, source)


def _within_rules(obj: Any, prefix: str, source: str) -> Any:
    """`obj` when its fields keep their rules, else ConfigError naming each broken one and `source`."""
    problems = rule_problems(obj, prefix)
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}")
    return obj


def _suggest(key: str, hints: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(hints), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(hints)})"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(value: Any, hint: Any, where: str, f: dataclasses.Field | None = None) -> Any:
    """`value` as type `hint`; strings from the environment are parsed, TOML types are checked.

    `f` is the field set: an error about a secret one never shows the value.
    """
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(c) for c in typing.get_args(hint))
            raise ConfigError(f"{where}: {_shown(value, f)} is not one of {choices}")
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[str, ...]: any number of one type
            if not isinstance(items, list | tuple):
                raise ConfigError(f"{where}: expected a list, got {_shown(value, f)}")
            if args[0] is str and any(isinstance(item, str) and not item.strip() for item in items):
                raise ConfigError(f"{where}: empty item in {_shown(value, f)}")
            args = (args[0],) * len(items)
        if not isinstance(items, list | tuple) or len(items) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {_shown(value, f)}")
        pairs = enumerate(zip(items, args, strict=True))
        return tuple(_convert(item, kind, f"{where}[{i}]", f) for i, (item, kind) in pairs)
    if isinstance(hint, types.UnionType):
        raise TypeError(f"config field type {hint} is not supported")  # keep the schema simple
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str) and value:
            return Path(value)
    else:
        raise TypeError(f"config field type {hint} is not supported")
    raise ConfigError(f"{where}: expected {_type_name(hint)}, got {_shown(value, f)}")


def _type_name(hint: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}.get(
        hint, str(hint)
    )


MASK = "********"


def as_dict(obj: Any, mask_secrets: bool = True) -> dict[str, Any]:
    """The config as nested plain values, secrets masked (non-empty ones shown as ``********``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = as_dict(value, mask_secrets)
        elif mask_secrets and f.metadata.get("secret") and value:
            out[f.name] = mask_url(value) if f.metadata["secret"] == "url" else MASK
        elif isinstance(value, Path):
            out[f.name] = str(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def mask_url(url: str) -> str:
    """A URL with its passwords hidden: `postgresql://u:secret@h/db` -> `postgresql://u:********@h/db`,
    and a ``password`` (``sslpassword``...) query parameter: `db?password=secret` -> `db?password=********`.
    """
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")  # the last "@": a password may hold "?" or "/"
    if sep and at and ":" in credentials:
        url = f"{scheme}://{credentials.split(':', 1)[0]}:{MASK}@{host}"
    url, question, query = url.partition("?")  # the credentials are masked: the first "?" starts the query
    params = (param.partition("=") for param in query.split("&"))
    query = "&".join(
        f"{key}{eq}{MASK if eq and 'password' in key.lower() else value}" for key, eq, value in params
    )
    return f"{url}{question}{query}"


def to_toml(obj: Any) -> str:
    """Render `as_dict(obj)` as TOML (the subset the config uses)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in as_dict(obj).items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string
