"""Settings: defaults, model-engine files, ``--set``, environment, flags, and every bad value."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder.config import schema
from forwarder.config import settings as settings_module
from forwarder.config.masking import mask_url
from forwarder.config.settings import (
    ModelServerSettings,
    Settings,
    WorkerSettings,
    environment_variables,
    load_settings,
)
from forwarder.errors import ConfigError

# The model server's, the worker's and the top-level settings by name; the hooks' and the
# gateway's sections have tests of their own, and every section is covered by test_schema.py.
FIELDS = {
    spec.name: spec
    for spec in schema.SETTINGS
    if spec.section in (schema.MODEL, schema.WORKER, schema.TOP)
}

MODEL_ENGINE_YAML = """\
forwarder:
  sync:
    user_port: 5005
    user_hostname: "localhost"
    use_grpc: false
    predict_route: "/predict"
    healthcheck_route: "/readyz"
    batch_route: null
    model_engine_unwrap: true
    serialize_results_as_string: true
    forward_http_status: true
    extra_routes: []
  stream:
    user_port: 5005
    user_hostname: "localhost"
    predict_route: "/stream"
    healthcheck_route: "/readyz"
    batch_route: null
    model_engine_unwrap: true
    serialize_results_as_string: false
    extra_routes: []
  async:
    user_port: 6006
    user_hostname: "model.internal"
    use_grpc: false
    predict_route: "/v1/predict"
    healthcheck_route: "/healthz"
    batch_route: null
    model_engine_unwrap: false
    serialize_results_as_string: false
    forward_http_status: true
    forward_http_status_in_body: false
    extra_routes: ["/extra"]
  max_concurrency: 100
