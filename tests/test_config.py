"""Config loading: defaults, TOML, environment overrides and the errors people will make."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maskgate.config import Config, ConfigError, as_dict, config_from_mapping, load_config, to_toml

EXAMPLE = Path(__file__).parents[1] / "deploy" / "maskgate.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "maskgate.toml"
    path.write_text(text)
    return path


def test_defaults_serve_a_local_run():
    config = load_config(environ={})
    assert config == Config()
    assert config.database_url.startswith("sqlite:///")
    assert config.policy.with_mask == "allow"


def test_example_config_loads_and_documents_every_key():
    config = load_config(EXAMPLE, environ={})
    text = EXAMPLE.read_text()
    for section, values in as_dict(config).items():
        if isinstance(values, dict):
            assert f"[{section}]" in text
            for key in values:
                assert f"{key} =" in text, f"{section}.{key} is not in the example config"
        else:
            assert f"{section} =" in text


def test_file_values(tmp_path):
    path = write(
        tmp_path,
        'gate_id = "north"\n[mqtt]\nurl = "mqtts://broker:8883"\n[detector]\nthresholds = [0.5, 0.6, 0.7]\n'
        "[policy]\nmajority = 1\n",
    )
    config = load_config(path, environ={})
    assert config.gate_id == "north"
    assert config.mqtt.url == "mqtts://broker:8883"
    assert config.detector.thresholds == (0.5, 0.6, 0.7)
    assert config.policy.majority == 1.0 and isinstance(config.policy.majority, float)
    assert config.mqtt.topic_prefix == "maskgate"  # untouched keys keep their defaults


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, 'gate_id = "north"\n[mqtt]\nkeepalive_s = 10\n')
    environ = {
        "MASKGATE_GATE_ID": "south",
        "MASKGATE_DATABASE_URL": "postgresql://db/maskgate",
        "MASKGATE_MQTT__KEEPALIVE_S": "45",
        "MASKGATE_MQTT__HOMEASSISTANT_DISCOVERY": "yes",
        "MASKGATE_DETECTOR__THRESHOLDS": "[0.5, 0.6, 0.9]",
        "MASKGATE_PATHS__SNAPSHOTS": "/srv/snapshots",
        "MASKGATE_TEST_ANYTHING": "ignored",
    }
    config = load_config(path, environ=environ)
    assert config.gate_id == "south"
    assert config.database_url == "postgresql://db/maskgate"
    assert config.mqtt.keepalive_s == 45
    assert config.mqtt.homeassistant_discovery is True
    assert config.detector.thresholds == (0.5, 0.6, 0.9)
    assert config.paths.snapshots == Path("/srv/snapshots")


def test_config_file_from_environment(tmp_path):
    path = write(tmp_path, 'gate_id = "east"\n')
    assert load_config(environ={"MASKGATE_CONFIG": str(path)}).gate_id == "east"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gate_idd = 'x'\n", r"maskgate.toml: unknown key 'gate_idd' \(did you mean 'gate_id'\?\)"),
        ("[mqtt]\nurll = 'x'\n", r"maskgate.toml: unknown key 'mqtt.urll' \(did you mean 'url'\?\)"),
        (
            "[mqtt]\nkeepalive_s = 'soon'\n",
            r"maskgate.toml: mqtt.keepalive_s: expected an integer, got 'soon'",
        ),
        ("[mqtt]\nkeepalive_s = true\n", r"mqtt.keepalive_s: expected an integer, got True"),
        (
            "[policy]\nwithout_mask = 'open'\n",
            r"policy.without_mask: 'open' is not one of 'allow', 'deny', 'warn'",
        ),
        ("[detector]\nthresholds = [0.5]\n", r"detector.thresholds: expected 3 values"),
        ("mqtt = 'x'\n", r"mqtt must be a table"),
        # values out of range: named with the rule and the value
        (
            "[policy]\nmajority = 0.5\n",
            r"maskgate.toml: policy.majority must be above 0.5 and at most 1, got 0.5",
        ),
        ("[detector]\nthresholds = [0.6, 0.7, 1.2]\n", r"detector.thresholds must be all between 0 and 1"),
        ("[detector]\nmin_face_size = 4\n", r"detector.min_face_size must be at least 12, got 4"),
        (
            "[detector]\nface_check_floor = 0\n",
            r"detector.face_check_floor must be above 0 and at most 1, got 0",
        ),
        (
            "[camera]\nstream_timeout_s = -1\n",
            r"camera.stream_timeout_s must be positive and at most 3600, got -1",
        ),
        ("[mqtt]\ndoor_command_ttl_s = 61\n", r"mqtt.door_command_ttl_s must be above 0 and at most 60"),
        ("[dashboard]\nport = 70000\n", r"dashboard.port must be between 0 and 65535, got 70000"),
        ("[retrain]\nval_share = 1\n", r"retrain.val_share must be between 0 and 1 \(exclusive\)"),
        ("[retrain]\nnetworks = 0\n", r"retrain.networks must be between 1 and 8, got 0"),
        ("[camera\n", r"maskgate.toml: not valid TOML"),
        # each key within its range, but together they defeat the policy
        (
            "[policy]\nconfidence_floor = 0.9\n",
            r"maskgate.toml with MASKGATE_\* overrides: policy.allow_confidence_floor \(0.85\) must be "
            r"at least policy.confidence_floor \(0.9\)",
        ),
        ("[policy]\nwindow = 4\n", r"policy.window \(4\) must be at least policy.min_classifications \(5\)"),
    ],
)
def test_bad_files_name_the_key_and_file(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), environ={})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MASKGATE_GATEID": "x"}, r"environment variable MASKGATE_GATEID: unknown key 'gateid'"),
        ({"MASKGATE_MQTT__PORT": "1"}, r"MASKGATE_MQTT__PORT: unknown key 'mqtt.port'"),
        ({"MASKGATE_MQTT": "x"}, r"'mqtt' is a section"),
        ({"MASKGATE_GATE_ID__X": "x"}, r"'gate_id' is a value, not a section"),
        (
            {"MASKGATE_POLICY__MAJORITY": "most"},
            r"MASKGATE_POLICY__MAJORITY: policy.majority: expected a number",
        ),
        ({"MASKGATE_MQTT__HOMEASSISTANT_DISCOVERY": "perhaps"}, r"expected true or false"),
        (
            {"MASKGATE_POLICY__ALLOW_CONFIDENCE_FLOOR": "1.5"},
            r"MASKGATE_POLICY__ALLOW_CONFIDENCE_FLOOR: policy.allow_confidence_floor must be between 0 and 1",
        ),
        (
            {"MASKGATE_CAMERA__STALE_AFTER_S": "0"},
            r"camera.stale_after_s must be positive and at most 3600, got 0",
        ),
    ],
)
def test_bad_environment_names_the_variable(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_config(environ=environ)


def test_keys_that_must_agree_may_be_set_one_in_the_file_one_in_the_environment(tmp_path):
    path = write(tmp_path, "[policy]\nconfidence_floor = 0.9\n")
    config = load_config(path, environ={"MASKGATE_POLICY__ALLOW_CONFIDENCE_FLOOR": "0.95"})
    assert (config.policy.confidence_floor, config.policy.allow_confidence_floor) == (0.9, 0.95)
    with pytest.raises(ConfigError, match=r"MASKGATE_\* environment variables: policy.window \(3\)"):
        load_config(environ={"MASKGATE_POLICY__WINDOW": "3"})
    with pytest.raises(ConfigError, match=r"policy.window \(3\) must be at least"):
        config_from_mapping({"policy": {"window": 3}})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nothere\.toml: config file not found"):
        load_config(tmp_path / "nothere.toml", environ={})


@pytest.mark.security
def test_secrets_are_masked():
    config = load_config(
        environ={
            "MASKGATE_MQTT__PASSWORD": "hunter2",
            "MASKGATE_DATABASE_URL": "postgresql://gate:s3cret@db:5432/maskgate",
            "MASKGATE_DASHBOARD__SECRET_KEY": "abcdef",
        }
    )
    shown = to_toml(config)
    assert "hunter2" not in shown and "s3cret" not in shown and "abcdef" not in shown
    assert "postgresql://gate:********@db:5432/maskgate" in shown
    assert as_dict(config, mask_secrets=False)["mqtt"]["password"] == "hunter2"


def test_printed_config_loads_back_to_the_same(tmp_path):
    config = load_config(environ={"MASKGATE_GATE_ID": "west", "MASKGATE_POLICY__WINDOW": "20"})
    assert load_config(write(tmp_path, to_toml(config)), environ={}) == config


_scalars = st.one_of(st.text(max_size=8), st.integers(), st.floats(allow_nan=False), st.booleans())
_keys = st.one_of(
    st.sampled_from(["gate_id", "mqtt", "url", "policy", "majority", "thresholds"]), st.text(max_size=8)
)
_trees = st.recursive(
    _scalars | st.lists(_scalars, max_size=4), lambda kids: st.dictionaries(_keys, kids, max_size=4)
)


@pytest.mark.security
@given(st.dictionaries(_keys, _trees, max_size=5))
def test_any_parsed_file_is_accepted_or_refused_cleanly(raw):
    """Whatever a TOML file holds, the loader returns a Config or raises ConfigError, nothing else."""
    try:
        assert isinstance(config_from_mapping(raw, "fuzz.toml"), Config)
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.toml: ")


@pytest.mark.security
@given(st.text(max_size=200))
def test_any_file_text_is_accepted_or_refused_cleanly(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "maskgate.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path, environ={})
    except ConfigError as exc:
        assert str(exc).startswith(str(path))


# -- secrets, finite numbers, what the commands would refuse, environment lists --------------------------


@pytest.mark.security
def test_secrets_that_look_like_urls_are_masked_whole():
    config = load_config(
        environ={
            "MASKGATE_MQTT__PASSWORD": "abc://hunter2",
            "MASKGATE_MQTT__COMMAND_SECRET": "s3cr3t://x",
            "MASKGATE_ROLLOUT__TOKEN": "https://user:tok@x",
            "MASKGATE_DATABASE_URL": "postgresql://gate@localhost/db?sslmode=require&password=hunter3",
        }
    )
    shown = to_toml(config)
    assert (
        "hunter2" not in shown and "s3cr3t" not in shown and "user:" not in shown and "hunter3" not in shown
    )
    assert 'password = "********"' in shown and 'command_secret = "********"' in shown
    assert '\ntoken = "********"' in shown
    assert "postgresql://gate@localhost/db?sslmode=require&password=********" in shown


@pytest.mark.security
@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[mqtt]\npassword = 123456\n", "mqtt.password"),
        ("[mqtt]\ncommand_secret = 987654\n", "mqtt.command_secret"),
        ("database_url = 'foo://gate:hunter2@db/x?password=hunter2'\n", "database_url"),
    ],
)
def test_errors_never_echo_a_secret(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key) as refused:
        load_config(write(tmp_path, text), environ={})
    assert "123456" not in str(refused.value) and "987654" not in str(refused.value)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "CAMERA__STREAM_TIMEOUT_S",
            "inf",
            r"camera.stream_timeout_s must be positive and at most 3600, got inf",
        ),
        ("CAMERA__RECONNECT_INITIAL_S", "inf", r"camera.reconnect_initial_s must be positive and at most"),
        ("CAMERA__RECONNECT_MAX_S", "1e300", r"camera.reconnect_max_s must be positive and at most"),
        ("MQTT__ACK_TIMEOUT_S", "inf", r"mqtt.ack_timeout_s must be positive and at most 3600, got inf"),
        ("MQTT__ACK_TIMEOUT_S", "-inf", r"mqtt.ack_timeout_s must be positive"),
        ("MQTT__KEEPALIVE_S", "70000", r"mqtt.keepalive_s must be between 1 and 65535, got 70000"),
        ("POLICY__TRACK_MAX_AGE_S", "inf", r"policy.track_max_age_s must be positive and at most"),
        ("ROLLOUT__TIMEOUT_S", "inf", r"rollout.timeout_s must be positive and at most"),
        ("RETENTION__EVENTS_DAYS", "9999999999", r"retention.events_days must be between 1 and 36500"),
        ("RETRAIN__LEARNING_RATE", "inf", r"retrain.learning_rate must be at least 0"),
        ("DETECTOR__THRESHOLDS", "[0.6, 0.7, Infinity]", r"detector.thresholds must be all between 0 and 1"),
    ],
)
def test_numbers_must_be_finite_and_waits_sane(name, value, message):
    with pytest.raises(ConfigError, match=rf"MASKGATE_{name}: {message}"):
        load_config(environ={f"MASKGATE_{name}": value})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DATABASE_URL", "foo://db/x", r"database_url: unsupported database 'foo'"),
        ("DATABASE_URL", "postgres://db/x", r"database_url: unsupported database 'postgres'.*postgresql://"),
        ("DATABASE_URL", "", r"database_url: malformed database URL ''"),
        (
            "MQTT__URL",
            "http://broker:1883",
            r"mqtt.url: 'http://broker:1883': use mqtt://host:port or mqtts://",
        ),
        ("MQTT__URL", "mqtt://broker:99999", r"mqtt.url: 'mqtt://broker:99999': bad port"),
        (
            "MQTT__URL",
            "mqtt://gate:pw0rd@broker",
            r"mqtt.url: put credentials in mqtt.username and mqtt.pass",
        ),
        ("MQTT__URL", "mqtt://broker/topic", r"mqtt.url: 'mqtt://broker/topic': a broker URL has no path"),
        ("MQTT__URL", "mqtt://:1883", r"mqtt.url: 'mqtt://:1883': no host"),
        ("GATE_ID", "a/b", r"gate_id must be 1-64 letters, digits, '-' or '_', got 'a/b'"),
        ("GATE_ID", "", r"gate_id must be 1-64 letters"),
        ("MQTT__TOPIC_PREFIX", "x/#", r"mqtt.topic_prefix must be 1-4 levels of .*, got 'x/#'"),
    ],
)
def test_values_the_commands_would_refuse_are_config_errors(name, value, message):
    with pytest.raises(ConfigError, match=rf"MASKGATE_{name}: {message}") as refused:
        load_config(environ={f"MASKGATE_{name}": value})
    assert "pw0rd" not in str(refused.value)


def test_values_the_commands_accept_still_load():
    config = load_config(
        environ={
            "MASKGATE_DATABASE_URL": "postgresql+psycopg://gate:pw@db:5432/maskgate",
            "MASKGATE_MQTT__URL": "mqtts://broker.example:8883/",
            "MASKGATE_GATE_ID": "north_2-b",
            "MASKGATE_MQTT__TOPIC_PREFIX": "site/a/b/c",
        }
    )
    assert (config.gate_id, config.mqtt.topic_prefix) == ("north_2-b", "site/a/b/c")
    assert load_config(environ={"MASKGATE_DATABASE_URL": "sqlite://"}).database_url == "sqlite://"


def test_environment_lists():
    assert load_config(environ={"MASKGATE_RETRAIN__BASE_DATA": ""}).retrain.base_data == ()
    assert load_config(environ={"MASKGATE_RETRAIN__BASE_DATA": "  "}).retrain.base_data == ()
    config = load_config(environ={"MASKGATE_RETRAIN__BASE_DATA": " a , b:folders"})
    assert config.retrain.base_data == ("a", "b:folders")
    assert load_config(environ={"MASKGATE_DETECTOR__THRESHOLDS": "0.5, 0.6 ,0.7"}).detector.thresholds == (
        0.5,
        0.6,
        0.7,
    )
    for value in ("a,,b", "a,", ",a", '["a", " "]'):
        with pytest.raises(ConfigError, match=r"MASKGATE_RETRAIN__BASE_DATA: retrain.base_data.*empty item"):
            load_config(environ={"MASKGATE_RETRAIN__BASE_DATA": value})
    with pytest.raises(ConfigError, match=r"retrain.eval_data.*empty item"):
        config_from_mapping({"retrain": {"eval_data": ["a", ""]}})
