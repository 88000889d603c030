"""Log lines: JSON (or text for humans), each carrying its task's id and queue, secrets masked.

Every line logged while a task runs names that task, whichever logger wrote it: the task comes
from Celery's current-task stack, which is per thread and so per greenlet under gevent. Secrets
are masked in the final text of every line, whatever put them there: passwords in URLs,
``Authorization`` values, password / token / secret fields, Standard Webhooks secrets and PEM
private keys, AWS secret keys and session tokens. Request and response bodies never reach INFO:
Celery's line for a finished task shows the result's size and keys instead of the result. The
libraries that log whole requests and replies at DEBUG (botocore logs the STS reply, temporary
credentials included) stay at INFO unless ``worker.library_log_level`` asks for more.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from forwarder.config.masking import mask_secrets
from forwarder.protocol import MODEL_STATUS_ATTRIBUTE

__all__ = ["LIBRARY_LOGGERS", "configure"]

LIBRARY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def _task_context() -> dict[str, str]:
    from celery import current_task

    # A proxy of the task running in this thread (or greenlet); without one, it has no request.
    request = getattr(current_task, "request", None)
    task_id = getattr(request, "id", None)
    if not task_id:
        return {}
    context = {"task_id": str(task_id)}
    queue = (getattr(request, "delivery_info", None) or {}).get("routing_key")
    if queue:
        context["queue"] = str(queue)
    return context


class _Context(logging.Filter):
    """Adds ``task_id`` / ``queue`` of the task a line is about; hides Celery's result bodies.

    The task is the one running in this thread (or greenlet), or, for Celery's own lines about a
    task outside it ("received"), the one whose ``id`` the line is formatted with; ``queue`` is
    the queue the worker consumes when the message does not say.
    """

    def __init__(self, queue: str | None = None) -> None:
        super().__init__()
        self.queue = queue

    def filter(self, record: logging.LogRecord) -> bool:
        context = _task_context()
        if not context and record.name.startswith("celery.") and isinstance(record.args, Mapping):
            task_id = record.args.get("id")
            if isinstance(task_id, str):
                context = {"task_id": task_id}
        if context and self.queue:
            context.setdefault("queue", self.queue)
        for key, value in context.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if record.name == "celery.app.trace" and isinstance(record.args, Mapping):
            args = dict(record.args)
            if "return_value" in args:
                # The repr Celery made of the result; its size and keys are what INFO may show,
                # with the model's HTTP status that the task stored in its request.
                args["return_value"] = _summarize_repr(str(args["return_value"]), _model_status())
            record.args = args
        return True


def _model_status() -> int | None:
    from celery import current_task

    status = getattr(getattr(current_task, "request", None), MODEL_STATUS_ATTRIBUTE, None)
    return status if isinstance(status, int) else None


def _summarize_repr(text: str, status: int | None = None) -> str:
    keys = re.findall(r"'([A-Za-z_][\w-]*)':", text)
    shown = f", keys: {', '.join(dict.fromkeys(keys))}" if keys else ""
    model = f"; model replied HTTP {status}" if status is not None else ""
    return f"<result of {len(text)} characters{shown}{model}>"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            # Masked before encoding: JSON's escaped quotes would hide a field from the patterns.
            "message": mask_secrets(record.getMessage()),
        }
        for key in ("task_id", "queue"):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exception"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        task_id = getattr(record, "task_id", None)
        if task_id:
            text = f"{text} [task_id={task_id} queue={getattr(record, 'queue', '-')}]"
        return mask_secrets(text)


def configure(level: str, fmt: str, queue: str | None = None, library_level: str = "INFO") -> None:
    """One handler on the root logger, to stderr, in ``fmt`` (json or text).

    ``queue``: the queue a worker consumes, named on the lines about a task that do not say.
    ``library_level``: the lowest level of ``LIBRARY_LOGGERS``' lines (never below ``level``).
    """
    # What no line here shows, each record would still look up (the logging HOWTO's
    # "Optimization"): the caller's frame, the thread, the pid. A worker writes two lines per
    # task at INFO (received, succeeded).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context(queue))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    libraries = max(
        logging.getLevelNamesMapping()[level], logging.getLevelNamesMapping()[library_level]
    )
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(libraries)
