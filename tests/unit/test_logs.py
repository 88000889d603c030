"""Log lines: secrets masked whatever their source, task context, Celery's result line summarized."""

from __future__ import annotations

import json
import logging

import pytest

from forwarder.config.masking import mask_secrets
from forwarder.observability import logs
from forwarder.observability.logs import JsonFormatter, TextFormatter, _Context

PEM = "-----BEGIN PRIVATE KEY-----\nMIIEsecret\n-----END PRIVATE KEY-----"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("broker redis://user:s3cr3t@10.0.0.1:6379/0 down", "s3cr3t"),
        ("headers {'Authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz"),
        ("Authorization: Bearer tok-123", "tok-123"),
        ('{"kind": "basic", "username": "u", "password": "hunter2"}', "hunter2"),
        ("password=hunter2 next", "hunter2"),
        ("signing_secret: whsec_c2VjcmV0", "c2VjcmV0"),
        ("gateway token=abc123def", "abc123def"),
        (f"key {PEM} done", "MIIEsecret"),
        # Upper case, and the AWS forms, pass the cheap check that leaves other lines alone.
        ("PASSWORD=Hunter2 next", "Hunter2"),
        ("AUTHORIZATION: BEARER TOK-123", "TOK-123"),
        ("BROKER SQS://AKIDEXAMPLE:wJalr+XUtnFEMI@localhost", "wJalr+XUtnFEMI"),
        ("<SecretAccessKey>wJalrXUtnFEMI</SecretAccessKey>", "wJalrXUtnFEMI"),
        ("<SessionToken>FwoGZXIvYXdzE</SessionToken>", "FwoGZXIvYXdzE"),
        ("'X-Amz-Security-Token': 'FwoGZXIvYXdzE'", "FwoGZXIvYXdzE"),
        ("aws_secret_access_key = wJalrXUtnFEMI", "wJalrXUtnFEMI"),
        ("AWS_SESSION_TOKEN=FwoGZXIvYXdzE", "FwoGZXIvYXdzE"),
        ("API_KEY: abc123def", "abc123def"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEsecret\n-----END RSA PRIVATE KEY-----",
            "MIIEsecret",
        ),
    ],
)
def test_secrets_are_masked(text: str, secret: str) -> None:
    masked = mask_secrets(text)
    assert secret not in masked
    assert "***" in masked


def test_what_is_not_a_secret_is_left_alone() -> None:
    text = "task 6f1c received: queue=inference url=http://127.0.0.1:5005/predict status=200"
    assert mask_secrets(text) == text
    assert mask_secrets("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def record(name: str, msg: str, args: object = None, **extra: object) -> logging.LogRecord:
    # As logging does for logger.info(msg, mapping): a lone mapping becomes the args.
    packed = (args,) if isinstance(args, dict) else args
    made = logging.LogRecord(name, logging.INFO, __file__, 1, msg, packed, None)  # type: ignore[arg-type]
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_json_lines_carry_the_task_and_mask_secrets() -> None:
    line = JsonFormatter().format(
        record(
            "forwarder.worker.app", "retrying %s", ("redis://u:pw@h/0",), task_id="t-1", queue="q"
        )
    )
    parsed = json.loads(line)
    assert parsed["message"] == "retrying redis://u:***@h/0"
    assert (parsed["task_id"], parsed["queue"], parsed["level"]) == ("t-1", "q", "INFO")
    quoted = JsonFormatter().format(record("x", 'auth {"password": "hunter2"}'))
    assert "hunter2" not in quoted


def test_text_lines_carry_the_task() -> None:
    text = TextFormatter().format(record("x", "hello", task_id="t-2", queue="q"))
    assert text.endswith("hello [task_id=t-2 queue=q]")


def test_celery_success_line_shows_no_result_body() -> None:
    celery_line = record(
        "celery.app.trace",
        "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
        {
            "name": "ml_serve.celery_service.exec_func",
            "id": "t-3",
            "runtime": 0.01,
            "return_value": "{'result': '{\"prompt\": \"my private words\"}', 'status_code': 200}",
        },
    )
    _Context().filter(celery_line)
    message = celery_line.getMessage()
    assert "my private words" not in message
    assert "keys: result, status_code" in message


def test_configure_replaces_the_root_handlers() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    lookups = (logging._srcfile, logging.logThreads, logging.logProcesses)
    try:
        logs.configure("WARNING", "json")
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.WARNING
        # What no line shows is not looked up for each record: the caller, thread and pid.
        line = logging.getLogger("celery.worker.strategy").makeRecord(
            "celery.worker.strategy", logging.WARNING, "(unknown file)", 0, "x", (), None
        )
        assert (line.thread, line.process) == (None, None)
        assert logging._srcfile is None
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging._srcfile, logging.logThreads, logging.logProcesses = lookups


def test_celery_lines_about_a_task_outside_it_name_the_task() -> None:
    received = record(
        "celery.worker.strategy",
        "Task %(name)s[%(id)s] received",
        {"name": "ml_serve.celery_service.exec_func", "id": "t-4"},
    )
    _Context("inference").filter(received)
    parsed = json.loads(JsonFormatter().format(received))
    assert (parsed["task_id"], parsed["queue"]) == ("t-4", "inference")
    unrelated = record("celery.worker.consumer", "Connected to %(url)s", {"url": "redis://x"})
    _Context("inference").filter(unrelated)
    assert "task_id" not in json.loads(JsonFormatter().format(unrelated))