"""


def load(
    config_file: str | Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    env: dict[str, str] | None = None,
    flags: dict[str, object] | None = None,
) -> Settings:
    """load_settings with an empty environment unless one is given."""
    return load_settings(config_file, overrides, env=env or {}, flags=flags)


def write_config(tmp_path: Path, document: Any, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def nested(file_key: str, value: object) -> dict[str, Any]:
    """{"a": {"b": value}} for "a.b"."""
    *parents, leaf = file_key.split(".")
    document: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        document = {part: document}
    return document


def get_value(result: Settings, name: str) -> object:
    value: object = result
    for attribute in FIELDS[name].fills.split("."):
        value = getattr(value, attribute)
    return value


def assert_one_line_error(exc: ConfigError, key: str, value: object) -> None:
    message = str(exc)
    assert len(message.splitlines()) == 1, message
    assert exc.key == key
    assert key in message
    assert repr(value) in message
    assert exc.allowed and exc.allowed in message


# ---------------------------------------------------------------------------------------- defaults


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    result = load()
    assert result == Settings()
    model, worker = result.model, result.worker
    assert model == ModelServerSettings()
    assert (model.user_hostname, model.user_port) == ("localhost", 5005)
    assert (model.predict_route, model.healthcheck_route) == ("/predict", "/readyz")
    assert model.model_engine_unwrap is True
    assert model.serialize_results_as_string is True
    assert model.wrap_response is True
    assert model.forward_http_status is False
    assert model.forward_http_status_in_body is True
    assert model.predict_url == "http://localhost:5005/predict"
    assert model.healthcheck_url == "http://localhost:5005/readyz"
    assert worker == WorkerSettings()
    assert worker.queue == "inference"
    assert worker.concurrency == 4
    assert worker.pool == "prefork"
    assert worker.max_tasks_per_child is None
    assert (worker.broker_url, worker.result_backend, worker.sqs_url) == (None, None, None)
    assert worker.data_dir == tmp_path / "inference-forwarder"
    assert worker.task_visibility == "VISIBILITY_24H"
    assert worker.visibility_timeout == 86400
    assert worker.model_timeout_seconds == 600.0
    assert worker.connect_timeout_seconds == 5.0
    assert worker.model_retries == 20
    assert worker.retry_backoff_max_seconds == 30.0
    assert worker.readiness_timeout_seconds == 0.0
    assert worker.log_level == "INFO"
    assert (worker.log_format, worker.tracing) == ("json", "off")
    assert (worker.metrics_port, worker.metrics_host) == (None, "0.0.0.0")
    assert result.firehose_max_pool_connections == 10


def test_default_data_dir_without_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert WorkerSettings().data_dir == tmp_path / ".local" / "share" / "inference-forwarder"


def test_settings_are_frozen() -> None:
    result = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.worker.queue = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.model.user_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("visibility", "seconds"),
    [
        ("VISIBILITY_1M", 60),
        ("VISIBILITY_10M", 600),
        ("VISIBILITY_1H", 3600),
        ("VISIBILITY_24H", 86400),
    ],
)
def test_task_visibility_seconds(visibility: str, seconds: int) -> None:
    worker = load(flags={"--task-visibility": visibility}).worker
    assert worker.task_visibility == visibility
    assert worker.visibility_timeout == seconds


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load(path) == load()


# ------------------------------------------------------------------------------ model-engine files


def test_model_engine_file_loads_as_is(tmp_path: Path) -> None:
    path = tmp_path / "service--forwarder.yaml"
    path.write_text(MODEL_ENGINE_YAML, encoding="utf-8")
    model = load(path).model
    # The worker reads the async section, not sync or stream.
    assert model == ModelServerSettings(
        user_hostname="model.internal",
        user_port=6006,
        predict_route="/v1/predict",
        healthcheck_route="/healthz",
        model_engine_unwrap=False,
        serialize_results_as_string=False,
        wrap_response=True,
        forward_http_status=True,
        forward_http_status_in_body=False,
    )
    assert model.predict_url == "http://model.internal:6006/v1/predict"


def test_model_engine_file_accepts_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"forwarder": {"async": {"user_port": 7007}}}', encoding="utf-8")
    assert load(path).model.user_port == 7007


def test_worker_section_and_top_level_key(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "worker": {
                "queue": "q-file",
                "concurrency": 8,
                "pool": "gevent",
                "max_tasks_per_child": 100,
                "broker_url": "redis://127.0.0.1:6379/0",
                "result_backend": "redis://127.0.0.1:6379/1",
                "data_dir": str(tmp_path / "data"),
                "task_visibility": "VISIBILITY_1H",
                "model_timeout_seconds": 1.5,
                "connect_timeout_seconds": 2,
                "model_retries": 0,
                "retry_backoff_max_seconds": 4,
                "readiness_timeout_seconds": 0,
                "log_level": "DEBUG",
            },
            "firehose_max_pool_connections": 50,
        },
    )
    result = load(path)
    assert result.worker == WorkerSettings(
        queue="q-file",
        concurrency=8,
        pool="gevent",
        max_tasks_per_child=100,
        broker_url="redis://127.0.0.1:6379/0",
        result_backend="redis://127.0.0.1:6379/1",
        data_dir=tmp_path / "data",
        task_visibility="VISIBILITY_1H",
        model_timeout_seconds=1.5,
        connect_timeout_seconds=2.0,
        model_retries=0,
        retry_backoff_max_seconds=4.0,
        readiness_timeout_seconds=0.0,
        log_level="DEBUG",
    )
    assert result.firehose_max_pool_connections == 50


def test_empty_sections_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("forwarder:\n  async:\nworker:\n", encoding="utf-8")
    assert load(path) == load()


def test_use_grpc_false_and_batch_route_null_are_accepted() -> None:
    result = load(overrides=["forwarder.async.use_grpc=false", "forwarder.async.batch_route=null"])
    assert result.model == ModelServerSettings()


@pytest.mark.parametrize("value", ["true", "yes", "1", "'true'", "'grpc'"])
def test_use_grpc_true_is_rejected(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(overrides=[f"forwarder.async.use_grpc={value}"])
    assert info.value.key == "forwarder.async.use_grpc"
    assert "false" in info.value.allowed
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("value", ["/batch", "''"])
def test_batch_route_set_is_rejected(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(overrides=[f"forwarder.async.batch_route={value}"])
    assert info.value.key == "forwarder.async.batch_route"
    assert "null" in info.value.allowed


def test_grpc_and_batch_in_sync_section_do_not_matter() -> None:
    # Only the async section is used by the worker; model-engine's sync settings load untouched.
    result = load(overrides=["forwarder.sync.use_grpc=true", "forwarder.sync.batch_route=/b"])
    assert result.model == ModelServerSettings()


# ----------------------------------------------------------------------------------- --set


def test_set_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MODEL_ENGINE_YAML, encoding="utf-8")
    model = load(
        path,
        [
            "forwarder.async.user_port=5007",
            "forwarder.async.serialize_results_as_string=true",
            "forwarder.async.predict_route=/other",
        ],
    ).model
    assert model.user_port == 5007
    assert model.serialize_results_as_string is True
    assert model.predict_route == "/other"
    assert model.user_hostname == "model.internal"  # untouched keys keep the file's value


def test_set_without_a_file() -> None:
    result = load(overrides=["worker.concurrency=16", "firehose_max_pool_connections=3"])
    assert result.worker.concurrency == 16
    assert result.firehose_max_pool_connections == 3


def test_set_into_an_empty_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("forwarder:\nworker:\n", encoding="utf-8")
    result = load(path, ["forwarder.async.user_port=5010", "worker.queue=q"])
    assert result.model.user_port == 5010
    assert result.worker.queue == "q"


def test_set_last_one_wins() -> None:
    assert load(overrides=["worker.queue=a", "worker.queue=b"]).worker.queue == "b"


def test_set_value_may_contain_equals_sign() -> None:
    url = "redis://127.0.0.1:6379/0?health_check_interval=5"
    assert load(overrides=[f"worker.broker_url={url}"]).worker.broker_url == url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("5005", 5005),
        ("1.5", 1.5),
        ("[a, b]", ["a", "b"]),
        ("null", None),
        ("'5005'", "5005"),
        ("plain text", "plain text"),
        ("", ""),
    ],
)
def test_set_values_are_yaml_scalars(text: str, expected: object) -> None:
    document: dict[str, Any] = {}
    settings_module._apply_override(document, f"forwarder.sync.extra_routes={text}")
    assert document == {"forwarder": {"sync": {"extra_routes": expected}}}


def test_set_typed_values_reach_the_settings() -> None:
    result = load(
        overrides=[
            "forwarder.async.model_engine_unwrap=false",
            "forwarder.async.user_port=5005",
            "forwarder.sync.extra_routes=[/a, /b]",
            "worker.model_timeout_seconds=2.5",
        ]
    )
    assert result.model.model_engine_unwrap is False
    assert result.model.user_port == 5005
    assert result.worker.model_timeout_seconds == 2.5


def test_set_list_where_a_string_is_expected_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load(overrides=["worker.queue=[a, b]"])
    assert_one_line_error(info.value, "worker.queue", ["a", "b"])


@pytest.mark.parametrize(
    "override",
    [
        "worker.queue",
        "=5",
        "worker..queue=x",
        ".worker=x",
        "worker.=x",
        "forwarder.async.user_port=[",
        "forwarder.async.user_port={a: 1",
        "forwarder.async.user_port='5005",
    ],
)
def test_bad_set_syntax_is_rejected(override: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(overrides=[override])
    assert_one_line_error(info.value, "--set", override)


def test_set_through_a_value_that_is_not_a_section() -> None:
    override = "forwarder.async.user_port.x=1"
    with pytest.raises(ConfigError) as info:
        load(overrides=["forwarder.async.user_port=5005", override])
    assert_one_line_error(info.value, "--set", override)
    assert "user_port" in info.value.allowed


def test_set_unknown_key_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load(overrides=["forwarder.async.user_prot=5005"])
    assert_one_line_error(info.value, "forwarder.async.user_prot", 5005)
    assert "user_port" in info.value.allowed


# ------------------------------------------------------------------------------------ precedence

# Three valid values per field, as strings so that every source can carry them: file, env, flag.
VALID = {
    "user_hostname": ("file-host", "env-host", "flag-host"),
    "user_port": ("1001", "1002", "1003"),
    "predict_route": ("/file", "/env", "/flag"),
    "healthcheck_route": ("/file", "/env", "/flag"),
    "model_engine_unwrap": ("false", "true", "false"),
    "serialize_results_as_string": ("false", "true", "false"),
    "wrap_response": ("false", "true", "false"),
    "forward_http_status": ("true", "false", "true"),
    "forward_http_status_in_body": ("false", "true", "false"),
    "ca_bundle": ("/etc/file-ca.pem", "/etc/env-ca.pem", "(no flag)"),
    "queue": ("q-file", "q-env", "q-flag"),
    "concurrency": ("2", "3", "5"),
    "pool": ("gevent", "prefork", "gevent"),
    "max_tasks_per_child": ("10", "20", "30"),
    "broker_url": ("redis://file:6379/0", "redis://env:6379/0", "rediss://flag:6380/0"),
    "result_backend": ("redis://file:6379/1", "file:///tmp/env-results", "rediss://flag:6380/1"),
    "sqs_url": ("https://file/1/q", "http://127.0.0.1:5000/1/q", "https://flag/1/q"),
    "broker_type": ("sqs", "redis", "sqs"),
    "backend_protocol": ("redis", "s3", "redis"),
    "redis_host": ("file-redis", "env-redis", "(no flag)"),
    "redis_port": ("6379", "6380", "(no flag)"),
    "redis_auth_token": ("file-token", "env-token", "(no flag)"),
    "s3_bucket": ("file-bucket", "env-bucket", "(no flag)"),
    "s3_prefix": ("file/prefix/", "(no env)", "(no flag)"),
    "data_dir": ("/tmp/file-data", "/tmp/env-data", "/tmp/flag-data"),
    "task_visibility": ("VISIBILITY_1M", "VISIBILITY_10M", "VISIBILITY_1H"),
    "events": ("true", "false", "true"),
    "hostname": ("file@%h", "env@host-1", "flag@%h"),
    "model_timeout_seconds": ("1", "2.5", "3"),
    "connect_timeout_seconds": ("1", "2.5", "3"),
    "max_response_bytes": ("1000", "2000", "3000"),
    "events_max_length": ("10", "20", "30"),
    "model_retries": ("0", "1", "2"),
    "retry_backoff_max_seconds": ("1", "2.5", "3"),
    "readiness_timeout_seconds": ("0", "2.5", "3"),
    "log_level": ("DEBUG", "WARNING", "ERROR"),
    "log_format": ("text", "json", "text"),
    "library_log_level": ("DEBUG", "WARNING", "ERROR"),
    "metrics_port": ("9100", "9101", "9102"),
    "metrics_host": ("127.0.0.1", "10.0.0.2", "metrics-host"),
    "tracing": ("otel", "off", "otel"),
    "max_deliveries": ("1", "2", "30"),
    "dead_letter_queue": ("dl-file", "dl-env", "dl-flag"),
    "firehose_max_pool_connections": ("1", "2", "3"),
}


def expected_value(name: str, text: str) -> object:
    default = get_value(Settings(), name)
    if isinstance(default, bool):
        return text == "true"
    if isinstance(default, float):
        return float(text)
    if isinstance(default, int) or name in ("max_tasks_per_child", "metrics_port", "redis_port"):
        return int(text)
    if isinstance(default, Path):
        return Path(text)
    return text


def test_valid_values_cover_every_field() -> None:
    assert set(VALID) == set(FIELDS)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_file_value_is_read(name: str) -> None:
    file_text = VALID[name][0]
    result = load(overrides=[f"{FIELDS[name].file_key}='{file_text}'"])
    assert get_value(result, name) == expected_value(name, file_text)


@pytest.mark.parametrize("name", sorted(n for n, s in FIELDS.items() if s.env))
def test_env_wins_over_file(name: str) -> None:
    spec = FIELDS[name]
    file_text, env_text, _ = VALID[name]
    assert spec.env
    result = load(overrides=[f"{spec.file_key}='{file_text}'"], env={spec.env[0]: env_text})
    assert get_value(result, name) == expected_value(name, env_text)


@pytest.mark.parametrize("name", sorted(n for n, s in FIELDS.items() if s.env))
def test_env_is_read_from_os_environ_by_default(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = FIELDS[name]
    assert spec.env
    for variable in environment_variables():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(spec.env[0], VALID[name][1])
    assert get_value(load_settings(), name) == expected_value(name, VALID[name][1])


@pytest.mark.parametrize("name", sorted(n for n, s in FIELDS.items() if s.flag))
def test_flag_wins_over_env_and_file(name: str) -> None:
    spec = FIELDS[name]
    file_text, env_text, flag_text = VALID[name]
    assert spec.flag
    env = {spec.env[0]: env_text} if spec.env else {}
    result = load(
        overrides=[f"{spec.file_key}='{file_text}'"], env=env, flags={spec.flag: flag_text}
    )
    assert get_value(result, name) == expected_value(name, flag_text)


@pytest.mark.parametrize("name", sorted(n for n, s in FIELDS.items() if s.flag))
def test_flag_none_means_not_given(name: str) -> None:
    spec = FIELDS[name]
    assert spec.flag
    result = load(overrides=[f"{spec.file_key}='{VALID[name][0]}'"], flags={spec.flag: None})
    assert get_value(result, name) == expected_value(name, VALID[name][0])


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
@pytest.mark.parametrize("name", sorted(n for n, s in FIELDS.items() if s.env))
def test_empty_env_var_is_unset(name: str, blank: str) -> None:
    spec = FIELDS[name]
    assert spec.env
    with_file = load(overrides=[f"{spec.file_key}='{VALID[name][0]}'"], env={spec.env[0]: blank})
    assert get_value(with_file, name) == expected_value(name, VALID[name][0])
    without_file = load(env={spec.env[0]: blank})
    assert get_value(without_file, name) == get_value(load(), name)


def test_env_values_are_stripped() -> None:
    result = load(env={"CELERY_WORKER_POOL": " gevent\n", "SERIALIZE_RESULTS_AS_STRING": " FALSE "})
    assert result.worker.pool == "gevent"
    assert result.model.serialize_results_as_string is False


def test_model_engine_environment_variables() -> None:
    result = load(
        env={
            "CELERY_WORKER_POOL": "gevent",
            "CELERY_WORKER_MAX_TASKS_PER_CHILD": "50",
            "FIREHOSE_CLIENT_MAX_POOL_CONNECTIONS": "25",
            "SERIALIZE_RESULTS_AS_STRING": "false",
            "FORWARDER_BROKER_URL": "redis://127.0.0.1:6379/0",
            "FORWARDER_RESULT_BACKEND": "redis://127.0.0.1:6379/1",
        }
    )
    assert result.worker.pool == "gevent"
    assert result.worker.max_tasks_per_child == 50
    assert result.firehose_max_pool_connections == 25
    assert result.model.serialize_results_as_string is False
    assert result.worker.broker_url == "redis://127.0.0.1:6379/0"
    assert result.worker.result_backend == "redis://127.0.0.1:6379/1"


def test_unrelated_env_vars_are_ignored() -> None:
    assert load(env={"FORWARDER_CONCURRENCY": "x", "USER_PORT": "x"}) == load()


def test_flags_accept_typed_values(tmp_path: Path) -> None:
    result = load(flags={"--concurrency": 7, "--data-dir": tmp_path})
    assert result.worker.concurrency == 7
    assert result.worker.data_dir == tmp_path


def test_unknown_flag_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load(flags={"--concurency": "4"})
    assert_one_line_error(info.value, "--concurency", "4")


# ------------------------------------------------------------------------------------ bad values

# Per field: (bad values, a fragment of what the message says is allowed). Strings are tried in
# every source the field has (file, environment, flag); other types only in the file.
BAD: dict[str, tuple[list[object], str]] = {
    "user_hostname": (
        ["http://localhost", "localhost:5005", "local host", "localhost\n", "", 5, None],
        "host name",
    ),
    "user_port": (["0", "70000", "x", "-1", "", 0, 70000, 65536, -5, 5005.5, True], "1 to 65535"),
    "predict_route": (["predict", "", "/pre dict", "http://x/predict", 5, None], "starting with /"),
    "healthcheck_route": (["readyz", "", "/ready z", 5], "starting with /"),
    "model_engine_unwrap": (["yes", "no", "1", "0", "", "on", 1, 0, None], "true or false"),
    "serialize_results_as_string": (["yes", "1", "TRUE!", 1, None], "true or false"),
    "wrap_response": (["yes", "off", 0], "true or false"),
    "forward_http_status": (["yes", "y", 2], "true or false"),
    "forward_http_status_in_body": (["yes", "n", [True]], "true or false"),
    "ca_bundle": (["", "   ", 5, ["a"]], "non-empty string"),
    "queue": (["", "   ", 5, None, ["q"]], "non-empty string"),
    "concurrency": (["0", "-1", "x", "1.5", "", "٣", 0, -3, 1.5, True, None], "positive whole"),
    "pool": (["solo", "threads", "", 1, None], "prefork, gevent"),
    "max_tasks_per_child": (["0", "-1", "x", "", 0, -1, 2.5, False], "positive whole"),
    "broker_url": (
        [
            "http://127.0.0.1:6379/0",
            "sqs://",
            "amqp://guest@127.0.0.1//",
            "redis://",
            "redis://127.0.0.1:99999/0",
            "127.0.0.1:6379",
            "",
            5,
        ],
        "redis, rediss",
    ),
    "result_backend": (
        [
            "ftp://127.0.0.1/results",
            "http://127.0.0.1/results",
            "s4://bucket",
            "redis://",
            "file://",
            "",
            5,
        ],
        "redis, rediss, file",
    ),
    "sqs_url": (
        ["sqs://queue", "ftp://127.0.0.1/1/q", "https://", "queue-name", "", 5],
        "https, http",
    ),
    "broker_type": (["servicebus", "kafka", "", 5], "redis or sqs"),
    "backend_protocol": (["abs", "gcs", "", 5], "s3 or redis"),
    "redis_host": (["redis://host", "host:6379", "", 5], "host name"),
    "redis_port": (["0", "70000", "x", "", 1.5, True], "port number"),
    "redis_auth_token": (["", "   ", 5], "non-empty string"),
    "s3_bucket": (["Results", "ab", "a_bucket", "", 5], "S3 bucket name"),
    "s3_prefix": ([5, None, ["a"]], "key prefix"),
    "data_dir": (["", "   ", 5, None, ["a"]], "non-empty string"),
    "task_visibility": (["VISIBILITY_2H", "60", "", 60, None], "VISIBILITY_1M"),
    "events": (["maybe", "2", "", None], "true or false"),
    "hostname": (["two words", "", 5, ["a@b"]], "node name"),
    "model_timeout_seconds": (["0", "-1", "x", "inf", "nan", "", 0, -1.5, True, None], "positive"),
    "connect_timeout_seconds": (["0", "-0.5", "x", 0, False], "positive"),
    "max_response_bytes": (["0", "-1", "x", "1.5", 0, False], "positive"),
    "events_max_length": (["0", "-1", "x", 1.5, False], "positive"),
    "model_retries": (["-1", "x", "1.5", "", -1, 1.5, False, True, None], "0 or more"),
    "retry_backoff_max_seconds": (["0", "-1", "x", 0, -2], "positive"),
    "readiness_timeout_seconds": (["-1", "x", "inf", "", -0.5, True, None], "0 or more"),
    "log_level": (["TRACE", "", 10, None], "DEBUG, INFO, WARNING, ERROR"),
    "log_format": (["yaml", "JSON", "", 1, None], "json, text"),
    "library_log_level": (["TRACE", "", 10, None], "DEBUG, INFO, WARNING, ERROR"),
    "metrics_port": (["0", "-1", "70000", "x", "", 1.5, True], "port"),
    "metrics_host": (["http://host", "host:9100", "", 5, None], "host name"),
    "tracing": (["on", "datadog", "", True, None], "off, otel"),
    "max_deliveries": (["0", "-1", "x", "1.5", "", 0, -1, 2.5, True, None], "positive whole"),
    "dead_letter_queue": (["", "   ", 5, ["q"]], "non-empty string"),
    "firehose_max_pool_connections": (["0", "-1", "x", "", 0, -1, 1.5, None], "positive whole"),
}


def test_bad_values_cover_every_field() -> None:
    assert set(BAD) == set(FIELDS)


def _bad_cases(source: str) -> list[Any]:
    cases = []
    for name, (values, allowed) in BAD.items():
        spec = FIELDS[name]
        for value in values:
            if source == "file":
                pass
            elif not isinstance(value, str):
                continue
            elif source == "env" and (not spec.env or not value.strip()):
                continue  # an empty variable is unset, by design
            elif source == "env" and value != value.strip():
                continue  # the environment's values are stripped first
            elif source == "flag" and not spec.flag:
                continue
            cases.append(pytest.param(name, value, allowed, id=f"{name}-{value!r}"))
    return cases


@pytest.mark.parametrize(("name", "value", "allowed"), _bad_cases("file"))
def test_bad_file_value_is_rejected(name: str, value: object, allowed: str, tmp_path: Path) -> None:
    spec = FIELDS[name]
    path = write_config(tmp_path, nested(spec.file_key, value))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert_one_line_error(info.value, spec.file_key, schema.NOT_SHOWN if spec.secret else value)
    assert allowed in info.value.allowed


@pytest.mark.parametrize(("name", "value", "allowed"), _bad_cases("env"))
def test_bad_env_value_is_rejected(name: str, value: str, allowed: str) -> None:
    spec = FIELDS[name]
    assert spec.env
    with pytest.raises(ConfigError) as info:
        load(env={spec.env[0]: value})
    assert_one_line_error(info.value, spec.env[0], value)
    assert allowed in info.value.allowed


@pytest.mark.parametrize(("name", "value", "allowed"), _bad_cases("flag"))
def test_bad_flag_value_is_rejected(name: str, value: str, allowed: str) -> None:
    spec = FIELDS[name]
    assert spec.flag
    with pytest.raises(ConfigError) as info:
        load(flags={spec.flag: value})
    assert_one_line_error(info.value, spec.flag, value)
    assert allowed in info.value.allowed


def test_bad_env_value_is_rejected_even_when_the_file_is_good() -> None:
    with pytest.raises(ConfigError) as info:
        load(overrides=["worker.pool=gevent"], env={"CELERY_WORKER_POOL": "solo"})
    assert_one_line_error(info.value, "CELERY_WORKER_POOL", "solo")


def test_bad_file_value_is_not_checked_when_a_flag_overrides_it() -> None:
    # The winning source is the one validated; the flag replaces the file's value.
    result = load(overrides=["worker.concurrency=0"], flags={"--concurrency": "2"})
    assert result.worker.concurrency == 2


def test_concurrency_message_names_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        load(flags={"--concurrency": "-4"})
    assert str(info.value) == "invalid --concurrency='-4'; allowed: a positive whole number"


def test_port_message_names_the_file_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"forwarder": {"async": {"user_port": 70000}}})
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        "invalid forwarder.async.user_port=70000; allowed: a port number from 1 to 65535"
    )


# ---------------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"forwarderr": {}}, "forwarderr"),
        ({"firehose": 3}, "firehose"),
        ({"forwarder": {"asyncc": {}}}, "forwarder.asyncc"),
        ({"forwarder": {"async": {"user_prot": 5005}}}, "forwarder.async.user_prot"),
        ({"forwarder": {"async": {"concurrency": 5}}}, "forwarder.async.concurrency"),
        ({"forwarder": {"sync": {"bogus": 1}}}, "forwarder.sync.bogus"),
        ({"forwarder": {"stream": {"bogus": 1}}}, "forwarder.stream.bogus"),
        ({"worker": {"concurency": 4}}, "worker.concurency"),
        ({"worker": {"user_port": 5005}}, "worker.user_port"),
        ({"worker": {"firehose_max_pool_connections": 5}}, "worker.firehose_max_pool_connections"),
    ],
)
def test_unknown_keys_are_rejected(document: dict[str, Any], key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write_config(tmp_path, document))
    assert info.value.key == key
    assert len(str(info.value).splitlines()) == 1
    assert str(info.value).startswith(f"invalid {key}=")
    assert "unknown key" in info.value.allowed


def test_unknown_key_message_lists_allowed_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write_config(tmp_path, {"worker": {"concurency": 4}}))
    for allowed in ("concurrency", "queue", "pool", "broker_url"):
        assert allowed in info.value.allowed


def test_unknown_key_with_a_line_break_gives_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text('"bad\\nkey": 1\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.key == "bad\nkey"
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("forwarder", []),
        ("forwarder", "async"),
        ("forwarder", False),
        ("forwarder.async", [1, 2]),
        ("forwarder.async", 0),
        ("forwarder.sync", "x"),
        ("forwarder.stream", True),
        ("worker", ["queue"]),
        ("worker", 0),
    ],
)
def test_sections_that_are_not_mappings_are_rejected(
    key: str, value: object, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        load(write_config(tmp_path, nested(key, value)))
    assert_one_line_error(info.value, key, value)
    assert "mapping" in info.value.allowed


# ------------------------------------------------------------------------------------ bad files


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "5\n", "[1, 2]\n"])
def test_config_file_that_is_not_a_mapping(text: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert_one_line_error(info.value, "--config", str(path))
    assert "mapping" in info.value.allowed


@pytest.mark.parametrize(
    "text",
    [
        "forwarder: {async: [\n",
        "forwarder:\n  async:\n    user_port: 5005\n   bad_indent: 1\n",
        "key: 'unterminated\n",
        "\tforwarder: 1\n",
    ],
)
def test_invalid_yaml(text: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert_one_line_error(info.value, "--config", str(path))
    assert "valid YAML" in info.value.allowed


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert_one_line_error(info.value, "--config", str(path))
    assert "readable file" in info.value.allowed
    assert "No such file" in info.value.allowed


def test_config_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert_one_line_error(info.value, "--config", str(tmp_path))


def test_config_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert_one_line_error(info.value, "--config", str(path))


# ------------------------------------------------------------------------------------- mask_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://user:s3cret@cache:6380/1", "rediss://user:***@cache:6380/1"),
        ("sqs://AKIAEXAMPLE:abc/def+ghi@", "sqs://AKIAEXAMPLE:***@"),
        ("redis://user:p@ss@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
        ("user:s3cret@127.0.0.1", "user:***@127.0.0.1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("file:///tmp/results", "file:///tmp/results"),
        ("", ""),
        (None, None),
    ],
)
def test_mask_url(url: str | None, masked: str | None) -> None:
    assert mask_url(url) == masked
    if url and "s3cret" in url:
        assert "s3cret" not in str(mask_url(url))
