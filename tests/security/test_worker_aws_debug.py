"""A real worker at DEBUG, its botocore too, never logs the credentials STS gave it.

The logging hook's Firehose sink assumes its role on moto in server mode (a real AssumeRole over
HTTP) and signs its puts with the temporary credentials; moto's own state says which credentials
it issued, and none of them may be in the worker's log, while botocore's lines are (masked).
"""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest
import yaml

from support.aws import MotoServer
from support.processes import Processes
from support.waiting import wait_all

pytestmark = pytest.mark.integration

STREAM = "debug-records"
BUCKET = "debug-records-bucket"


def issued_credentials(moto: MotoServer) -> list[str]:
    """The secret keys and session tokens moto's STS has handed out."""
    with urllib.request.urlopen(f"{moto.endpoint_url}/moto-api/data.json", timeout=10) as reply:
        roles = json.loads(reply.read()).get("sts", {}).get("AssumedRole", [])
    return [role[name] for role in roles for name in ("secret_access_key", "session_token")]


@pytest.mark.timeout(90)
def test_the_assumed_role_s_credentials_stay_out_of_a_debug_log(
    procs: Processes, redis_url: str, moto: MotoServer, tmp_path: Path
) -> None:
    moto.firehose_to_s3(STREAM, BUCKET)
    config = tmp_path / "hooks.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hooks": ["logging"],
                "logging": {
                    "sink": "firehose",
                    "stream_name": STREAM,
                    "role_arn": "arn:aws:iam::123456789012:role/forwarder-logging",
                },
            }
        )
    )
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port,
        broker_url=redis_url,
        queue="aws-debug",
        env=moto.env,
        extra_args=[
            "--config",
            str(config),
            "--log-level",
            "DEBUG",
            "--library-log-level",
            "DEBUG",
        ],
    )
    client = procs.client(broker_url=redis_url, queue="aws-debug")
    ids = [client.submit({"args": {"n": n}}) for n in range(3)]
    assert {r.status for r in wait_all(client, ids, timeout=40).values()} == {"SUCCESS"}
    assert worker.stop(signal.SIGTERM, timeout=20) == 0
    assert len(moto.s3_json_lines(BUCKET)) == len(ids), "the records never reached Firehose"
    secrets = issued_credentials(moto)
    assert secrets, "moto issued no credentials: the sink did not assume its role"
    log = worker.log()
    assert "<SecretAccessKey>***</SecretAccessKey>" in log, "botocore's STS reply was not logged"
    for secret in secrets:
        assert secret not in log, "a temporary credential is in the worker's log"
