"""A drop-in for model-engine's forwarder: its container's command line and environment, unchanged.

The command comes from model-engine's Helm template (``data/model_engine_celery_forwarder.yaml``
names its source), the config file is model-engine's own. A task is sent the way model-engine's
gateway sends one (Celery alone, its ``celery_app``'s Redis database for VISIBILITY_24H, results in
S3 under ``tmp/celery/``), against a real redis-server, moto and the echo model server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from celery import Celery

from forwarder.devtools.localrun import HOST, start_redis
from forwarder.protocol import LIRA_TASK_NAME
from support.aws import MotoServer
from support.env import base_env, env_changes
from support.processes import Processes
from support.servers import running
from support.workers import Worker

pytestmark = [pytest.mark.integration]

DATA = Path(__file__).parent / "data"
CONFIG_DIR = "/workspace/model-engine/model_engine_server/inference/configs/"
BUCKET = "celery-results"
QUEUE = "launch-endpoint-id-end_abc123"
VISIBILITY_24H_DB = 3  # model-engine's TaskVisibility.VISIBILITY_24H
# model-engine's EndpointPredictV1Request, as its gateway serialises it.
REQUEST = {
    "url": None,
    "args": {"x": 1, "y": [1, 2]},
    "cloudpickle": None,
    "callback_url": None,
    "callback_auth": None,
    "return_pickled": False,
    "destination_path": None,
}


def filled(text: str, values: dict[str, str]) -> str:
    """The template's ``${NAME}`` and ``{{ $name }}`` placeholders filled from ``values``."""
    text = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)
    return re.sub(r"\{\{ \$(\w+) \}\}", lambda m: values[m.group(1)], text)


def model_engine_container(tmp_path: Path, model_port: int) -> tuple[list[str], dict[str, str]]:
    """The template's command and environment, filled in as model-engine's builder does."""
    config = (DATA / "service--forwarder.yaml").read_text()
    # The operator's config file: the model server beside the forwarder, on a port of its own.
    config = config.replace("5005", str(model_port)).replace('"localhost"', f'"{HOST}"')
    (tmp_path / "service--forwarder.yaml").write_text(config)
    values = {
        "FORWARDER_CONFIG_FILE_NAME": "service--forwarder.yaml",
        "QUEUE": QUEUE,
        "PREDICT_ROUTE": "/predict",
        "HEALTHCHECK_ROUTE": "/readyz",
        "PER_WORKER": "2",
        "celery_broker_type": "redis",
        "CELERY_S3_BUCKET": BUCKET,
    }
    container = yaml.safe_load((DATA / "model_engine_celery_forwarder.yaml").read_text())
    command = [
        filled(arg, values).replace(CONFIG_DIR, f"{tmp_path}/") for arg in container["command"]
    ]
    env = {name: filled(value, values) for name, value in container["env"].items()}
    return command, env


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server of this module's own: model-engine's database number is fixed (3)."""
    folder = tmp_path_factory.mktemp("redis-model-engine")
    with running("redis-server", lambda: start_redis(folder)) as port:
        yield port


def model_engine_gateway_app(redis_port: int, moto: MotoServer) -> Celery:
    """What model-engine's celery_app builds for its gateway: Celery's own app and S3 backend."""
    app = Celery(None, set_as_current=False)
    app.conf.update(
        broker_url=f"redis://{HOST}:{redis_port}/{VISIBILITY_24H_DB}",
        broker_transport_options={"visibility_timeout": 86400},
        result_backend="s3",
        s3_bucket=BUCKET,
        s3_base_path="tmp/celery/",
        s3_endpoint_url=moto.endpoint_url,
        s3_region=moto.region,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
    )
    return app


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_model_engines_command_line_serves_its_gateways_tasks(
    pool: str, redis_port: int, moto_here: MotoServer, procs: Processes, tmp_path: Path
) -> None:
    moto_here.client("s3").create_bucket(Bucket=BUCKET)
    echo = procs.echo()
    command, container_env = model_engine_container(tmp_path, echo.port)
    env = env_changes(
        XDG_DATA_HOME=str(tmp_path / "xdg-data"),
        REDIS_HOST=HOST,
        REDIS_PORT=str(redis_port),
        CELERY_WORKER_POOL=pool,
        **container_env,
        **moto_here.env,
    )
    worker = Worker(command, env, tmp_path / "worker.log")
    procs.workers.append(worker)
    worker.wait_ready(60)
    assert "embedded" not in worker.log()
    assert f"redis://{HOST}:{redis_port}/{VISIBILITY_24H_DB}" in worker.log()

    app = model_engine_gateway_app(redis_port, moto_here)
    try:
        sent = app.send_task(
            name=LIRA_TASK_NAME, args=[REQUEST, datetime.now()], kwargs=None, queue=QUEUE
        )
        result = app.AsyncResult(sent.id)
        value = result.get(timeout=45)
        assert result.state == "SUCCESS"
    finally:
        app.close()
    assert value == {"result": json.dumps(REQUEST["args"]), "status_code": 200}
    stored = moto_here.client("s3").get_object(
        Bucket=BUCKET, Key=f"tmp/celery/celery-task-meta-{sent.id}"
    )
    assert json.loads(stored["Body"].read())["status"] == "SUCCESS"


def run_worker_briefly(
    args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forwarder", "worker", *args],
        env=base_env(XDG_DATA_HOME=str(cwd / "xdg-data"), **env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("extra", "env", "named"),
    [
        # model-engine's environment with the --broker-type line left out: never the embedded one.
        ([], {"REDIS_HOST": HOST, "REDIS_PORT": "6379", "S3_BUCKET": BUCKET}, "REDIS_HOST"),
        (["--broker-type", "redis"], {"REDIS_HOST": HOST, "S3_BUCKET": BUCKET}, "REDIS_PORT"),
        (["--broker-type", "servicebus"], {}, "not supported"),
        (["--broker-type", "redis", "--backend-protocol", "abs"], {}, "not supported"),
    ],
)
def test_incomplete_model_engine_settings_stop_the_worker(
    extra: list[str], env: dict[str, str], named: str, tmp_path: Path
) -> None:
    command, _ = model_engine_container(tmp_path, 5005)
    broker_type = command.index("--broker-type")
    args = command[:broker_type] + extra  # the template's line, or another one, or none
    proc = run_worker_briefly(args, env, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], proc.stderr
    assert not (tmp_path / "xdg-data").exists()  # no embedded folder was made


@pytest.mark.timeout(90)
def test_the_embedded_broker_announces_its_folder(procs: Processes, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port, data_dir=data_dir, extra_args=["--log-format", "text"]
    )
    warnings = [
        line
        for line in worker.log().splitlines()
        if "WARNING" in line and "embedded broker" in line
    ]
    assert len(warnings) == 1, worker.log()
    assert str(data_dir.resolve()) in warnings[0]
