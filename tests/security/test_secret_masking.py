"""Secrets never reach a log line or check-config's output, whole or in part.

Log lines go through the worker's own logging set-up (``observability.logs.configure``); the AWS
lines are botocore's own, at DEBUG, against moto in server mode: a real STS AssumeRole, then a
call signed with the temporary credentials it returned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.cli.commands import main
from forwarder.config.settings import environment_variables
from forwarder.observability.logs import LIBRARY_LOGGERS, configure
from support.aws import MotoServer

PASSWORD = "hunter2 with spaces, and commas"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The root logger's handlers and level, the libraries' levels and the records' lookups, as
    they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libraries = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    lookups = (logging._srcfile, logging.logThreads, logging.logProcesses)
    yield
    logging._srcfile, logging.logThreads, logging.logProcesses = lookups
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, old in libraries.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.usefixtures("restored_logging")
def test_a_password_with_spaces_and_commas_is_masked_whole(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("DEBUG", fmt)
    auth = {"kind": "basic", "username": "u", "password": PASSWORD}
    logging.getLogger("forwarder.test").debug("callback auth %s", auth)
    logging.getLogger("forwarder.test").debug("body %s", '{"password": "a \\"q\\" b, c"}')
    err = capsys.readouterr().err
    assert "callback auth" in err
    for fragment in ("hunter2", "with spaces", "and commas", "q\\", "b, c"):
        assert fragment not in err, err


def _assumed_role(moto: MotoServer) -> dict[str, str]:
    from botocore.config import Config

    sts = moto.client("sts", config=Config(parameter_validation=False))
    reply = sts.assume_role(
        RoleArn="arn:aws:iam::123456789012:role/logs", RoleSessionName="t", DurationSeconds=900
    )
    credentials: dict[str, str] = reply["Credentials"]
    return credentials


def _signed_call(moto: MotoServer, credentials: dict[str, str]) -> Any:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=moto.endpoint_url,
        region_name=moto.region,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )
    return s3.list_buckets()


@pytest.mark.integration
@pytest.mark.usefixtures("restored_logging")
def test_botocore_at_debug_never_logs_the_temporary_credentials(
    moto: MotoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("DEBUG", "json", library_level="DEBUG")
    credentials = _assumed_role(moto)
    _signed_call(moto, credentials)
    err = capsys.readouterr().err
    # botocore did log the reply and the signed request: masked, not left out.
    assert "<SecretAccessKey>***</SecretAccessKey>" in err, err[-3000:]
    assert "x-amz-security-token" in err.lower()
    for name in ("SecretAccessKey", "SessionToken"):
        assert credentials[name] not in err, f"the temporary {name} is in the log"


@pytest.mark.integration
@pytest.mark.usefixtures("restored_logging")
def test_botocore_and_urllib3_stay_at_info_unless_asked(
    moto: MotoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("DEBUG", "json")
    _signed_call(moto, _assumed_role(moto))
    logging.getLogger("forwarder.test").debug("ours still at DEBUG")
    err = capsys.readouterr().err
    assert "ours still at DEBUG" in err
    assert '"logger": "botocore' not in err
    assert '"logger": "urllib3' not in err


def test_check_config_masks_urls_with_credentials_and_secret_query_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in environment_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    config = tmp_path / "hooks.yaml"
    config.write_text(
        "hooks: [callback]\n"
        "callback: {default_url: 'https://alice:pw-Zq81@hooks.example/cb?token=tok-Zq81&x=1'}\n"
    )
    sqs = "https://sqs.example/1/q?X-Amz-Security-Token=sts-Zq81&password=qp-Zq81"
    results = "s3://results/prefix"
    argv = ["check-config", "--config", str(config), "--sqs-url", sqs, "--result-backend", results]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for secret in ("pw-Zq81", "tok-Zq81", "sts-Zq81", "qp-Zq81"):
        assert secret not in printed, printed
    assert "https://alice:***@hooks.example/cb?token=***&x=1" in printed
